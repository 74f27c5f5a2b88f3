"""The planted language of chapter 2 (twotower.data.synthetic) and the scores that read
the split off pref (twotower.analysis.planted_split)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from twotower.analysis.planted_split import (local_topic_gap, permutation_test,
                                             planted_split_score, point_biserial,
                                             split_shares)
from twotower.data.synthetic import (CLS_ID, SPECIAL_IDS, PlantedLanguage,
                                     PlantedLanguageConfig, conditional_entropies)
from twotower.errors import TwotowerError

CFG = PlantedLanguageConfig(window=48)


@pytest.fixture(scope="module")
def language() -> PlantedLanguage:
    return PlantedLanguage(CFG)


@pytest.fixture(scope="module")
def sample(language):
    return language.sample(3000, seed=0)


def test_sampling_is_deterministic_in_its_seed(language):
    first, again = language.sample(50, seed=7), language.sample(50, seed=7)
    assert np.array_equal(first.windows, again.windows)
    assert np.array_equal(first.topic, again.topic)
    assert not np.array_equal(first.windows, language.sample(50, seed=8).windows)


def test_the_language_seed_changes_the_grammar_not_the_shapes():
    other = PlantedLanguage(dataclasses.replace(CFG, seed=1))
    same = PlantedLanguage(CFG)
    assert np.array_equal(same.transition, PlantedLanguage(CFG).transition)
    assert not np.array_equal(same.transition, other.transition)
    assert same.vocab_size == other.vocab_size


@pytest.mark.parametrize("seed", range(6))
def test_every_local_token_can_follow_every_other_eventually(seed):
    transition = PlantedLanguage(dataclasses.replace(CFG, seed=seed)).transition
    assert np.allclose(transition.sum(1), 1)
    assert ((transition > 0).sum(1) == CFG.local_successors).all()
    reach = np.linalg.matrix_power((transition > 0).astype(int) + np.eye(CFG.n_local,
                                   dtype=int), CFG.n_local)
    assert (reach > 0).all()  # irreducible: no local token dies out


def test_windows_have_the_promised_shape_and_start_with_cls(sample):
    assert sample.windows.shape == (3000, CFG.window)
    assert sample.windows.dtype == np.int64
    assert (sample.windows[:, 0] == CLS_ID).all()


def test_vocabularies_are_disjoint_and_leave_special_ids_alone(language, sample):
    local, topic = set(language.local_ids), set(language.topic_ids)
    assert not local & topic
    assert not (local | topic) & set(SPECIAL_IDS)
    assert language.vocab_size == len(SPECIAL_IDS) + CFG.n_local + CFG.n_topic_words
    body = sample.windows[:, 1:]
    assert np.isin(body[sample.process[:, 1:] == 1], language.local_ids).all()
    assert np.isin(body[sample.process[:, 1:] == 2], language.topic_ids).all()


def test_label_array_names_every_id(language):
    labels = language.labels
    assert labels.shape == (language.vocab_size,)
    assert (labels[list(SPECIAL_IDS)] == "special").all()
    assert (labels[language.local_ids] == "local").all()
    assert (labels[language.topic_ids] == "topic").all()
    assert len(set(language.tokens)) == language.vocab_size


def test_the_processes_share_positions_as_configured(sample):
    share_topic = (sample.process[:, 1:] == 2).mean()
    assert share_topic == pytest.approx(CFG.p_topic, abs=0.01)


def test_local_tokens_are_predictable_from_the_previous_token(sample, language):
    h = conditional_entropies(sample, language.vocab_size).loc["local"]
    assert h["H(x | previous token)"] < 0.7 * h["H(x)"]
    assert h["H(x | topic)"] == pytest.approx(h["H(x)"], abs=0.02)  # topic is no help


def test_topic_words_are_predictable_from_the_topic_not_the_previous_token(sample,
                                                                        language):
    h = conditional_entropies(sample, language.vocab_size).loc["topic"]
    assert h["H(x | previous token)"] > 0.93 * h["H(x)"]
    assert h["H(x | topic)"] < h["H(x)"] - 0.5


def test_topics_change_rarely(sample):
    changes = (np.diff(sample.topic[:, 1:], axis=1) != 0).mean()
    assert changes < 2 * CFG.topic_switch


def test_oracle_is_a_normalised_distribution_over_the_next_token(language):
    prefix = language.sample(1, seed=3).windows[0]
    for t in (1, 5, 20):
        rows = np.tile(prefix, (language.vocab_size - len(SPECIAL_IDS), 1))
        rows[:, t] = np.arange(len(SPECIAL_IDS), language.vocab_size)
        total = np.exp(language.oracle_log_probs(rows)[:, t - 1]).sum()
        assert total == pytest.approx(1.0, abs=1e-9)


def test_oracle_beats_the_unigram_entropy(language, sample):
    loss = -language.oracle_log_probs(sample.windows[:500]).mean()
    assert 0 < loss < np.log(language.vocab_size - len(SPECIAL_IDS)) - 1.0


def test_bad_configs_are_refused():
    with pytest.raises(TwotowerError, match="p_topic"):
        PlantedLanguage(dataclasses.replace(CFG, p_topic=1.5))
    with pytest.raises(TwotowerError, match="local_successors"):
        PlantedLanguage(dataclasses.replace(CFG, local_successors=0))


# --- reading the split off a preference -----------------------------------------------

def _planted_pref(language, seed=0, gap=0.0, strength=1.0):
    rng = np.random.default_rng(seed)
    pref = np.where(language.labels == "local", strength, -strength) + gap
    pref = pref + rng.normal(0, 0.5, language.vocab_size)
    pref[list(SPECIAL_IDS)] = 100.0  # must be ignored
    pref[language.topic_ids[:3]] = np.nan  # rare tokens: ignored
    return pd.DataFrame({"pref": pref}, index=pd.Index(range(language.vocab_size),
                                                       name="id"))


def test_planted_pref_gives_a_high_significant_score(language):
    score = planted_split_score(_planted_pref(language), language.labels, n_perm=500)
    assert score.r > 0.8
    assert score.ci[0] > 0.6 and score.ci[0] <= score.r <= score.ci[1]
    assert score.p == pytest.approx(1 / 501)


def test_score_ignores_which_tower_is_called_a(language):
    pref = _planted_pref(language)
    flipped = pref.assign(pref=-pref["pref"])
    a = planted_split_score(pref, language.labels, n_perm=200)
    b = planted_split_score(flipped, language.labels, n_perm=200)
    assert a.r == pytest.approx(b.r)
    assert a.ci == pytest.approx(b.ci, abs=0.05)


def test_shuffled_labels_give_no_score(language):
    labels = language.labels.copy()
    rng = np.random.default_rng(0)
    scores = []
    for seed in range(5):
        shuffled = labels.copy()
        body = slice(len(SPECIAL_IDS), None)
        shuffled[body] = rng.permutation(labels[body])
        scores.append(planted_split_score(_planted_pref(language, seed), shuffled,
                                          n_boot=200, n_perm=300, seed=seed))
    assert np.mean([s.r for s in scores]) < 0.2
    assert np.median([s.p for s in scores]) > 0.05


def test_permutation_p_value_is_never_zero_and_uniformish_under_the_null():
    rng = np.random.default_rng(1)
    values, groups = rng.normal(size=60), np.repeat([0, 1], 30)
    p, null = permutation_test(values + 5 * groups, groups, n_perm=99)
    assert p == pytest.approx(0.01)
    ps = [permutation_test(rng.normal(size=60), groups, n_perm=199, seed=s)[0]
          for s in range(40)]
    assert 0.3 < np.mean(ps) < 0.7
    assert null.shape == (99,)


def test_local_topic_gap_is_signed_by_the_tower_and_sized_like_the_separation(language):
    pref = _planted_pref(language)
    gap = local_topic_gap(pref, language.labels)
    flipped = local_topic_gap(pref.assign(pref=-pref["pref"]), language.labels)
    assert gap > 1.5 and flipped == pytest.approx(-gap)
    assert split_shares(pref, language.labels)["separation"] == abs(gap)
    assert local_topic_gap(_planted_pref(language, gap=3.0), language.labels) == \
        pytest.approx(gap)  # a global gap moves both means alike


def test_point_biserial_is_pearson_with_a_zero_one_variable():
    rng = np.random.default_rng(2)
    values, groups = rng.normal(size=40), rng.integers(0, 2, 40)
    assert point_biserial(values, groups) == pytest.approx(
        np.corrcoef(values, groups)[0, 1])
    assert np.isnan(point_biserial(values, np.ones(40)))


def test_split_shares_see_through_a_global_gap(language):
    clean = split_shares(_planted_pref(language), language.labels)
    gapped = split_shares(_planted_pref(language, gap=3.0), language.labels)
    assert clean["balanced"] > 0.9 and clean["local_tower"] == "A"
    assert clean["share_local"] > 0.9 and clean["share_topic"] > 0.9
    assert gapped["share_topic"] < 0.1  # tower A wins everything ...
    assert planted_split_score(_planted_pref(language, gap=3.0), language.labels,
                               n_perm=100).r > 0.8  # ... but r is blind to the gap
