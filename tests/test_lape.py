"""Tests of LAPE selection and activation counting in twotower.analysis.lape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from twotower.errors import TwotowerError
from twotower.analysis.lape import (
    ActivationCounter,
    activation_probability,
    language_entropy,
    lape,
)


def hand_made_act_prob():
    """2 layers x 50 neurons x 2 languages with five neurons that stand out.

    Returns the array and the (layer, neuron) of: three language-0 neurons, one
    language-1 neuron, and one neuron that fires often in both languages.
    """
    # a flat background puts tau at 0.3, so only the standouts are strictly above it
    act_prob = np.full((2, 50, 2), 0.3)
    lang0 = [(0, 3), (1, 10), (1, 40)]
    lang1 = (0, 20)
    both = (1, 7)
    for (layer, neuron), p in zip(lang0, [(0.9, 0.01), (0.8, 0.02), (0.95, 0.005)]):
        act_prob[layer, neuron] = p
    act_prob[lang1] = (0.01, 0.9)
    act_prob[both] = (0.9, 0.9)
    return act_prob, lang0, lang1, both


def test_lape_selects_exactly_the_one_language_neurons_when_k_is_small():
    act_prob, lang0, lang1, _ = hand_made_act_prob()
    result = lape(act_prob, top_fraction=0.04)  # k = 4 of 100 neurons
    expected = sorted([(layer, neuron, 0) for layer, neuron in lang0]
                      + [(*lang1, 1)])
    assert result.k == 4
    assert result.n_candidates == 5
    assert result.selected.tolist() == [list(row) for row in expected]


def test_lape_high_probability_neuron_in_both_languages_joins_only_when_k_allows():
    act_prob, _, _, both = hand_made_act_prob()
    result = lape(act_prob, top_fraction=0.10)  # k = 10 > 5 candidates
    rows = [tuple(row) for row in result.selected.tolist()]
    assert (*both, 0) in rows and (*both, 1) in rows  # it belongs to both languages
    assert len(rows) == 6  # five candidates, one of them in two languages


def test_lape_default_fraction_takes_the_single_lowest_entropy_neuron():
    act_prob, _, _, _ = hand_made_act_prob()
    result = lape(act_prob)  # k = round(0.01 * 100) = 1
    # (1, 40) has p = (0.95, 0.005): the most peaked of the candidates
    assert result.selected.tolist() == [[1, 40, 0]]


def test_lape_tau_is_the_95th_percentile_of_all_probabilities():
    act_prob, _, _, _ = hand_made_act_prob()
    result = lape(act_prob)
    flat = np.sort(act_prob, axis=None)
    assert result.tau == flat[round(0.95 * flat.size) - 1]
    assert np.percentile(act_prob, 94.5) <= result.tau <= np.percentile(act_prob, 95.5)
    assert result.tau == 0.3  # only the standouts are strictly above the background


def test_lape_entropy_is_log2_for_equal_and_0_for_one_language():
    act_prob = np.array([[[0.5, 0.5], [0.3, 0.0], [0.0, 0.0]]])
    entropy = language_entropy(act_prob)
    assert entropy == pytest.approx(np.array([[np.log(2), 0.0, np.log(2)]]))


def test_lape_masks_and_per_layer_counts_match_selected_triples():
    act_prob, lang0, lang1, _ = hand_made_act_prob()
    result = lape(act_prob, top_fraction=0.04)
    masks = result.masks()
    assert masks.shape == (2, 2, 50) and masks.sum() == 4
    assert all(masks[0][layer, neuron] for layer, neuron in lang0)
    assert masks[1][lang1]
    assert result.per_layer_counts(2, 2).tolist() == [[1, 2], [1, 0]]


def test_lape_ignores_neurons_that_never_fire():
    act_prob, _, _, _ = hand_made_act_prob()
    act_prob[0, 0] = 0.0  # dead neuron: zero probability, uniform by convention
    result = lape(act_prob, top_fraction=0.04)
    assert result.entropy[0, 0] == pytest.approx(np.log(2))
    assert [0, 0] not in result.selected[:, :2].tolist()


@pytest.mark.parametrize("act_prob", [np.full((2, 3), 0.5), np.full((2, 3, 1), 0.5),
                                      np.full((2, 3, 2), 1.5),
                                      np.full((2, 3, 2), -0.1),
                                      np.full((2, 3, 2), np.nan)])
def test_lape_rejects_bad_shapes_and_non_probabilities(act_prob):
    with pytest.raises(TwotowerError):
        lape(act_prob)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 30),
                                        st.integers(2, 4)),
                  elements=st.floats(0, 1)),
       st.floats(0.01, 1.0))
def test_lape_selection_respects_threshold_and_budget(act_prob, top_fraction):
    result = lape(act_prob, top_fraction=top_fraction)
    layer, neuron, language = result.selected.T
    assert np.all(act_prob[layer, neuron, language] > result.tau)
    n_neurons = len({(a, b) for a, b in zip(layer.tolist(), neuron.tolist())})
    assert n_neurons <= max(result.k, 1)
    assert n_neurons == min(max(result.k, 1), result.n_candidates)
    # no unselected candidate has a lower entropy than a selected neuron
    if n_neurons:
        candidates = (act_prob > result.tau).any(axis=-1)
        chosen = np.zeros_like(candidates)
        chosen[layer, neuron] = True
        left_out = result.entropy[candidates & ~chosen]
        assert left_out.size == 0 or left_out.min() >= result.entropy[chosen].max()


# ---------------------------------------------------------------- activation counts


def direct_probabilities(acts, lang, n_languages):
    return np.stack([(acts[lang == k] > 0).mean(axis=0) for k in range(n_languages)],
                    axis=-1)


def test_activation_counter_matches_direct_computation_in_one_batch():
    rng = np.random.default_rng(0)
    acts, lang = rng.standard_normal((500, 3, 16)), rng.integers(0, 3, 500)
    assert np.allclose(activation_probability(acts, lang, 3),
                       direct_probabilities(acts, lang, 3))


def test_activation_counter_streamed_batches_equal_one_pass():
    rng = np.random.default_rng(1)
    acts, lang = rng.standard_normal((700, 2, 32)), rng.integers(0, 2, 700)
    counter = ActivationCounter(n_languages=2)
    for start, stop in [(0, 1), (1, 250), (250, 251), (251, 700)]:
        # alternate numpy and torch inputs, as a notebook might
        chunk, ids = acts[start:stop], lang[start:stop]
        if start % 2:
            chunk, ids = torch.from_numpy(chunk).float(), torch.from_numpy(ids)
        counter.update(chunk, ids)
    assert counter.token_counts.tolist() == np.bincount(lang, minlength=2).tolist()
    assert np.allclose(counter.probabilities(), direct_probabilities(acts, lang, 2))


def test_activation_counter_skips_padding_tokens():
    rng = np.random.default_rng(2)
    acts, lang = rng.standard_normal((200, 1, 8)), rng.integers(-1, 2, 200)
    counter = ActivationCounter(n_languages=2)
    counter.update(acts, lang)
    assert np.allclose(counter.probabilities(), direct_probabilities(acts, lang, 2))


def test_activation_counter_rejects_missing_language_and_bad_ids():
    counter = ActivationCounter(n_languages=2)
    counter.update(np.ones((4, 1, 3)), np.zeros(4, dtype=int))
    with pytest.raises(TwotowerError):
        counter.probabilities()  # no tokens of language 1
    with pytest.raises(TwotowerError):
        counter.update(np.ones((4, 1, 3)), np.full(4, 2))
    with pytest.raises(TwotowerError):
        counter.update(np.ones((4, 2, 3)), np.zeros(4, dtype=int))


def test_lape_tau_is_the_order_statistic_of_all_probabilities_on_random_data():
    act_prob = np.random.default_rng(5).uniform(size=(3, 40, 3))  # 360 values
    result = lape(act_prob, tau_quantile=0.95)
    flat = np.sort(act_prob, axis=None)
    assert result.tau == flat[342 - 1]  # round(0.95 * 360) = 342nd smallest
    assert np.mean(act_prob <= result.tau) == pytest.approx(0.95)
