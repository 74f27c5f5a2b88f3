"""Rare-token neurons in each tower: direct-path mean-ablation influence.

Introduced in chapter 12 (*Rare-token neurons in each tower*), after Liu, Wang & Li
2025. For every neuron j of the last MLP layer of tower k, replace its activation by
its mean over the data (mean ablation) and let the change reach the loss by the
*direct path* only: the change of the tower's output, ``(mean_j - a_j) * W_out[k, j]``,
goes through the fused head (tower k's slice of the concatenation -> ``head.norm_in``
-> dense -> GELU -> ``head.norm_out`` -> tied decoder) and nothing else is recomputed.
The last MLP is the last layer of a tower, so here the direct path is the whole effect;
:func:`ablation_loss_changes` computes it with a real hooked forward pass, and the
tests check that both agree. The influence is the loss change averaged over positions
whose target is rare (bottom half of token types by unigram frequency) or common.

Also here: which tower holds the influence, and the group statistics against random
groups. Which tower *predicts* rare tokens better is
:mod:`twotower.analysis.tower_gap`. Shape letters: K towers, F neurons of one MLP
layer, D width of one tower, W = K * D, V vocabulary, N positions, G groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from twotower.analysis.neuron_stats import (coactivation, default_spectrum_k,
                                            empirical_p_value, hill_bootstrap,
                                            random_group_baseline,
                                            weight_correlation_spectrum)
from twotower.data.objectives import Batch
from twotower.errors import require
from twotower.models.tower_lm import IGNORE, TowerLM

GROUP_NAMES = ("rare", "common")


# --- which tokens are rare ------------------------------------------------------------


def unigram_counts(windows: np.ndarray, vocab_size: int,
                   exclude: Sequence[int] = ()) -> np.ndarray:
    """How often each id occurs in ``windows`` (N, T); ids in ``exclude`` count 0."""
    counts = np.bincount(np.asarray(windows).ravel(), minlength=vocab_size)
    counts[list(exclude)] = 0
    return counts[:vocab_size]


def frequency_halves(counts: np.ndarray) -> np.ndarray:
    """Split the token types that occur into a rare half (0) and a common half (1).

    Types are ranked by count (ties: the higher id counts as rarer, so the split is
    deterministic); the ``floor(n / 2)`` lowest are rare. A rank split keeps the halves
    equal even though many types share the count 1 or 2.

    Args:
        counts: shape (V,), unigram counts (0 = never seen, left out).

    Returns:
        Shape (V,) int: 0 rare, 1 common, -1 for types with count 0.
    """
    counts = np.asarray(counts)
    seen = np.flatnonzero(counts > 0)
    require(seen.size >= 2, "need at least two token types that occur")
    order = seen[np.lexsort((-seen, counts[seen]))]  # rarest first, ties by high id
    group = np.full(counts.shape, -1, dtype=np.int64)
    group[order[: seen.size // 2]] = 0
    group[order[seen.size // 2:]] = 1
    return group


# --- influence by the direct path -----------------------------------------------------


def _layer(model: TowerLM, layer: int | None) -> int:
    require(hasattr(model.towers, "blocks"), "MLP neurons exist in the transformer "
                                             "families only (causal, mlm), not in bilm")
    n_layers = len(model.towers.blocks)
    layer = n_layers - 1 if layer is None else layer
    require(0 <= layer < n_layers, f"layer must be in [0, {n_layers - 1}], got {layer}")
    return layer


@torch.no_grad()
def mean_activations(model: TowerLM, batches: Iterable[Batch], layer: int | None = None,
                     max_positions: int = 50_000) -> torch.Tensor:
    """Mean of each MLP neuron over positions that have a target: (K, F).

    This is the value a mean ablation puts in place of a neuron's activation.
    """
    name = f"towers.blocks.{_layer(model, layer)}.mlp_post"
    total, count = None, 0
    for batch in batches:
        _, cache = model.run_with_cache(batch.input_ids, names=[name])
        acts = cache[name][:, batch.targets != IGNORE].double()  # (K, n, F)
        acts = acts[:, : max_positions - count]
        total = acts.sum(1) if total is None else total + acts.sum(1)
        count += acts.shape[1]
        if count >= max_positions:
            break
    require(count > 0, "no position with a target in the batches")
    return (total / count).float()


@torch.no_grad()
def layer_activations(model: TowerLM, batches: Iterable[Batch],
                      layer: int | None = None,
                      max_positions: int = 4096) -> np.ndarray:
    """Activations of every neuron of one MLP layer at the first positions with a
    target: (K, N, F), N <= ``max_positions`` (for co-activation statistics)."""
    name = f"towers.blocks.{_layer(model, layer)}.mlp_post"
    parts, count = [], 0
    for batch in batches:
        _, cache = model.run_with_cache(batch.input_ids, names=[name])
        acts = cache[name][:, batch.targets != IGNORE]  # (K, n, F)
        parts.append(acts[:, : max_positions - count])
        count += parts[-1].shape[1]
        if count >= max_positions:
            break
    return torch.cat(parts, 1).numpy()


def position_losses(model: TowerLM, fused: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (fp32) of the fused head: fused (..., W), target (...) -> (...)."""
    logits = model.head_logits(fused).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                           reduction="none").view(target.shape)


