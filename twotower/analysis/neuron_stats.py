"""Statistics that need no model: tails, spectra, co-activation, clustered means.

Introduced in the chapter on rare-token neurons (Liu, Wang & Li 2025). Everything
here takes plain arrays (influences, activations, weights, per-position scores), so
the same code serves one tower, two towers, or synthetic data in a test. The
model-dependent parts (ablation influence through hooks) live elsewhere and hand their
numbers to these functions; the sorted influence curve has its own module,
:mod:`twotower.analysis.regimes`.

* :func:`hill_estimator`, :func:`hill_bootstrap` -- tail exponent of a power law.
* :func:`weight_correlation_spectrum`, :func:`spectrum_tail_alpha` -- how heavy-tailed
  the eigenvalues of a group's input-weight correlation matrix are.
* :func:`coactivation` -- do the neurons of a group fire together?
* :func:`random_group_baseline`, :func:`empirical_p_value` -- the same statistic on
  random groups of equal size, for "against random groups" comparisons.
* :func:`clustered_means` -- means per label with standard errors that treat each
  cluster (a window of text) as one independent draw, not each position.

Letters in shapes: ``N`` samples (tokens), ``G`` neurons in a group, ``D`` input width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from twotower.analysis.stats import (bootstrap_distribution, percentile_interval,
                                     permutation_p)
from twotower.errors import require


# --- Power-law tails: Hill estimator --------------------------------------------------


def default_hill_k(n: int) -> int:
    """10% of the samples, at least 5, and always fewer than ``n``."""
    return max(1, min(n - 1, max(5, round(0.1 * n))))


def _hill_descending(top: np.ndarray, k: int) -> float:
    """Hill alpha from the ``k + 1`` largest samples sorted descending (inf if tied)."""
    log_excess = np.log(top[:k]) - np.log(top[k])
    total = float(log_excess.sum())
    return k / total if total > 0 else np.inf


def _largest_descending(samples: np.ndarray, count: int) -> np.ndarray:
    top = np.partition(samples, samples.size - count)[samples.size - count:]
    return np.sort(top)[::-1]


def _check_samples(samples: np.ndarray, k: int | None) -> tuple[np.ndarray, int]:
    x = np.asarray(samples, dtype=float).ravel()
    require(x.size >= 3, f"the Hill estimator needs at least 3 samples, got {x.size}")
    require(bool(np.all(np.isfinite(x))), "samples contain NaN or inf; drop them first")
    k = default_hill_k(x.size) if k is None else int(k)
    require(1 <= k < x.size, f"k must be in [1, {x.size - 1}] for {x.size} samples, "
                             f"got {k}")
    require(bool(np.sort(x)[x.size - k - 1] > 0),
            f"the {k + 1} largest samples must be positive; lower k")
    return x, k


def hill_estimator(samples: np.ndarray, k: int | None = None) -> float:
    """Hill estimate of the tail exponent of a power law.

    Convention: ``alpha`` is the exponent of the survival function,
    ``P(X > x) ~ x ** -alpha``, so the density falls as ``x ** -(alpha + 1)``. With the
    samples sorted descending ``x_(1) >= x_(2) >= ...``,
    ``alpha = k / sum_{i<=k} log(x_(i) / x_(k+1))``.

    Args:
        samples: shape (n,), any order; only the ``k + 1`` largest are used and must
            be positive.
        k: number of upper order statistics; default ``max(5, round(0.1 n))``, capped
            at ``n - 1``.

    Returns:
        The estimate of alpha.

    Raises:
        TwotowerError: too few samples, a bad ``k``, or the ``k + 1`` largest all equal.
    """
    x, k = _check_samples(samples, k)
    alpha = _hill_descending(_largest_descending(x, k + 1), k)
    require(bool(np.isfinite(alpha)),
            f"the {k + 1} largest samples are all equal; the tail has no slope")
    return alpha


def hill_bootstrap(samples: np.ndarray, k: int | None = None, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Hill estimate with a percentile bootstrap confidence interval.

    Resamples the samples with replacement ``n_boot`` times and re-estimates alpha with
    the same ``k`` each time (resamples whose top is all ties are skipped).

    Args:
        samples: shape (n,), as for :func:`hill_estimator`.
        k: number of upper order statistics (default as in :func:`hill_estimator`).
        n_boot: number of bootstrap resamples.
        seed: seed of the resampling generator.
        level: coverage of the interval.

    Returns:
        ``(alpha, ci_low, ci_high)``: the estimate on the full sample and the interval.
    """
    require(n_boot >= 10, f"n_boot must be at least 10, got {n_boot}")
    require(0 < level < 1, f"level must be in (0, 1), got {level}")
    x, k = _check_samples(samples, k)
    alpha = hill_estimator(x, k)

    def alphas(idx: np.ndarray) -> np.ndarray:  # (S, n) resamples -> (S,) alphas
        return np.array([_hill_descending(_largest_descending(x[i], k + 1), k)
                         for i in idx])

    # chunk=x.size: one resample per call of the generator, as this estimator draws
    boots = bootstrap_distribution(x.size, alphas, n_boot, seed, chunk=x.size)
    boots = boots[np.isfinite(boots)]
    require(boots.size > 0, "every bootstrap resample had a tied tail; raise k")
    low, high = percentile_interval(boots, level)
    return alpha, float(low), float(high)


