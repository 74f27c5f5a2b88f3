"""Model-dependent neuron analyses: ablation influence, activation counts, deactivation.

Covers twotower.analysis.rare_neurons (chapter 12) and the hooked half of twotower.analysis.lape
(chapter 13) on tiny randomised models, against real hooked forward passes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.errors import TwotowerError
from twotower.models.tower_lm import IGNORE, TwoTowerLM
from twotower.analysis.lape import (
    ActivationCounter,
    count_activations,
    deactivation_hooks,
    deactivation_matrix,
    mlp_hook_name,
    perplexity,
    random_mask_like,
)
from twotower.analysis.rare_neurons import (
    ablation_loss_changes,
    direct_path_influence,
    frequency_halves,
    group_tests,
    mean_activations,
    position_losses,
    tower_share,
)
from twotower.analysis.tower_gap import gap_by_label, gap_difference
from twotower.training.readouts import TokenScores


@pytest.fixture
def tiny_model(tiny_config, randomise):
    model = TwoTowerLM(tiny_config("causal", n_layers=2, d_ff=24))
    randomise(model, seed=3)
    return model.requires_grad_(False).eval()


@pytest.fixture
def tiny_batches(synthetic_data, make_objective):
    objective = make_objective("causal")
    windows = synthetic_data.train[:, :10]
    g = torch.Generator().manual_seed(0)
    return [objective.make_batch(windows[i:i + 8], g) for i in range(0, 24, 8)]


def _groups(vocab_size=64):
    group = np.full(vocab_size, -1)
    group[5:30] = 0
    group[30:60] = 1
    return group


# ---------------------------------------------------------------- direct-path influence


def test_direct_path_influence_equals_real_ablated_forward_pass_at_last_layer(
        tiny_model, tiny_batches):
    group = _groups()
    result = direct_path_influence(tiny_model, tiny_batches, group, max_positions=10**6)
    mean_act = torch.as_tensor(result.mean_act)
    for tower, neuron in [(0, 0), (0, 7), (1, 3), (1, 23)]:
        changes, labels = [], []
        for batch in tiny_batches:
            changes.append(ablation_loss_changes(tiny_model, batch, tower, neuron,
                                                 float(mean_act[tower, neuron])))
            labels.append(group[batch.targets[batch.targets != IGNORE]])
        changes, labels = torch.cat(changes).numpy(), np.concatenate(labels)
        for g in (0, 1):
            expected = changes[labels == g].mean()
            assert result.influence[g, tower, neuron] == pytest.approx(expected,
                                                                       abs=1e-5)
            assert result.n_positions[g] == (labels == g).sum()
    assert np.abs(result.influence).max() > 1e-3  # not trivially zero


def test_direct_path_at_an_early_layer_skips_later_layers(tiny_model, tiny_batches):
    group = _groups()
    result = direct_path_influence(tiny_model, tiny_batches, group, layer=0,
                                   max_positions=10**6)
    tower, neuron = 1, 5
    mean_value = float(result.mean_act[tower, neuron])
    # by hand: only the tower output moves, by (mean - a) times the output row
    w_out = tiny_model.towers.blocks[0].mlp_out.weight[tower, neuron]
    direct, real, labels = [], [], []
    for batch in tiny_batches:
        keep = batch.targets != IGNORE
        _, cache = tiny_model.run_with_cache(batch.input_ids,
                                             names=[mlp_hook_name(0), "tower_out"])
        feats = cache["tower_out"].clone()
        acts = cache[mlp_hook_name(0)][tower, ..., neuron]
        feats[tower] += (mean_value - acts)[..., None] * w_out
        target = batch.targets[keep]
        clean = position_losses(tiny_model, tiny_model.fuse(cache["tower_out"])[keep],
                                target)
        direct.append(position_losses(tiny_model, tiny_model.fuse(feats)[keep], target)
                      - clean)
        real.append(ablation_loss_changes(tiny_model, batch, tower, neuron, mean_value,
                                          layer=0))
        labels.append(group[target])
    direct, real = torch.cat(direct).numpy(), torch.cat(real).numpy()
    labels = np.concatenate(labels)
    assert result.influence[0, tower, neuron] == pytest.approx(
        direct[labels == 0].mean(), abs=1e-5)
    # the later layer carries part of the effect, so the total differs
    assert not np.allclose(direct, real, atol=1e-4)


def test_direct_path_influence_does_not_depend_on_chunking(tiny_model, tiny_batches):
    group = _groups()
    big = direct_path_influence(tiny_model, tiny_batches, group, max_rows=4096)
    small = direct_path_influence(tiny_model, tiny_batches, group, max_rows=7)
    np.testing.assert_allclose(big.influence, small.influence, atol=1e-6)
    np.testing.assert_allclose(big.halves, small.halves, atol=1e-6)


def test_direct_path_influence_caps_positions_and_splits_halves(tiny_model,
                                                                tiny_batches):
    group = _groups()
    result = direct_path_influence(tiny_model, tiny_batches, group, max_positions=11)
    assert result.n_positions.tolist() == [11, 11]
    # the two halves, weighted by their positions, average back to the whole
    n = result.half_positions[:, :, None, None]
    assert result.half_positions.sum(0).tolist() == [11, 11]
    whole = (n[0] * result.halves[0] + n[1] * result.halves[1]) / 11
    np.testing.assert_allclose(whole, result.influence, atol=1e-9)
    assert result.of("rare").shape == (2, 24)


def test_direct_path_influence_splits_halves_by_window(tiny_model, tiny_batches):
    # positions of one window share their context: each half holds whole windows,
    # the even ones (rows 0, 2, ... counted over all batches) and the odd ones
    group = _groups()
    result = direct_path_influence(tiny_model, tiny_batches, group, max_positions=10**6)
    tower, neuron = 1, 4
    mean_value = float(result.mean_act[tower, neuron])
    changes, labels, parity = [], [], []
    for b, batch in enumerate(tiny_batches):
        keep = batch.targets != IGNORE
        changes.append(ablation_loss_changes(tiny_model, batch, tower, neuron,
                                             mean_value).numpy())
        labels.append(group[batch.targets[keep]])
        rows = torch.nonzero(keep)[:, 0].numpy() + b * len(batch.targets)
        parity.append(rows % 2)
    changes, labels = np.concatenate(changes), np.concatenate(labels)
    parity = np.concatenate(parity)
    for half in (0, 1):
        for g in (0, 1):
            chosen = (parity == half) & (labels == g)
            assert result.half_positions[half, g] == chosen.sum()
            assert result.halves[half, g, tower, neuron] == pytest.approx(
                changes[chosen].mean(), abs=1e-5)


def test_mean_activations_average_positions_with_targets(tiny_model, tiny_batches):
    mean = mean_activations(tiny_model, tiny_batches)
    acts = []
    for batch in tiny_batches:
        _, cache = tiny_model.run_with_cache(batch.input_ids, names=[mlp_hook_name(1)])
        acts.append(cache[mlp_hook_name(1)][:, batch.targets != IGNORE])
    torch.testing.assert_close(mean, torch.cat(acts, 1).mean(1), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- rare tokens, towers


def test_frequency_halves_split_seen_types_by_rank():
    counts = np.array([0, 5, 1, 1, 9, 3, 0, 2])
    group = frequency_halves(counts)
    # six seen types: the three rarest (1, 1, 2 -> ids 3, 2, 7) are rare
    assert group.tolist() == [-1, 1, 0, 0, 1, 1, -1, 0]


def test_tower_share_and_gap_by_label():
    assert tower_share(np.array([[1.0, -3.0], [0.0, 4.0]])).tolist() == [0.5, 0.5]
    scores = TokenScores(target=np.arange(6, dtype=np.int32),
                         ll=np.array([[0, 0, 0, -1, -1, -1],
                                      [-1, -1, -1, 0, 0, 0.5]], dtype=np.float32),
                         joint=np.zeros(6, dtype=np.float32))
    gap, se, count = gap_by_label(scores, np.array([0, 0, 0, 1, 1, -1]), 2,
                                  groups=np.arange(6))
    assert gap.tolist() == [1.0, -1.0] and count.tolist() == [3, 2]
    assert se[0] == 0.0
    with pytest.raises(TwotowerError):  # scores saved before windows were kept
        gap_by_label(scores, np.array([0, 0, 0, 1, 1, -1]), 2, groups=None)


def _window_scores(rng, n_windows, per_window, window_sd, position_sd, labels=None):
    """Paired scores whose ll_A - ll_B = window effect (+ label effect) + noise."""
    window = np.repeat(np.arange(n_windows), per_window)
    diff = (rng.normal(0, window_sd, n_windows)[window]
            + rng.normal(0, position_sd, window.size))
    if labels is not None:
        diff += np.where(labels == 0, 0.3, 0.0)
    ll = np.stack([diff, np.zeros_like(diff)]).astype(np.float32)
    scores = TokenScores(np.zeros(window.size, dtype=np.int32), ll,
                         np.zeros(window.size, dtype=np.float32))
    return scores, window


def test_gap_standard_error_over_windows_matches_the_spread_of_repeated_gaps():
    # 40 windows of 25 positions, intraclass correlation 1 / (1 + 4) = 0.2: the mean
    # varies with sd sqrt((1 + 4 / 25) / 40) = 0.170 from text to text, and an SE over
    # positions, sqrt(5 / 1000) = 0.071, says it is 2.4 times more precise than it is
    rng = np.random.default_rng(0)
    true_sd = np.sqrt((1.0 + 4.0 / 25) / 40)
    gaps, window_se, position_se = [], [], []
    for _ in range(300):
        scores, window = _window_scores(rng, 40, 25, 1.0, 2.0)
        labels = np.zeros(window.size, dtype=int)
        gap, se, _ = gap_by_label(scores, labels, 1, groups=window)
        gaps.append(gap[0])
        window_se.append(se[0])
        position_se.append(gap_by_label(scores, labels, 1,
                                        groups=np.arange(window.size))[1][0])
    spread = np.std(gaps, ddof=1)
    assert spread == pytest.approx(true_sd, rel=0.1)  # 300 repeats: sd of sd ~4%
    assert np.mean(window_se) == pytest.approx(spread, rel=0.2)
    assert np.mean(position_se) < 0.8 * spread  # outside the same 20% band


def test_gap_difference_uses_the_covariance_of_labels_that_share_windows():
    # rare and common positions in the same windows share the window effect, which
    # cancels in their difference: its SE is far below hypot of the two SEs
    rng = np.random.default_rng(1)
    differences, ses, hypots = [], [], []
    for _ in range(300):
        labels = rng.integers(0, 2, 40 * 25)
        scores, window = _window_scores(rng, 40, 25, 1.0, 0.5, labels)
        difference, se = gap_difference(scores, labels, window)
        _, each, _ = gap_by_label(scores, labels, 2, groups=window)
        differences.append(difference)
        ses.append(se)
        hypots.append(np.hypot(*each))
    spread = np.std(differences, ddof=1)
    assert np.mean(differences) == pytest.approx(0.3, abs=3 * spread / np.sqrt(300))
    assert np.mean(ses) == pytest.approx(spread, rel=0.2)
    assert np.mean(hypots) > 1.2 * spread  # outside the same 20% band


def test_group_tests_find_a_correlated_group():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((400, 40))
    acts[:, :8] += 2 * rng.standard_normal((400, 1))  # neurons 0..7 move together
    w_in = rng.standard_normal((40, 32))
    tests = group_tests(np.arange(8), acts, w_in, n_random=50)
    assert tests["mean_correlation"].observed > 0.5
    assert tests["mean_correlation"].p_value < 0.05
    assert tests["effective_dimensionality"].p_value < 0.05
    hill = tests["hill_alpha"]
    assert hill.low <= hill.observed <= hill.high and hill.random.shape == (50,)


# ---------------------------------------------------------------- activations, LAPE


def test_count_activations_matches_cached_activations(tiny_model, synthetic_data):
    windows = torch.as_tensor(synthetic_data.train[:6, :10])
    g = torch.Generator().manual_seed(1)
    lang = torch.randint(-1, 2, windows.shape, generator=g)
    counter = count_activations(tiny_model, [(windows[:3], lang[:3]),
                                             (windows[3:], lang[3:])], n_languages=2)
    _, cache = tiny_model.run_with_cache(windows, names=[mlp_hook_name(0),
                                                         mlp_hook_name(1)])
    acts = torch.stack([cache[mlp_hook_name(0)], cache[mlp_hook_name(1)]], 1)
    flat = acts.flatten(0, 1).flatten(1, 2).transpose(0, 1)  # (n, Kt*L, M)
    expected = ActivationCounter(2)
    expected.update(flat[lang.flatten() >= 0], lang.flatten()[lang.flatten() >= 0])
    np.testing.assert_array_equal(counter.active_counts, expected.active_counts)
    assert counter.probabilities().shape == (4, 24, 2)
    # row k * L + l is layer l of tower k
    layer1_tower0 = (cache[mlp_hook_name(1)][0].flatten(0, 1)[lang.flatten() == 1] > 0)
    np.testing.assert_array_equal(counter.active_counts[1, 1],
                                  layer1_tower0.sum(0).numpy())


def test_deactivation_zeroes_exactly_the_chosen_neurons(tiny_model, synthetic_data):
    ids = torch.as_tensor(synthetic_data.train[:4, :10])
    mask = np.zeros((2, 2, 24), dtype=bool)
    mask[0, 0, [1, 5]] = True
    mask[1, 1, 7] = True
    names = [mlp_hook_name(0), mlp_hook_name(1)]
    _, clean = tiny_model.run_with_cache(ids, names=names)
    with tiny_model.hooks(deactivation_hooks(mask)):
        _, off = tiny_model.run_with_cache(ids, names=names)
    layer0_clean, layer0_off = clean[names[0]], off[names[0]]
    assert torch.all(layer0_off[0, ..., [1, 5]] == 0)
    assert torch.all(layer0_clean[0, ..., [1, 5]] != 0)  # they were on before
    keep = torch.ones(2, 24, dtype=torch.bool)
    keep[0, [1, 5]] = False
    # at the first zeroed layer every other unit is bit-identical
    assert torch.equal(layer0_off.permute(0, 3, 1, 2)[keep],
                       layer0_clean.permute(0, 3, 1, 2)[keep])
    assert torch.all(off[names[1]][1, ..., 7] == 0)
    # hooks are gone afterwards: the clean run comes back
    _, again = tiny_model.run_with_cache(ids, names=names)
    assert torch.equal(again[names[1]], clean[names[1]])


def test_deactivation_of_nothing_changes_nothing_and_random_masks_match_counts(
        tiny_model, tiny_batches):
    empty = np.zeros((2, 2, 24), dtype=bool)
    assert deactivation_hooks(empty) == []
    full = np.zeros_like(empty)
    full[:, 1] = True
    matrix = deactivation_matrix(tiny_model, [tiny_batches[:1], tiny_batches[1:]],
                                 {"none": empty, "all of layer 1": full})
    assert matrix.shape == (2, 2)
    assert matrix[0, 0] == pytest.approx(perplexity(tiny_model, tiny_batches[:1]))
    assert not np.allclose(matrix[0], matrix[1])
    mask = np.zeros((2, 2, 24), dtype=bool)
    mask[0, 1, :5] = True
    mask[1, 0, 3] = True
    control = random_mask_like(mask, seed=1)
    assert control.sum(-1).tolist() == mask.sum(-1).tolist()


def test_deactivation_hooks_reject_a_flat_mask():
    with pytest.raises(TwotowerError):
        deactivation_hooks(np.zeros((2, 24), dtype=bool))
