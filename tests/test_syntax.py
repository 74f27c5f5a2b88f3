"""Chapter 10's statistics: effect sizes by hand, permutation tests that see a planted
difference and see through a frequency confound, word vectors per tower and layer, and
probes per tower that find the tower holding a planted tree, choose their layer on
probe-dev and say when the probe loses to a chain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.analysis import syntax
from twotower.errors import TwotowerError
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.ud import Sentence, tree_depths
from twotower.data.tokenizer import padded_vocab_size, train_wordpiece


# --- class differences and their permutation test (effect sizes: test_stats.py) ------

def test_class_difference_by_hand_with_and_without_strata():
    values = np.array([1.0, 0.0, 10.0, 9.0])
    labels = np.array([True, False, False, False])
    assert syntax.class_difference(values, labels) == pytest.approx(1 - 19 / 3)
    # stratum 1 holds no True label, so only stratum 0 (1 - 0) counts
    assert syntax.class_difference(values, labels, np.array([0, 0, 1, 1])) == \
        pytest.approx(1.0)
    many = syntax.class_difference(values, np.stack([labels, ~labels]))
    assert many.shape == (2,) and many[1] == pytest.approx(-many[0])


def test_cmh_weights_average_the_strata():
    values = np.array([2.0, 0.0, 0.0, 0.0, 5.0, 1.0, 0.0])
    labels = np.array([True, False, False, False, True, True, False])
    strata = np.array([0, 0, 0, 0, 1, 1, 1])
    # stratum 0: difference 2, weight 1 * 3 / 4; stratum 1: 3 - 0, weight 2 * 1 / 3
    expected = (2 * 0.75 + 3 * (2 / 3)) / (0.75 + 2 / 3)
    assert syntax.class_difference(values, labels, strata) == pytest.approx(expected)


def test_permutation_test_sees_a_planted_difference_and_not_an_absent_one():
    rng = np.random.default_rng(0)
    labels = np.arange(200) < 60
    planted = rng.normal(size=200) + 0.8 * labels
    none = rng.normal(size=200)
    assert syntax.class_difference_p(planted, labels, n_perm=999) == \
        pytest.approx(1 / 1000)
    assert syntax.class_difference_p(none, labels, n_perm=999) > 0.05


def frequency_confounded_table(seed=0, n=400, effect=0.0):
    """Function words are frequent, and pref follows frequency only (plus ``effect``
    for function words)."""
    rng = np.random.default_rng(seed)
    is_function = rng.random(n) < 0.3
    log_count = np.where(is_function, rng.normal(7, 1, n), rng.normal(4, 1.5, n))
    pref = 0.2 * log_count + effect * is_function + rng.normal(0, 0.2, n)
    return pd.DataFrame({"token": [f"t{i}" for i in range(n)],
                         "count": np.exp(log_count).round() + 1,
                         "log_count": log_count, "pref": pref,
                         "word_class": np.where(is_function, "function", "content")})


def test_frequency_bins_see_through_a_frequency_confound():
    effect = syntax.function_content_effect(frequency_confounded_table(), n_perm=999,
                                            n_bins=8)
    assert effect.p_value < 0.01 and effect.cohens_d > 1  # frequency masquerades
    assert effect.p_binned > 0.05 and abs(effect.binned_d) < abs(effect.cohens_d) / 3
    assert effect.n_function + effect.n_content == 400
    assert effect.function_tower == "A"


def test_frequency_bins_keep_a_real_class_effect():
    effect = syntax.function_content_effect(
        frequency_confounded_table(effect=-0.4), n_perm=999, n_bins=8)
    assert effect.p_binned < 0.01 and effect.binned_diff == pytest.approx(-0.4,
                                                                          abs=0.1)


def test_frequency_bins_have_about_equal_sizes_and_follow_frequency():
    log_count = np.random.default_rng(0).normal(size=1000)
    bins = syntax.frequency_bins(log_count, 5)
    assert set(bins) == set(range(5)) and np.bincount(bins).min() >= 190
    order = np.argsort(log_count)
    assert (np.diff(bins[order]) >= 0).all()
    table = syntax.binned_effects(frequency_confounded_table(), 4)
    assert len(table) == 4 and (table["min count"].diff().dropna() > 0).all()


def test_pos_table_joins_preference_and_tags():
    pref = pd.DataFrame({"token": ["the", "dog", "##s", "zzz"], "count": [50, 7, 9, 3],
                         "pref": [0.2, -0.1, np.nan, 0.5]},
                        index=pd.Index([1, 2, 5, 9], name="id"))
    upos = {1: ("DET", 1.0, 40), 2: ("NOUN", 0.9, 5), 5: ("NOUN", 0.6, 8),
            7: ("INTJ", 1.0, 2)}
    table = syntax.pos_table(pref, upos)
    assert list(table.index) == [1, 2]  # NaN pref and untagged ids left out
    assert list(table["word_class"]) == ["function", "content"]
    assert table.loc[1, "log_count"] == pytest.approx(np.log(50))
    centred = syntax.pos_table(pref, upos, values=pref["pref"] - 1)
    assert centred.loc[2, "pref"] == pytest.approx(-1.1)


# --- word vectors per tower and layer -------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    text = ["the dog runs to the old house", "a cat sat on the warm mat"] * 20
    return train_wordpiece(text, 120)


SENTENCES = [Sentence(["The", "dog", "runs"], ["DET", "NOUN", "VERB"],
                      np.array([2, 3, 0])),
             Sentence(["A", "cat", "sat", "on", "the", "mat"],
                      ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN"],
                      np.array([2, 3, 0, 6, 6, 3])),
             Sentence(["the"] * 30, ["DET"] * 30, np.array([0] + [1] * 29))]


@pytest.mark.parametrize("family", ["causal", "mlm", "bilm"])
def test_word_vectors_per_tower_and_layer_do_not_depend_on_the_batch(
        family, tiny_config, tokenizer):
    cfg = tiny_config(family, vocab_size=padded_vocab_size(tokenizer), max_len=16)
    model = TwoTowerLM(cfg).eval()
    kept, one = syntax.tower_layer_vectors(model, tokenizer, SENTENCES, batch_size=1)
    _, together = syntax.tower_layer_vectors(model, tokenizer, SENTENCES, batch_size=3)
    assert kept == SENTENCES[:2]  # the 30-word sentence is longer than max_len
    expected_layers = [0, 2] if family == "bilm" else [0, 1, 2]
    assert sorted({layer for _, layer in one}) == expected_layers
    for key in one:
        assert [v.shape for v in one[key]] == [(3, 16), (6, 16)]
        for a, b in zip(one[key], together[key]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one["A", expected_layers[-1]][0],
                           one["B", expected_layers[-1]][0])


def test_word_vectors_are_the_cached_activations_averaged_per_word(tiny_config,
                                                                    tokenizer):
    cfg = tiny_config("causal", vocab_size=padded_vocab_size(tokenizer), max_len=16)
    model = TwoTowerLM(cfg).eval()
    _, vectors = syntax.tower_layer_vectors(model, tokenizer, SENTENCES[:1])
    enc = tokenizer.encode(SENTENCES[0].words, is_pretokenized=True)
    _, cache = model.run_with_cache(torch.tensor([enc.ids]),
                                    names=["towers.blocks.0.resid_post"])
    h = cache["towers.blocks.0.resid_post"][1, 0]  # tower B, (T, D)
    pieces = [i for i, w in enumerate(enc.word_ids) if w == 1]  # "dog"
    np.testing.assert_allclose(vectors["B", 1][0][1], h[pieces].mean(0).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["causal", "bilm"])
def test_layer_0_is_each_towers_input(family, tiny_config, tokenizer):
    cfg = tiny_config(family, vocab_size=padded_vocab_size(tokenizer), max_len=16)
    model = TwoTowerLM(cfg).eval()
    _, vectors = syntax.tower_layer_vectors(model, tokenizer, SENTENCES[:1])
    ids = torch.tensor([tokenizer.encode(SENTENCES[0].words,
                                         is_pretokenized=True).ids])
    with torch.no_grad():  # the embedding, normed, through each tower's projection
        x = model.tok_emb(ids)
        if model.pos_emb is not None:
            x = x + model.pos_emb.weight[:ids.shape[1]]
        x = model.emb_norm(x)[0]  # (T, W)
        word_ids = tokenizer.encode(SENTENCES[0].words, is_pretokenized=True).word_ids
        for k, tower in enumerate("AB"):
            h = x @ model.tower_in.weight[k] + model.tower_in.bias[k, 0]  # (T, D)
            pieces = [i for i, w in enumerate(word_ids) if w == 2]  # "runs"
            np.testing.assert_allclose(vectors[tower, 0][0][2],
                                       h[pieces].mean(0).numpy(), rtol=1e-5,
                                       atol=1e-6)


# --- probes per tower -----------------------------------------------------------------

def tree_vectors(rng, heads, dim=24):
    edges, _ = np.linalg.qr(rng.standard_normal((dim, len(heads))))
    out = np.zeros((len(heads), dim))
    for word in np.argsort(tree_depths(heads), kind="stable"):
        if heads[word]:
            out[word] = out[heads[word] - 1] + edges[:, word]
    return out


def test_probe_train_and_dev_split_the_training_sentences():
    train, dev = syntax.split_probe_train(50, dev_share=0.2, seed=1)
    assert len(dev) == 10 and len(train) == 40
    assert sorted(np.concatenate([train, dev]).tolist()) == list(range(50))
    again, _ = syntax.split_probe_train(50, dev_share=0.2, seed=1)
    other, _ = syntax.split_probe_train(50, dev_share=0.2, seed=2)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    with pytest.raises(TwotowerError, match="dev_share"):
        syntax.split_probe_train(2, dev_share=0.2)


def test_probe_towers_finds_the_tower_that_holds_the_tree():
    rng = np.random.default_rng(0)
    sentences = []
    for _ in range(90):
        n = int(rng.integers(6, 14))
        parent = [0] + [int(rng.integers(1, i + 1)) for i in range(1, n)]
        sentences.append(Sentence([f"w{i}" for i in range(n)], ["NOUN"] * n,
                                  np.asarray(parent)))
    vectors = {("A", 1): [tree_vectors(rng, s.heads) for s in sentences],
               ("B", 1): [rng.standard_normal((len(s), 24)) for s in sentences]}
    table, counts = syntax.probe_towers(vectors, sentences, 60, rank=16, epochs=30,
                                        tasks=("distance",))
    uuas = table.set_index("tower")["uuas"]
    dev = table.set_index("tower")["dev_uuas"]
    assert uuas["A"] > 0.85 and uuas["B"] < 0.6
    assert dev["A"] > 0.85 and dev["B"] < 0.6  # probe-dev: 12 held-out sentences
    assert table["epochs"].between(1, 30).all()
    assert counts["A", 1].shape == (30, 2)
    diff, lo, hi = syntax.uuas_difference(counts["A", 1], counts["B", 1], n_boot=300)
    assert diff == pytest.approx(uuas["A"] - uuas["B"]) and 0 < lo < diff < hi


# --- the summary decides on probe-dev, and knows when the probe loses to a chain ----

N_TEST, EDGES = 40, 10


def planted_result(dev: dict, test: dict, rng=None) -> syntax.ProbeResult:
    """A probe_towers result: dev UUAS and test edges found (of 10) per sentence for
    every (tower, layer) key."""
    rows, counts = [], {}
    for (tower, layer), found in test.items():
        found = np.full(N_TEST, found) if rng is None else rng.binomial(EDGES,
                                                                        found / EDGES,
                                                                        N_TEST)
        counts[tower, layer] = np.column_stack([found, np.full(N_TEST, EDGES)])
        rows.append({"tower": tower, "layer": layer, "task": "distance", "epochs": 3,
                     "dev_spearman": 0.5, "dev_uuas": dev[tower, layer],
                     "dev_root_accuracy": np.nan, "spearman": 0.5,
                     "uuas": counts[tower, layer][:, 0].sum() / (N_TEST * EDGES),
                     "root_accuracy": np.nan})
    return pd.DataFrame(rows), counts


def planted_baselines(chain_found: float) -> dict[str, np.ndarray]:
    return {"chain": np.tile([[chain_found, EDGES]], (N_TEST, 1)).astype(float),
            "random": np.tile([[1.5, EDGES]], (N_TEST, 1)).astype(float)}


def test_the_layer_is_chosen_on_dev_even_where_test_disagrees():
    # dev prefers layer 1, test prefers layer 2: the summary must report layer 1
    dev = {("A", 1): 0.6, ("B", 1): 0.6, ("A", 2): 0.4, ("B", 2): 0.4}
    test = {("A", 1): 5, ("B", 1): 4, ("A", 2): 9, ("B", 2): 8}
    summary = syntax.probe_summary(planted_result(dev, test), n_boot=100)
    assert summary["best_layer"] == 1 and summary["selected_on"] == "dev"
    assert summary["uuas_a"] == 0.5 and summary["uuas_b"] == 0.4
    assert summary["dev_uuas"] == pytest.approx(0.6)
    assert summary["diff"] == pytest.approx(0.1)


def test_layer_0_is_a_baseline_not_a_candidate():
    dev = {("A", 0): 0.9, ("B", 0): 0.9, ("A", 1): 0.5, ("B", 1): 0.5,
           ("A", 2): 0.6, ("B", 2): 0.7}
    test = {("A", 0): 2, ("B", 0): 2, ("A", 1): 5, ("B", 1): 5, ("A", 2): 7,
            ("B", 2): 6}
    summary = syntax.probe_summary(planted_result(dev, test), n_boot=100)
    assert summary["best_layer"] == 2
    assert summary["embedding"] == pytest.approx(0.2)
    assert summary["vs_embedding"] == pytest.approx(0.45)
    assert summary["vs_embedding_low"] == pytest.approx(0.45)  # no sentence varies


@pytest.mark.parametrize("found, fails", [(3, True), (8, False)])
def test_the_instrument_fails_when_both_towers_stay_below_the_chain(found, fails):
    rng = np.random.default_rng(0)
    dev = {("A", 1): 0.5, ("B", 1): 0.5}
    trained = planted_result(dev, {("A", 1): found, ("B", 1): found}, rng)
    summary = syntax.probe_summary(trained, n_boot=300,
                                   baselines=planted_baselines(chain_found=5.5))
    assert summary["chain"] == 0.55 and summary["random"] == 0.15
    assert summary["instrument_fails"] is fails
    for diff, low, high in summary["tower_vs_chain"].values():
        assert (high < 0) is fails and low < diff < high
    assert (summary["vs_chain_high"] < 0) is fails


def test_one_tower_above_the_chain_is_enough_for_the_instrument_to_speak():
    rng = np.random.default_rng(0)
    trained = planted_result({("A", 1): 0.5, ("B", 1): 0.5},
                             {("A", 1): 8, ("B", 1): 2}, rng)
    summary = syntax.probe_summary(trained, n_boot=300,
                                   baselines=planted_baselines(chain_found=5.5))
    assert summary["tower_vs_chain"]["B"][2] < 0 < summary["tower_vs_chain"]["A"][1]
    assert summary["instrument_fails"] is False


def test_a_report_without_dev_scores_cannot_choose_among_layers():
    table, counts = planted_result({("A", 1): 0, ("B", 1): 0, ("A", 2): 0,
                                    ("B", 2): 0}, {("A", 1): 5, ("B", 1): 4,
                                                   ("A", 2): 9, ("B", 2): 8})
    with pytest.raises(TwotowerError, match="rerun chapter 10"):
        syntax.probe_summary((table.drop(columns="dev_uuas"), counts), n_boot=50)
    one_layer = table[table["layer"] == 1].drop(columns="dev_uuas")
    summary = syntax.probe_summary((one_layer, counts), n_boot=50)
    assert summary["best_layer"] == 1 and summary["selected_on"] == "only layer"


def test_probe_report_round_trip_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    dev = {("A", 1): 0.6, ("B", 1): 0.4, ("A", 2): 0.9, ("B", 2): 0.7}
    trained = planted_result(dev, {("A", 1): 6, ("B", 1): 4, ("A", 2): 9,
                                   ("B", 2): 7}, rng)
    untrained = planted_result(dev, {key: 2 for key in dev})
    baselines = planted_baselines(chain_found=4.3)
    syntax.save_probe_report(tmp_path, trained, untrained, baselines, sentences=40)
    report = syntax.load_probe_report(tmp_path)
    assert report["sentences"] == 40
    pd.testing.assert_frame_equal(report["trained"][0], trained[0])
    for key in trained[1]:
        np.testing.assert_array_equal(report["trained"][1][key], trained[1][key])
    for kind in baselines:
        np.testing.assert_array_equal(report["baselines"][kind], baselines[kind])
    summary = syntax.probe_summary(report["trained"], report["untrained"], n_boot=200,
                                   baselines=report["baselines"])
    assert summary == syntax.probe_summary(trained, untrained, n_boot=200,
                                           baselines=baselines)
    assert summary["best_layer"] == 2 and summary["uuas_a"] == pytest.approx(
        trained[1]["A", 2][:, 0].sum() / 400)
    assert summary["low"] < summary["diff"] < summary["high"]
    assert summary["vs_untrained"] > 0.5 and summary["vs_low"] > 0.5
    assert summary["instrument_fails"] is False and summary["chain"] == 0.43
    assert syntax.load_probe_report(tmp_path / "missing") is None


def test_a_report_without_baselines_still_loads(tmp_path):
    trained = planted_result({("A", 1): 0.5, ("B", 1): 0.5},
                             {("A", 1): 6, ("B", 1): 4})
    syntax.save_probe_report(tmp_path, trained)
    report = syntax.load_probe_report(tmp_path)
    assert report["baselines"] is None and report["untrained"] is None
    assert "instrument_fails" not in syntax.probe_summary(report["trained"], n_boot=50)


def test_the_uuas_table_sets_every_layer_beside_its_baselines():
    dev = {("A", 0): 0.2, ("B", 0): 0.2, ("A", 1): 0.6, ("B", 1): 0.4,
           ("A", 2): 0.5, ("B", 2): 0.3}
    trained = planted_result(dev, {("A", 0): 2, ("B", 0): 2, ("A", 1): 5,
                                   ("B", 1): 4, ("A", 2): 9, ("B", 2): 8})
    untrained = planted_result(dev, {key: 3 for key in dev})
    table = syntax.probe_uuas_table(trained, untrained, planted_baselines(4.3))
    assert list(table.index) == [0, 1, 2]
    assert list(table.columns) == ["dev A", "dev B", "A", "B", "A untrained",
                                   "B untrained", "chain", "random", "chosen"]
    assert table["chosen"].tolist() == [False, True, False]  # dev, not test (layer 2)
    assert table.loc[2, "A"] == 0.9 and table.loc[1, "B untrained"] == 0.3
    assert (table["chain"] == 0.43).all() and (table["random"] == 0.15).all()