@dataclass(frozen=True)
class NeuronInfluence:
    """Mean-ablation influence of every neuron of one MLP layer, per token group.

    Attributes:
        layer: the MLP layer (the last one unless asked otherwise).
        influence: (G, K, F), mean over the group's positions of the loss change when
            the neuron is mean-ablated (> 0: the neuron helps).
        halves: (2, G, K, F), the same on the positions of even and of odd windows,
            for a split-half check of the noise (positions of one window share their
            context, so alternate positions would make the halves look alike).
        half_positions: (2, G), positions averaged in each half.
        n_positions: (G,), positions averaged in each group.
        base_loss: (G,), the unablated loss on those positions.
        mean_act: (K, F), the mean activation used for the ablation.
        group_names: name of each group, e.g. ``("rare", "common")``.
    """

    layer: int
    influence: np.ndarray
    halves: np.ndarray
    half_positions: np.ndarray
    n_positions: np.ndarray
    base_loss: np.ndarray
    mean_act: np.ndarray
    group_names: tuple[str, ...] = GROUP_NAMES

    def of(self, group: str) -> np.ndarray:
        """Influence (K, F) in the named group."""
        return self.influence[self.group_names.index(group)]


def _pick_positions(group: torch.Tensor, taken: np.ndarray, cap: int) -> torch.Tensor:
    """Positions of each group until it holds ``cap`` of them (updates ``taken``)."""
    pick = torch.zeros_like(group, dtype=torch.bool)
    for g in range(taken.size):
        where = torch.nonzero(group == g).flatten()[: max(cap - int(taken[g]), 0)]
        pick[where] = True
        taken[g] += where.numel()
    return pick


@torch.no_grad()
def direct_path_influence(model: TowerLM, batches: Iterable[Batch],
                          token_group: np.ndarray, *, layer: int | None = None,
                          mean_act: torch.Tensor | None = None,
                          max_positions: int = 1024,
                          group_names: Sequence[str] = GROUP_NAMES,
                          max_rows: int = 4096) -> NeuronInfluence:
    """Direct-path mean-ablation influence of every neuron of one MLP layer.

    Streams over ``batches`` until every group has ``max_positions`` positions (in
    batch order), so memory stays bounded: the head runs on at most ``max_rows``
    (neuron, position) rows at a time. A row of a batch is a window: its index is
    ``batch.window`` where batches carry it, else the count of rows before it.

    Args:
        model: a two-tower (or K-tower) transformer model.
        batches: inputs and targets; positions with target ``IGNORE`` are skipped.
        token_group: (V,) group of each target id (-1: in no group), e.g. from
            :func:`frequency_halves`.
        layer: MLP layer; default the last.
        mean_act: (K, F) ablation values; default :func:`mean_activations` over the
            same batches (pass a list, not a one-shot iterator, then).
        max_positions: positions per group.
        group_names: names of groups 0, 1, ...
        max_rows: rows of logits held at once (each row is V floats).

    Returns:
        The :class:`NeuronInfluence`.
    """
    was_training = model.training
    model.eval()
    layer = _layer(model, layer)
    if mean_act is None:
        mean_act = mean_activations(model, batches, layer)
    K, F_, _ = model.towers.blocks[layer].mlp_out.weight.shape
    n_groups = len(group_names)
    group_of = torch.as_tensor(np.asarray(token_group), dtype=torch.long)
    taken = np.zeros(n_groups, dtype=np.int64)
    sums = torch.zeros(2, n_groups, K, F_, dtype=torch.float64)
    base_sum = torch.zeros(n_groups, dtype=torch.float64)
    half_n = torch.zeros(2 * n_groups, dtype=torch.float64)
    rows_seen = 0
    for batch in batches:
        if (taken >= max_positions).all():
            break
        picked = _picked_positions(model, batch, layer, group_of, taken, max_positions,
                                   rows_seen)
        rows_seen += len(batch.targets)
        if picked is None:
            continue
        acts, fused, target, onehot = picked
        half_n += onehot.sum(0)
        base = position_losses(model, fused, target)  # (n,)
        base_sum += onehot.view(-1, 2, n_groups).sum(1).T @ base.double()
        _add_ablation_changes(sums, model, layer, mean_act, acts, fused, target, base,
                              onehot, max_rows)
    model.train(was_training)
    return _influence(layer, sums, base_sum, half_n, taken, mean_act, group_names)


