"""Structural probes (Hewitt & Manning 2019): is a parse tree hidden in the vectors?

Used by the chapter on syntax and semantics to ask, tower by tower, whether a linear map
``B`` makes squared distance between word vectors equal parse-tree distance
(:class:`DistanceProbe`) and squared norm equal depth in the tree (:class:`DepthProbe`).
Metrics take one sentence at a time as numpy arrays, so they can be checked by hand
(:mod:`twotower.analysis.tree_metrics`).
The model enters only as ``features_fn(sentences) -> list of (n_words, D) arrays``, so
any tower, layer or control can be probed with :func:`structural_probe`. Shapes: B
sentences, N words (padded), D features per word, R the rank of the probe.

Deviations from H&M's code, on purpose: early stopping keeps the epoch of lowest loss
on a dev set, but the learning rate is not decayed; rank 64 by default (the two-tower
authors' probe is 64-dimensional). The trees a probe must beat (a chain, a random tree)
are in :mod:`twotower.analysis.tree_baselines`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from twotower.analysis.tree_metrics import (depth_spearman, keep_mask, root_accuracy,
                                            row_spearman, uuas_counts)
from twotower.data.ud import Sentence, tree_depths, tree_distances
from twotower.errors import require
from twotower.training.runtime import resolve_device, sum_dtype

TASKS = ("distance", "depth")


# --- probes: torch ----------------------------------------------------------------


class _Probe(nn.Module):
    """A (D, R) matrix ``proj``, the paper's B, initialised U[-0.05, 0.05] as H&M."""

    task = ""

    def __init__(self, d_in: int, rank: int = 64, seed: int = 0):
        super().__init__()
        require(d_in >= 1 and rank >= 1, f"d_in and rank must be positive, got "
                f"d_in={d_in}, rank={rank}")
        generator = torch.Generator().manual_seed(seed)
        init = torch.rand(d_in, rank, generator=generator) * 0.1 - 0.05
        self.proj = nn.Parameter(init)

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        return self(h)


class DistanceProbe(_Probe):
    """``||B^T (h_i - h_j)||^2`` should be the tree distance of words i and j.

    ``DistanceProbe(d_in, rank, seed)``: D features in, R columns of B, and the seed of
    its initialisation. ``predict(h)``: (B, N, D) word vectors -> (B, N, N).
    """

    task = "distance"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = h @ self.proj  # (B, N, R)
        # |z_i|^2 + |z_j|^2 - 2 z_i.z_j: R times less memory than (B, N, N, R) diffs;
        # clamp the tiny negative values rounding can leave on the diagonal
        sq = z.pow(2).sum(-1)  # (B, N)
        gram = z @ z.transpose(1, 2)  # (B, N, N)
        return (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp(min=0)


class DepthProbe(_Probe):
    """``||B^T h_i||^2`` should be the depth of word i in the tree.

    ``DepthProbe(d_in, rank, seed)`` as :class:`DistanceProbe`; ``predict(h)``:
    (B, N, D) word vectors -> (B, N).
    """

    task = "depth"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h @ self.proj).pow(2).sum(-1)  # (B, N)


@dataclass(frozen=True)
class ProbeBatch:
    """Padded word vectors and gold tree targets of B sentences (padding is zero)."""

    features: torch.Tensor  # (B, N, D) float32 word vectors
    distances: torch.Tensor  # (B, N, N) float32 gold tree distances
    depths: torch.Tensor  # (B, N) float32 gold depths
    mask: torch.Tensor  # (B, N) bool, True on real words
    lengths: torch.Tensor  # (B,) int64 words per sentence

    def to(self, device: torch.device | str) -> "ProbeBatch":
        """The same batch on ``device``."""
        return ProbeBatch(*(t.to(device) for t in (self.features, self.distances,
                                                   self.depths, self.mask,
                                                   self.lengths)))


