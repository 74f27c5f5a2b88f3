"""How close a predicted tree is to the gold parse, one sentence at a time: UUAS,
Spearman correlations of distances and depths, root accuracy.

Introduced in chapter 10 (*Syntax or semantics?*). Each metric takes one sentence as
numpy arrays, so it can be checked by hand; :mod:`twotower.analysis.probes` scores its
structural probes with them, as Hewitt & Manning (2019) do.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import minimum_spanning_tree
from scipy.stats import rankdata

from twotower.data.ud import Sentence
from twotower.errors import require


def _mst_edges(pred: np.ndarray) -> set[tuple[int, int]]:
    """Undirected edges (i < j) of the minimum spanning tree of (n, n) distances."""
    n = len(pred)
    if n < 2:
        return set()
    upper = np.triu_indices(n, k=1)
    weights = ((pred + pred.T) / 2)[upper]
    # scipy reads entries within 1e-8 of zero as "no edge". Every spanning tree has
    # n - 1 edges, so adding a constant to all weights, or scaling them, keeps the same
    # minimum tree: map the weights affinely onto [1, 2].
    spread = weights.max() - weights.min()
    weights = 1 + (weights - weights.min()) / (spread if spread > 0 else 1)
    graph = np.zeros((n, n))
    graph[upper] = weights
    tree = minimum_spanning_tree(graph).tocoo()
    return {(int(min(i, j)), int(max(i, j))) for i, j in zip(tree.row, tree.col)}


def _kept(n: int, keep: np.ndarray | None) -> np.ndarray:
    """Indices of the words to score: all, or those where the (n,) mask is True."""
    if keep is None:
        return np.arange(n)
    require(np.shape(keep) == (n,), f"keep must be a boolean mask of shape ({n},), "
            f"got {np.shape(keep)}")
    return np.flatnonzero(np.asarray(keep, dtype=bool))


def keep_mask(sentence: Sentence, ignore_punct: bool = True) -> np.ndarray | None:
    """(n,) True on the words that UUAS and root accuracy score: all but PUNCT (as
    H&M), or None (every word) when ``ignore_punct`` is False."""
    if not ignore_punct:
        return None
    return np.array([u != "PUNCT" for u in sentence.upos], dtype=bool)


def uuas_counts(
    pred_distances: np.ndarray, gold_heads: np.ndarray, keep: np.ndarray | None = None
) -> tuple[int, int]:
    """``(found, total)``: gold edges in the predicted tree, gold edges; see uuas."""
    heads = np.asarray(gold_heads)
    n = len(heads)
    pred = np.asarray(pred_distances, dtype=np.float64)
    require(pred.shape == (n, n), f"pred_distances must be ({n}, {n}) for {n} gold "
            f"heads, got {pred.shape}")
    require(bool(np.isfinite(pred).all()), "pred_distances contain NaN or inf; check "
            "the probe's training loss")
    kept = _kept(n, keep)
    is_kept = np.isin(np.arange(n), kept)
    gold = {(min(i, h - 1), max(i, h - 1)) for i, h in enumerate(heads.tolist())
            if h > 0 and is_kept[i] and is_kept[h - 1]}
    found = {(int(kept[i]), int(kept[j]))
             for i, j in _mst_edges(pred[np.ix_(kept, kept)])}
    return len(gold & found), len(gold)


def uuas(
    pred_distances: np.ndarray, gold_heads: np.ndarray, keep: np.ndarray | None = None
) -> float:
    """Undirected unlabeled attachment score of one sentence.

    The share of the gold tree's undirected edges (word i -- head of i; the root has
    none, so n - 1 edges) found in the minimum spanning tree of the predicted
    distances (symmetrised by averaging with the transpose).

    Args:
        pred_distances: (n, n) predicted distances.
        gold_heads: (n,) 1-based head of each word, 0 for the root.
        keep: optional (n,) boolean mask of the words to score (H&M leave out
            punctuation): the spanning tree is built over kept words only, and the gold
            edges are those with both ends kept.

    Returns:
        A float in [0, 1]; NaN when there is no gold edge to find (fewer than two
        words), so that an average over sentences can skip it instead of counting it.
    """
    found, total = uuas_counts(pred_distances, gold_heads, keep)
    return found / total if total else float("nan")


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def row_spearman(pred_distances: np.ndarray, gold_distances: np.ndarray) -> np.ndarray:
    """(n,) Spearman correlations of each row of (n, n) predicted and gold distances.

    Each row is correlated over all n entries, its diagonal zero included, as in H&M's
    code. Spearman is Pearson on average ranks (what ``scipy.stats.spearmanr``
    computes), here for all rows at once. A row constant on either side gives NaN.
    """
    pred, gold = np.asarray(pred_distances), np.asarray(gold_distances)
    require(pred.shape == gold.shape and pred.ndim == 2, f"pred and gold distances "
            f"must share one (n, n) shape, got {pred.shape} and {gold.shape}")
    return _row_pearson(rankdata(pred, axis=1), rankdata(gold, axis=1))


def distance_spearman(pred_distances: np.ndarray, gold_distances: np.ndarray) -> float:
    """Mean over words of :func:`row_spearman`, skipping constant (NaN) rows.

    NaN when every row is constant (a one-word sentence).
    """
    rows = row_spearman(pred_distances, gold_distances)
    rows = rows[~np.isnan(rows)]
    return float(rows.mean()) if len(rows) else float("nan")


def depth_spearman(pred_depths: np.ndarray, gold_depths: np.ndarray) -> float:
    """Spearman correlation of (n,) predicted and gold depths; NaN if either is flat."""
    pred, gold = np.asarray(pred_depths), np.asarray(gold_depths)
    require(pred.shape == gold.shape and pred.ndim == 1, f"pred and gold depths must "
            f"share one (n,) shape, got {pred.shape} and {gold.shape}")
    if len(pred) < 2:
        return float("nan")
    return float(_row_pearson(rankdata(pred), rankdata(gold)))


def root_accuracy(
    pred_depths: np.ndarray, gold_heads: np.ndarray, keep: np.ndarray | None = None
) -> float:
    """1.0 if the shallowest of (n,) predicted depths is the gold root, else 0.0.

    Only words of the optional (n,) boolean mask ``keep`` compete (H&M leave out
    punctuation); NaN when no word is kept.
    """
    heads = np.asarray(gold_heads)
    require(np.shape(pred_depths) == heads.shape, f"pred_depths must have shape "
            f"{heads.shape}, got {np.shape(pred_depths)}")
    kept = _kept(len(heads), keep)
    if not len(kept):
        return float("nan")
    return float(heads[kept[np.argmin(np.asarray(pred_depths)[kept])]] == 0)