def _picked_positions(model: TowerLM, batch: Batch, layer: int, group_of: torch.Tensor,
                      taken: np.ndarray, max_positions: int, rows_seen: int):
    """The positions of ``batch`` that still fill a group (:func:`_pick_positions`),
    and what their influence needs: the MLP activations (K, n, F), the fused tower
    outputs (n, W), the targets (n,) and a (n, 2G) one-hot of half (even or odd
    window) and group. None when no position is picked."""
    name = f"towers.blocks.{layer}.mlp_post"
    n_groups = taken.size
    window = (torch.arange(len(batch.targets)) + rows_seen if batch.window is None
              else batch.window.cpu())
    keep = batch.targets != IGNORE
    target = batch.targets[keep]
    group = group_of[target]
    pick = _pick_positions(group, taken, max_positions)
    if not pick.any():
        return None
    _, cache = model.run_with_cache(batch.input_ids, names=[name, "tower_out"])
    acts = cache[name][:, keep][:, pick]  # (K, n, F)
    fused = model.fuse(cache["tower_out"][:, keep][:, pick])  # (n, W)
    target, group = target[pick], group[pick]
    # positions of even windows go to half 0, of odd windows to half 1
    half = window.long()[torch.nonzero(keep)[:, 0]][pick] % 2
    onehot = torch.zeros(group.numel(), 2 * n_groups, dtype=torch.float64)
    onehot[torch.arange(group.numel()), half * n_groups + group] = 1.0
    return acts, fused, target, onehot