def pad_probe_batch(
    vectors: Sequence[np.ndarray],
    distances: Sequence[np.ndarray],
    depths: Sequence[np.ndarray],
) -> ProbeBatch:
    """Pad B sentences' (n_b, D) vectors, (n_b, n_b) distances, (n_b,) depths."""
    require(len(vectors) == len(distances) == len(depths) > 0, "pad_probe_batch needs "
            "as many vectors, distances and depths, and at least one sentence")
    lengths = [len(v) for v in vectors]
    widths = {np.shape(v)[1] for v in vectors}
    require(len(widths) == 1, f"all word vectors must have one width D, got {widths}")
    b, n, d = len(vectors), max(lengths), widths.pop()
    batch = ProbeBatch(torch.zeros(b, n, d), torch.zeros(b, n, n), torch.zeros(b, n),
                       torch.zeros(b, n, dtype=torch.bool),
                       torch.tensor(lengths, dtype=torch.int64))
    for i, (v, dist, dep, k) in enumerate(zip(vectors, distances, depths, lengths)):
        require(np.shape(dist) == (k, k) and np.shape(dep) == (k,), f"sentence {i}: "
                f"{k} word vectors but targets of shapes {np.shape(dist)}, "
                f"{np.shape(dep)}")
        batch.features[i, :k] = torch.as_tensor(np.asarray(v, np.float32))
        batch.distances[i, :k, :k] = torch.as_tensor(np.asarray(dist, np.float32))
        batch.depths[i, :k] = torch.as_tensor(np.asarray(dep, np.float32))
        batch.mask[i, :k] = True
    return batch


def make_probe_batches(
    vectors: Sequence[np.ndarray], heads: Sequence[np.ndarray], batch_size: int = 20
) -> list[ProbeBatch]:
    """Padded batches of ``batch_size`` sentences from (n, D) word vectors and (n,)
    1-based gold heads (0 = root) per sentence; targets come from the heads."""
    require(len(vectors) == len(heads), f"{len(vectors)} vector arrays for "
            f"{len(heads)} sentences; features_fn must return one array per sentence")
    require(batch_size >= 1, f"batch_size must be positive, got {batch_size}")
    return [
        pad_probe_batch(vectors[i:i + batch_size],
                        [tree_distances(h) for h in heads[i:i + batch_size]],
                        [tree_depths(h) for h in heads[i:i + batch_size]])
        for i in range(0, len(vectors), batch_size)
    ]


def probe_loss(probe: _Probe, batch: ProbeBatch) -> torch.Tensor:
    """Hewitt & Manning's L1 loss, normalised per sentence, averaged over sentences.

    Distance: sum over word pairs of |pred - gold| divided by n^2; depth: sum over
    words divided by n. Padding contributes nothing.
    """
    pred = probe(batch.features)
    lengths = batch.lengths.clamp(min=1).float()
    if probe.task == "distance":
        pairs = batch.mask[:, :, None] & batch.mask[:, None, :]  # (B, N, N)
        error = ((pred - batch.distances).abs() * pairs).sum((1, 2)) / lengths**2
    else:
        error = ((pred - batch.depths).abs() * batch.mask).sum(1) / lengths
    return error.mean()


@dataclass(frozen=True)
class ProbeFit:
    """How :func:`train_probe` went: mean loss per epoch and the epoch it kept."""

    train_loss: list[float]  # mean training loss of each epoch
    dev_loss: list[float]  # mean dev loss after each epoch (empty without a dev set)
    epochs: int  # epochs of the returned probe: argmin of dev_loss + 1, or all


def _mean_loss(probe: _Probe, batches: Sequence[ProbeBatch]) -> float:
    with torch.no_grad():  # summed on the probe's device: one read, not one per batch
        return float(torch.stack([probe_loss(probe, b)
                                  for b in batches]).double().mean())