# --- Spectra of input weights ---------------------------------------------------------


def weight_correlation_spectrum(weights: np.ndarray) -> np.ndarray:
    """Eigenvalues of the correlation matrix between a group's input weight vectors.

    Each neuron is one variable and its ``D`` input weights are the observations, so
    the matrix is (G, G). The eigenvalues sum to ``G``; when ``G > D`` at most ``D`` of
    them are non-zero. Round-off negatives are clipped to 0.

    Args:
        weights: shape (G, D), row g = input weights of neuron g.

    Returns:
        Shape (G,), eigenvalues sorted descending.
    """
    w = np.asarray(weights, dtype=float)
    require(w.ndim == 2 and w.shape[0] >= 2 and w.shape[1] >= 2,
            f"weights must be (group_size >= 2, d_in >= 2), got shape {w.shape}")
    require(bool(np.all(np.isfinite(w))), "weights contain NaN or inf")
    require(bool(np.all(w.std(axis=1) > 0)),
            "a neuron has constant input weights, so its correlation is undefined; "
            "leave it out of the group")
    eigenvalues = np.linalg.eigvalsh(np.corrcoef(w))
    return np.clip(eigenvalues, 0.0, None)[::-1]


def default_spectrum_k(n_eigenvalues: int) -> int:
    """Tail size for a spectrum: 10%, but at least 10 (or all but the smallest)."""
    return max(round(0.1 * n_eigenvalues), min(10, n_eigenvalues - 1))


def spectrum_tail_alpha(weights: np.ndarray, k: int | None = None) -> float:
    """Hill tail exponent of :func:`weight_correlation_spectrum` (smaller = heavier).

    A group of a few dozen neurons has only a few dozen eigenvalues, so 10% of them
    would leave 2-3 order statistics. The default ``k`` is therefore 10% of the
    positive eigenvalues but at least 10, and for groups of 11 or fewer all positive
    eigenvalues but the smallest (which serves as the threshold). The estimate is noisy
    for small groups; compare it only with random groups of the same size and the same
    ``k`` (:func:`random_group_baseline`).

    Args:
        weights: shape (G, D), row g = input weights of neuron g.
        k: number of top eigenvalues in the Hill estimate (default above).

    Returns:
        alpha of the eigenvalue tail (convention of :func:`hill_estimator`).
    """
    spectrum = weight_correlation_spectrum(weights)
    positive = spectrum[spectrum > 1e-12 * spectrum[0]]
    require(positive.size >= 3,
            f"only {positive.size} non-zero eigenvalues; use a larger group")
    return hill_estimator(positive, default_spectrum_k(positive.size) if k is None
                          else k)