def _add_ablation_changes(sums: torch.Tensor, model: TowerLM, layer: int,
                          mean_act: torch.Tensor, acts: torch.Tensor,
                          fused: torch.Tensor, target: torch.Tensor, base: torch.Tensor,
                          onehot: torch.Tensor, max_rows: int) -> None:
    """Add to ``sums`` (2, G, K, F) the loss change of every position when each
    neuron in turn is mean-ablated, by half and group (``onehot``), through the fused
    head only, at most ``max_rows`` rows of logits at a time."""
    w_out = model.towers.blocks[layer].mlp_out.weight  # (K, F, D)
    K, F_, D = w_out.shape
    n_groups = sums.shape[1]
    for start in range(0, target.numel(), max_rows):
        rows = slice(start, start + max_rows)
        n = fused[rows].shape[0]
        chunk = max(1, max_rows // n)
        for k in range(K):
            delta_act = mean_act[k] - acts[k, rows]  # (n, F)
            for j in range(0, F_, chunk):
                J = slice(j, j + chunk)
                delta = delta_act[:, J].T[:, :, None] * w_out[k, J][:, None, :]
                modified = fused[rows].expand(delta.shape[0], n, -1).clone()
                modified[:, :, k * D:(k + 1) * D] += delta  # (c, n, W)
                change = position_losses(
                    model, modified, target[rows].expand(delta.shape[0], n)
                ) - base[rows]  # (c, n)
                sums[:, :, k, J] += (change.double() @ onehot[rows]).T.reshape(
                    2, n_groups, -1)


def _influence(layer: int, sums: torch.Tensor, base_sum: torch.Tensor,
               half_n: torch.Tensor, taken: np.ndarray, mean_act: torch.Tensor,
               group_names: Sequence[str]) -> NeuronInfluence:
    """The sums of :func:`direct_path_influence` turned into means."""
    n_groups = len(group_names)
    counts = torch.as_tensor(taken, dtype=torch.float64)
    half_counts = half_n.view(2, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        influence = (sums.sum(0) / counts[:, None, None]).numpy()
        halves = (sums / half_counts[:, :, None, None]).numpy()
        base_loss = (base_sum / counts).numpy()
    return NeuronInfluence(layer=layer, influence=influence, halves=halves,
                           half_positions=half_counts.numpy().astype(np.int64),
                           n_positions=taken, base_loss=base_loss,
                           mean_act=mean_act.numpy(), group_names=tuple(group_names))


@torch.no_grad()
def ablation_loss_changes(model: TowerLM, batch: Batch, tower: int, neuron: int,
                          value: float, layer: int | None = None) -> torch.Tensor:
    """Loss change at every target position from a real, hooked, ablated forward pass.

    The activation of ``neuron`` of tower ``tower`` in MLP ``layer`` is set to
    ``value`` at every position and the whole model runs again, every later layer
    included: the reference that :func:`direct_path_influence` must match at the last
    layer.

    Returns:
        (N,) loss changes at the positions with a target, in row-major order.
    """
    was_training = model.training
    model.eval()
    name = f"towers.blocks.{_layer(model, layer)}.mlp_post"
    keep = batch.targets != IGNORE

    def losses() -> torch.Tensor:
        fused = model.fuse(model.features(batch.input_ids))
        return position_losses(model, fused[keep], batch.targets[keep])

    def ablate(acts: torch.Tensor, _point) -> torch.Tensor:
        acts = acts.clone()
        acts[tower, ..., neuron] = value
        return acts

    clean = losses()
    with model.hooks([(name, ablate)]):
        ablated = losses()
    model.train(was_training)
    return ablated - clean


# --- which tower? ---------------------------------------------------------------------


def tower_share(influence: np.ndarray) -> np.ndarray:
    """Share of the summed |influence| that each tower holds: (K, F) -> (K,)."""
    magnitude = np.abs(np.asarray(influence)).sum(axis=-1)
    return magnitude / magnitude.sum()


# --- the group of influential neurons against random groups --------------------------


def influential_neurons(values: np.ndarray, fit) -> np.ndarray:
    """Indices of the plateau and power-law neurons of a three-regime fit.

    The neurons of rank up to the fit's second breakpoint, most influential first,
    capped at half the layer so that random groups of the same size still differ.

    Args:
        values: (F,) influence of one tower's neurons.
        fit: :class:`twotower.analysis.regimes.RegimeFit` of ``abs(values)``.
    """
    order = np.argsort(-np.abs(values), kind="stable")
    return order[: min(max(fit.breakpoint_ranks[1], 3), values.size // 2)]


@dataclass(frozen=True)
class GroupTest:
    """A statistic of one neuron group, its interval, and random groups of equal size.

    Attributes:
        observed: the statistic of the group.
        low: lower end of a 95% bootstrap interval of the observed value, or NaN.
        high: upper end of that interval, or NaN.
        random: (n,), the statistic of random groups of the same size.
        p_value: share of random groups at least as extreme (direction ``alternative``).
        alternative: ``"greater"`` or ``"less"``.
    """

    observed: float
    low: float
    high: float
    random: np.ndarray
    p_value: float
    alternative: str


def spectrum_hill(weights: np.ndarray, n_boot: int = 200,
                  seed: int = 0) -> tuple[float, float, float]:
    """Hill alpha of the input-weight correlation spectrum with a bootstrap interval.

    The tail size ``k`` is :func:`twotower.analysis.neuron_stats.default_spectrum_k`;
    the bootstrap resamples the eigenvalues.
    """
    spectrum = weight_correlation_spectrum(weights)
    positive = spectrum[spectrum > 1e-12 * spectrum[0]]
    return hill_bootstrap(positive, default_spectrum_k(positive.size), n_boot=n_boot,
                          seed=seed)


def group_tests(group: np.ndarray, acts: np.ndarray, w_in: np.ndarray, *,
                n_random: int = 200, seed: int = 0) -> dict[str, GroupTest]:
    """Co-activation and weight-spectrum tails of a group against random groups.

    Args:
        group: (G,) neuron indices of one tower's MLP layer.
        acts: (N, F) activations of all F neurons of that layer on N positions.
        w_in: (F, D) input weights of every neuron.
        n_random: random groups of size G drawn from all F neurons.
        seed: seed of the random groups and the bootstrap.

    Returns:
        ``{"mean_correlation", "effective_dimensionality", "hill_alpha"}``; the first
        is tested for being larger than random, the other two for being smaller.
    """
    group = np.asarray(group)
    population = np.arange(acts.shape[1])
    out, seen = {}, {}

    def coact(g: np.ndarray):
        # both co-activation statistics come from one PCA; the same seed draws the
        # same random groups for each statistic, so every group is computed once
        key = tuple(np.sort(g).tolist())
        if key not in seen:
            seen[key] = coactivation(acts[:, g])
        return seen[key]

    stats = {"mean_correlation": ("greater", lambda g: coact(g).mean_correlation),
             "effective_dimensionality": ("less",
                                          lambda g: coact(g).effective_dimensionality),
             "hill_alpha": ("less", lambda g: spectrum_hill(w_in[g], 10)[0])}
    for name, (alternative, stat) in stats.items():
        observed = float(stat(group))
        low = high = np.nan
        if name == "hill_alpha":
            observed, low, high = spectrum_hill(w_in[group], seed=seed)
        random = random_group_baseline(stat, population, group.size, n_random, seed)
        out[name] = GroupTest(observed, low, high, random,
                              empirical_p_value(observed, random, alternative),
                              alternative)
    return out
