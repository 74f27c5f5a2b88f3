"""The trees a structural probe must beat, drawn without any vector: the left-to-right
chain and uniformly random spanning trees, scored like the probes.

Introduced in chapter 10 (*Syntax or semantics?*). A probe whose towers stay below the
chain cannot say what either tower holds
(:func:`twotower.analysis.tower_probes.probe_summary`).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from twotower.analysis.tree_metrics import keep_mask, uuas_counts
from twotower.data.ud import Sentence
from twotower.errors import require

BASELINES = ("chain", "random")  # trees of :func:`baseline_uuas_counts`


def chain_distances(n: int) -> np.ndarray:
    """(n, n) distances ``|i - j|``: the minimum spanning tree over any subset of the
    words is the left-to-right chain through them (each word linked to the next)."""
    positions = np.arange(n)
    return np.abs(np.subtract.outer(positions, positions)).astype(np.float64)


def random_tree_edges(k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The k - 1 edges of a spanning tree of k nodes drawn uniformly from all k^(k-2)
    labelled trees (Cayley), by decoding a uniformly random Pruefer sequence."""
    if k < 3:
        return [(0, 1)] if k == 2 else []
    sequence = rng.integers(0, k, size=k - 2).tolist()
    degree = np.bincount(sequence, minlength=k) + 1
    leaves = [int(i) for i in np.flatnonzero(degree == 1)]  # sorted: already a heap
    edges = []
    for node in sequence:
        edges.append((heapq.heappop(leaves), node))
        degree[node] -= 1
        if degree[node] == 1:
            heapq.heappush(leaves, node)
    edges.append((leaves[0], leaves[1]))
    return edges


def random_tree_distances(n: int, rng: np.random.Generator,
                          keep: np.ndarray | None = None) -> np.ndarray:
    """(n, n) distances whose minimum spanning tree over the kept words is a uniformly
    random spanning tree of them (:func:`random_tree_edges`): 1 on its edges, 2 on
    every other pair; the optional (n,) boolean ``keep`` is that of
    :func:`twotower.analysis.tree_metrics.uuas`."""
    kept = np.arange(n) if keep is None else np.flatnonzero(np.asarray(keep, bool))
    pred = np.full((n, n), 2.0)
    np.fill_diagonal(pred, 0.0)
    for a, b in random_tree_edges(len(kept), rng):
        pred[kept[a], kept[b]] = pred[kept[b], kept[a]] = 1.0
    return pred


def baseline_uuas_counts(sentences: Sequence[Sentence], kind: str, *,
                         n_draws: int = 10, seed: int = 0,
                         ignore_punct: bool = True) -> np.ndarray:
    """Per sentence, gold edges a tree drawn without vectors finds, and gold edges.

    Args:
        sentences: gold sentences.
        kind: "chain" (:func:`chain_distances`) or "random" (a uniformly random
            spanning tree of the kept words, :func:`random_tree_distances`).
        n_draws: random trees per sentence; their found edges are averaged.
        seed: seed of the random trees (one generator, sentence after sentence).
        ignore_punct: leave PUNCT out, as
            :func:`twotower.analysis.probes.evaluate_probe` does.

    Returns:
        (n_sentences, 2) float array ``(found, gold edges)``, like the probes'
        counts (see :func:`twotower.analysis.tree_metrics.uuas_counts`); "found" is a
        mean over draws for "random". A uniformly random tree of k kept words holds each
        pair with probability 2 / k, so its expected UUAS is 2 / k.
    """
    require(kind in BASELINES, f"unknown baseline {kind!r}; choose one of "
            f"{', '.join(BASELINES)}")
    require(n_draws >= 1, f"n_draws must be positive, got {n_draws}")
    rng = np.random.default_rng(seed)
    out = np.zeros((len(sentences), 2))
    for i, sentence in enumerate(sentences):
        n, keep = len(sentence), keep_mask(sentence, ignore_punct)
        if kind == "chain":
            out[i] = uuas_counts(chain_distances(n), sentence.heads, keep)
            continue
        draws = [uuas_counts(random_tree_distances(n, rng, keep), sentence.heads, keep)
                 for _ in range(n_draws)]
        out[i] = np.mean(draws, axis=0)
    return out


def tree_baselines(sentences: Sequence[Sentence], n_draws: int = 10, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Per-sentence UUAS counts of the trees a probe must beat, on the same sentences.

    Returns:
        ``{"chain": ..., "random": ...}``, (n, 2) arrays of
        :func:`baseline_uuas_counts` (PUNCT left out as for the probes): the
        left-to-right chain, and uniformly random spanning trees (``n_draws`` per
        sentence, averaged; drawn with ``seed``).
    """
    return {kind: baseline_uuas_counts(sentences, kind, n_draws=n_draws, seed=seed)
            for kind in BASELINES}