# --- Co-activation within a group -----------------------------------------------------


@dataclass(frozen=True)
class Coactivation:
    """How much a group of neurons fires together.

    Attributes:
        mean_correlation: mean Pearson correlation over pairs of distinct neurons that
            vary (neurons with constant activation have no correlation and are skipped).
        n_components: principal components needed to explain ``variance_share`` of the
            variance of the centred activations.
        effective_dimensionality: ``n_components / group_size``; 1/G when all neurons
            move together, near 1 when they are independent.
        group_size: G, including constant neurons.
        n_constant: neurons whose activation never changed over the samples.
    """

    mean_correlation: float
    n_components: int
    effective_dimensionality: float
    group_size: int
    n_constant: int


def coactivation(acts: np.ndarray, variance_share: float = 0.95) -> Coactivation:
    """Mean pairwise correlation and PCA effective dimensionality of a group.

    PCA runs on centred, unscaled activations (as ``sklearn.decomposition.PCA`` does),
    so a neuron with a larger spread weighs more.

    Args:
        acts: shape (N, G), activation of each of the G neurons on N samples.
        variance_share: share of variance the components must explain.

    Returns:
        The :class:`Coactivation`.
    """
    a = np.asarray(acts, dtype=float)
    require(a.ndim == 2 and a.shape[0] >= 2 and a.shape[1] >= 2,
            f"acts must be (n_samples >= 2, group_size >= 2), got shape {a.shape}")
    require(bool(np.all(np.isfinite(a))), "acts contain NaN or inf")
    require(0 < variance_share <= 1, f"variance_share must be in (0, 1], got "
                                     f"{variance_share}")
    centred = a - a.mean(axis=0)
    varies = centred.std(axis=0) > 1e-12 * (np.abs(a).max() + 1e-300)
    require(int(varies.sum()) >= 2, "fewer than two neurons of the group ever change "
                                    "activation; use more samples or another group")
    corr = np.corrcoef(centred[:, varies], rowvar=False)
    off_diagonal = corr[~np.eye(corr.shape[0], dtype=bool)]

    variances = np.linalg.svd(centred, compute_uv=False) ** 2
    explained = np.cumsum(variances) / variances.sum()
    # the tolerance keeps a share that is exactly 0.95 from needing one more component
    n_components = int(np.searchsorted(explained, variance_share - 1e-9) + 1)
    return Coactivation(
        mean_correlation=float(off_diagonal.mean()),
        n_components=n_components,
        effective_dimensionality=n_components / a.shape[1],
        group_size=int(a.shape[1]),
        n_constant=int((~varies).sum()),
    )


# --- Random groups of equal size ------------------------------------------------------


def random_group_baseline(stat_fn: Callable[[np.ndarray], float],
                          population: np.ndarray, group_size: int, n_groups: int,
                          seed: int = 0) -> np.ndarray:
    """A statistic on random groups drawn from a population of neuron indices.

    Each group is ``group_size`` distinct indices drawn uniformly from ``population``
    (groups are independent of one another). Pass as population the neurons the real
    group should be compared with, e.g. all neurons of the layer, or those outside it.

    Args:
        stat_fn: maps a group, shape (group_size,) of indices, to a number, e.g.
            ``lambda g: spectrum_tail_alpha(w_in[g])``.
        population: shape (P,), the indices to draw from.
        group_size: neurons per group.
        n_groups: number of random groups.
        seed: seed of the generator.

    Returns:
        Shape (n_groups,), the statistic of each random group.
    """
    pool = np.asarray(population).ravel()
    require(1 <= group_size <= pool.size,
            f"group_size must be in [1, {pool.size}] for a population of {pool.size}, "
            f"got {group_size}")
    require(n_groups >= 1, f"n_groups must be at least 1, got {n_groups}")
    rng = np.random.default_rng(seed)
    return np.array([float(stat_fn(rng.choice(pool, size=group_size, replace=False)))
                     for _ in range(n_groups)])