def train_probe(
    probe: _Probe,
    batches: Sequence[ProbeBatch],
    epochs: int = 30,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
    dev_batches: Sequence[ProbeBatch] = (),
) -> ProbeFit:
    """Fit ``probe`` in place with Adam (lr 1e-3 as H&M) on :func:`probe_loss`.

    Each of ``epochs`` passes visits ``batches`` in a new order drawn from ``seed``, so
    a run is deterministic. ``on_epoch_end(epoch, mean_loss)`` is called after each
    pass (e.g. for a live plot). With ``dev_batches`` (sentences not trained on), the
    probe is scored on them after every pass and left at the epoch of lowest dev loss
    (early stopping, as H&M); without, it keeps the last epoch.

    Returns:
        :class:`ProbeFit`: the losses and the number of epochs the probe kept.
    """
    require(len(batches) > 0, "train_probe needs at least one batch")
    require(epochs >= 1, f"epochs must be positive, got {epochs}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    device = probe.proj.device  # the batches go where the probe is; losses stay there
    batches = [b.to(device) for b in batches]
    dev_batches = [b.to(device) for b in dev_batches]
    history, dev_history, best = [], [], None
    for epoch in range(epochs):
        total = torch.zeros((), device=device, dtype=sum_dtype(device))
        for index in torch.randperm(len(batches), generator=generator).tolist():
            loss = probe_loss(probe, batches[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach()
        history.append(float(total) / len(batches))  # one read per epoch
        require(np.isfinite(history[-1]), f"probe loss became {history[-1]} in epoch "
                f"{epoch}; lower lr or check the word vectors for NaN")
        if dev_batches:
            dev_history.append(_mean_loss(probe, dev_batches))
            if dev_history[-1] < min(dev_history[:-1], default=np.inf):  # first best
                best = probe.proj.detach().clone()
        if on_epoch_end is not None:
            on_epoch_end(epoch, history[-1])
    if best is not None:
        with torch.no_grad():
            probe.proj.copy_(best)
    kept = int(np.argmin(dev_history)) + 1 if dev_history else epochs
    return ProbeFit(history, dev_history, kept)


def word_vectors(subword_vectors, word_ids) -> np.ndarray | torch.Tensor:
    """Average the (T, D) subword vectors (numpy or torch) of each word: (n_words, D).

    ``word_ids`` gives T word indices, e.g. ``encoding.word_ids`` of a tokenizer given
    the UD words with ``is_pretokenized=True``; None or a negative index marks a token
    of no word ([CLS], [SEP]), which is dropped. Every index 0..max needs a subword.
    """
    as_numpy = isinstance(subword_vectors, np.ndarray)
    vectors = torch.as_tensor(subword_vectors)
    ids = torch.as_tensor([-1 if w is None else int(w) for w in word_ids],
                          dtype=torch.int64)
    require(vectors.ndim == 2 and len(ids) == len(vectors), f"need one word id per "
            f"subword vector, got {len(ids)} ids for shape {tuple(vectors.shape)}")
    real = ids >= 0
    n_words = int(ids.max()) + 1 if bool(real.any()) else 0
    sums = vectors.new_zeros(n_words, vectors.shape[1])
    sums.index_add_(0, ids[real], vectors[real])
    counts = torch.zeros(n_words, dtype=vectors.dtype).index_add_(
        0, ids[real], torch.ones(int(real.sum()), dtype=vectors.dtype))
    require(bool((counts > 0).all()), "some word index has no subword; word_ids must "
            "number the words 0, 1, 2, ... without gaps")
    means = sums / counts[:, None]
    return means.numpy() if as_numpy else means


# --- evaluation -------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeScores:
    """What Hewitt & Manning report for one probe.

    ``spearman`` is their DSpr. (distance) or NSpr. (depth): the Spearman correlations
    of rows (distance) or sentences (depth) averaged within each sentence length of
    ``evaluate_probe(lengths=...)``, then across lengths. ``uuas`` sums found and gold
    edges over all test sentences before dividing (a micro average, as H&M).
    """

    task: str  # "distance" or "depth"
    spearman: float  # DSpr. or NSpr.
    uuas: float  # distance probe only, else NaN
    root_accuracy: float  # depth probe only (else NaN): share of roots found
    spearman_by_length: dict[int, float]  # sentence length -> mean Spearman
    n_sentences: int  # test sentences scored
    epochs: int | None = None  # epochs the probe trained (structural_probe fills it)


def evaluate_probe(
    probe: _Probe,
    vectors: Sequence[np.ndarray],
    sentences: Sequence[Sentence],
    ignore_punct: bool = True,
    lengths: tuple[int, int] = (5, 50),
) -> ProbeScores:
    """Score a trained probe on gold sentences, given one (n, D) array per sentence.

    ``ignore_punct`` leaves PUNCT words out of UUAS and root accuracy (as H&M do);
    Spearman always uses every word, over sentence lengths in the inclusive range
    ``lengths``.
    """
    require(len(vectors) == len(sentences), f"{len(vectors)} vector arrays for "
            f"{len(sentences)} sentences; features_fn must return one per sentence")
    found = total = 0
    roots, by_length = [], defaultdict(list)
    with torch.no_grad():
        for v, sentence in zip(vectors, sentences):
            h = torch.as_tensor(np.asarray(v), dtype=torch.float32,
                                device=probe.proj.device)[None]  # (1, n, D)
            pred = probe(h)[0].double().cpu().numpy()
            n = len(sentence)
            require(len(pred) == n, f"{len(pred)} word vectors for a sentence of {n} "
                    f"words; features_fn must return one vector per UD word")
            keep = keep_mask(sentence, ignore_punct)
            if probe.task == "distance":
                hits, edges = uuas_counts(pred, sentence.heads, keep)
                found, total = found + hits, total + edges
                by_length[n].extend(row_spearman(pred, tree_distances(sentence.heads)))
            else:
                roots.append(root_accuracy(pred, sentence.heads, keep))
                by_length[n].append(depth_spearman(pred, tree_depths(sentence.heads)))
    per_length = {n: float(np.nanmean(values))
                  for n, values in sorted(by_length.items())
                  if lengths[0] <= n <= lengths[1] and not np.isnan(values).all()}
    nan = float("nan")
    return ProbeScores(
        task=probe.task,
        spearman=float(np.mean(list(per_length.values()))) if per_length else nan,
        uuas=found / total if probe.task == "distance" and total else nan,
        root_accuracy=float(np.nanmean(roots)) if roots else nan,
        spearman_by_length=per_length,
        n_sentences=len(sentences),
    )


def structural_probe(
    features_fn: Callable[[Sequence[Sentence]], list[np.ndarray]],
    train_sentences: Sequence[Sentence],
    test_sentences: Sequence[Sentence],
    task: str = "distance",
    rank: int = 64,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 20,
    seed: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
    dev_sentences: Sequence[Sentence] = (),
    device: str | torch.device = "auto",
) -> tuple[_Probe, ProbeScores]:
    """Train a ``task`` probe on some sentences; return it and its scores on others.

    ``features_fn`` maps sentences to one (n_words, D) array of word vectors each, e.g.
    one tower's layer-8 outputs averaged per word by :func:`word_vectors`. With
    ``dev_sentences`` the probe stops early at its best dev epoch (:func:`train_probe`;
    the scores' ``epochs`` says which). The other arguments are those of
    :class:`DistanceProbe` and :func:`train_probe`; ``device`` is where the probe
    trains (``auto``: a GPU when there is one).
    """
    require(task in TASKS, f"unknown probe task {task!r}; choose one of "
            f"{', '.join(TASKS)}")
    require(len(train_sentences) > 0, "structural_probe needs training sentences")

    def batches_of(sentences):
        return make_probe_batches(features_fn(sentences), [s.heads for s in sentences],
                                  batch_size) if len(sentences) else []

    batches = batches_of(train_sentences)
    probe_class = DistanceProbe if task == "distance" else DepthProbe
    probe = probe_class(batches[0].features.shape[-1], rank, seed=seed).to(
        resolve_device(device))
    fit = train_probe(probe, batches, epochs, lr, seed, on_epoch_end,
                      batches_of(dev_sentences))
    scores = evaluate_probe(probe, features_fn(test_sentences), test_sentences)
    return probe, replace(scores, epochs=fit.epochs)