def empirical_p_value(observed: float, baseline: np.ndarray,
                      alternative: str = "greater") -> float:
    """Share of random groups at least as extreme as the observed group.

    Uses ``(1 + count) / (1 + n)`` so the p-value is never 0 with a finite baseline.

    Args:
        observed: the statistic of the real group.
        baseline: shape (n,), the statistic of random groups.
        alternative: ``"greater"`` (observed is unusually large) or ``"less"``.
    """
    base = np.asarray(baseline, dtype=float).ravel()
    require(base.size >= 1, "baseline is empty; draw some random groups first")
    require(alternative in ("greater", "less"),
            f"alternative must be 'greater' or 'less', got {alternative!r}")
    return permutation_p(observed, base, alternative, tolerance=0.0)


# --- Means over positions that come in clusters ---------------------------------------


def clustered_means(values: np.ndarray, labels: np.ndarray, clusters: np.ndarray,
                    n_labels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of ``values`` per label, with a covariance over clusters, not positions.

    Positions of one window (a passage of text) share their context, so their values
    are correlated and ``std / sqrt(n_positions)`` understates the standard error by
    the square root of the design effect, about ``1 + (m - 1) * icc`` for windows of
    ``m`` positions. The cluster-robust (sandwich) covariance sums each cluster's
    residuals first: with ``u[l, g] = sum over the positions i of cluster g with label
    l of (v_i - mean_l) / n_l``, ``cov[a, b] = c_a * c_b * sum_g u[a, g] u[b, g]``,
    where ``c_l = sqrt(G_l / (G_l - 1))`` for the ``G_l`` clusters that hold label l.
    With one position per cluster it is exactly ``std(ddof=1) ** 2 / n``. Labels that
    share clusters (rare and common targets of one window) get their covariance, so
    the standard error of a difference of two means is right too.

    Args:
        values: (N,) one value per position, e.g. ``ll_A - ll_B``.
        labels: (N,) label of each position; labels outside ``[0, n_labels)`` are left
            out (e.g. -1 for none).
        clusters: (N,) cluster of each position, e.g. the index of its window; must
            be >= 0 at the positions that have a label.
        n_labels: number of labels.

    Returns:
        ``(mean, cov, count)`` of shapes (L,), (L, L) and (L,): mean is NaN for a label
        with no position, and the rows and columns of cov are NaN for a label held by
        fewer than two clusters.
    """
    v, labels = np.asarray(values, dtype=float), np.asarray(labels)
    clusters = np.asarray(clusters)
    require(v.ndim == 1 and labels.shape == v.shape and clusters.shape == v.shape,
            f"values, labels and clusters must be (N,) each, got shapes {v.shape}, "
            f"{labels.shape} and {clusters.shape}")
    keep = (labels >= 0) & (labels < n_labels)
    v, label, cluster = v[keep], labels[keep].astype(np.int64), clusters[keep]
    require(bool(np.all(cluster >= 0)), "a labelled position has cluster id < 0 (its "
                                        "window is unknown); score it again")
    _, cluster = np.unique(cluster, return_inverse=True)
    n_clusters = int(cluster.max()) + 1 if cluster.size else 0
    count = np.bincount(label, minlength=n_labels).astype(float)
    cell = label * n_clusters + cluster.ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(label, weights=v, minlength=n_labels) / count
        u = np.bincount(cell, weights=(v - mean[label]) / count[label],
                        minlength=n_labels * n_clusters).reshape(n_labels, n_clusters)
        held = (np.bincount(cell, minlength=n_labels * n_clusters)
                .reshape(n_labels, n_clusters) > 0).sum(axis=1)
        scale = np.sqrt(held / (held - 1.0))
        cov = scale[:, None] * (u @ u.T) * scale[None, :]
    few = held < 2
    cov[few, :] = np.nan
    cov[:, few] = np.nan
    return mean, cov, count
