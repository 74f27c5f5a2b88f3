"""Statistics of neuron populations that need no model: curve fits and spectra.

Introduced in the chapter on rare-token neurons (Liu, Wang & Li 2025). Everything
here takes plain arrays (influences, activations, weights), so the same code serves one
tower, two towers, or synthetic data in a test. The model-dependent parts (ablation
influence through hooks) live elsewhere and hand their numbers to these functions.

* :func:`fit_three_regimes` -- plateau / power law / rapid decay of the sorted
  |influence| curve on log-log axes, with two fitted breakpoints.
* :func:`hill_estimator`, :func:`hill_bootstrap` -- tail exponent of a power law.
* :func:`weight_correlation_spectrum`, :func:`spectrum_tail_alpha` -- how heavy-tailed
  the eigenvalues of a group's input-weight correlation matrix are.
* :func:`coactivation` -- do the neurons of a group fire together?
* :func:`random_group_baseline`, :func:`empirical_p_value` -- the same statistic on
  random groups of equal size, for "against random groups" comparisons.

Letters in shapes: ``N`` samples (tokens), ``G`` neurons in a group, ``D`` input width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import optimize

from .errors import require

REGIMES = ("plateau", "power_law", "rapid_decay")
MIN_POINTS_PER_REGIME = 3  # fewer points cannot pin down a segment's slope and knot
MIN_POSITIVE_VALUES = 10
_GRID_SIZE = 64  # candidate breakpoints per axis before the continuous refinement


# --- Three regimes of the sorted influence curve --------------------------------------


@dataclass(frozen=True)
class RegimeFit:
    """A continuous three-segment line through (log rank, log value).

    Ranks count from 1 (the most influential neuron). A neuron of rank ``r`` is in the
    plateau when ``log r <= breakpoint_log_ranks[0]``, in the power law when it is
    between the two breakpoints, and in the rapid decay after the second one.

    Attributes:
        breakpoint_ranks: the two breakpoints rounded to ranks, ``(r1, r2)``, r1 < r2.
        breakpoint_log_ranks: the same breakpoints as fitted, in natural-log rank.
        slopes: slopes of the plateau, power-law and decay segments (d log v / d log r).
        shares: fraction of the fitted (positive) neurons in each regime; sums to 1.
        intercept: log value of the line at log rank 0 (rank 1).
        rss: residual sum of squares of log value.
        n_fitted: number of positive values that were fitted.
        n_dropped: number of zero or negative values left out (they cannot be logged).
    """

    breakpoint_ranks: tuple[int, int]
    breakpoint_log_ranks: tuple[float, float]
    slopes: tuple[float, float, float]
    shares: tuple[float, float, float]
    intercept: float
    rss: float
    n_fitted: int
    n_dropped: int

    def predict(self, log_rank: np.ndarray | float) -> np.ndarray:
        """Fitted log value at the given natural-log ranks (any shape), for plotting."""
        x = np.asarray(log_rank, dtype=float)
        b1, b2 = self.breakpoint_log_ranks
        s1, s2, s3 = self.slopes
        return (self.intercept + s1 * x + (s2 - s1) * np.maximum(x - b1, 0.0)
                + (s3 - s2) * np.maximum(x - b2, 0.0))


def log_rank_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort positive values descending and take logs of rank and value.

    Args:
        values: shape (n,), e.g. |influence| per neuron, in any order.

    Returns:
        ``(log_rank, log_value, n_dropped)``: two arrays of shape (n_positive,) with
        ranks counted from 1, and how many zero or negative values were left out.
    """
    v = np.asarray(values, dtype=float)
    require(v.ndim == 1, f"values must be 1-D (one per neuron), got shape {v.shape}")
    require(bool(np.all(np.isfinite(v))), "values contain NaN or inf; drop them first")
    positive = np.sort(v[v > 0])[::-1]
    log_rank = np.log(np.arange(1, positive.size + 1, dtype=float))
    return log_rank, np.log(positive), int(v.size - positive.size)


def _design(x: np.ndarray, b1: float, b2: float) -> np.ndarray:
    """Columns [1, x, hinge at b1, hinge at b2] of the continuous piecewise line."""
    return np.stack([np.ones_like(x), x, np.maximum(x - b1, 0.0),
                     np.maximum(x - b2, 0.0)], axis=1)


def _regime_counts(x: np.ndarray, b1: float, b2: float) -> np.ndarray:
    """Points in the plateau, power law and decay, shape (3,)."""
    return np.array([np.sum(x <= b1), np.sum((x > b1) & (x <= b2)), np.sum(x > b2)])


def _rss_at(x: np.ndarray, y: np.ndarray, b1: float, b2: float) -> float:
    """Least-squares residual for given breakpoints; inf if a regime is too small."""
    if not (b1 < b2 and np.all(_regime_counts(x, b1, b2) >= MIN_POINTS_PER_REGIME)):
        return np.inf
    design = _design(x, b1, b2)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.sum((design @ coef - y) ** 2))


def _grid_search(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best pair of breakpoints among log-spaced candidate ranks.

    All pairs are solved at once: the 4x4 normal equations of a pair are a sub-matrix
    of one Gram matrix of [1, x, every candidate hinge].
    """
    n = x.size
    lo, hi = MIN_POINTS_PER_REGIME, n - MIN_POINTS_PER_REGIME
    ranks = np.unique(np.round(np.geomspace(lo, hi, _GRID_SIZE)).astype(int))
    knots = np.log(ranks.astype(float))
    columns = np.vstack([np.ones_like(x), x,
                         np.maximum(x[None, :] - knots[:, None], 0.0)])  # (2 + C, n)
    gram, moments = columns @ columns.T, columns @ y

    i, j = np.triu_indices(ranks.size, k=1)
    keep = ((ranks[j] - ranks[i] >= MIN_POINTS_PER_REGIME)
            & (n - ranks[j] >= MIN_POINTS_PER_REGIME))
    i, j = i[keep], j[keep]
    require(i.size > 0, f"too few values ({n}) to place two breakpoints")
    picked = np.stack([np.zeros_like(i), np.ones_like(i), 2 + i, 2 + j], axis=1)
    pair_gram = gram[picked[:, :, None], picked[:, None, :]]  # (P, 4, 4)
    pair_moments = moments[picked]  # (P, 4)
    coef = np.linalg.solve(pair_gram, pair_moments[:, :, None])[:, :, 0]
    rss = y @ y - np.sum(coef * pair_moments, axis=1)
    best = int(np.argmin(rss))
    return float(knots[i[best]]), float(knots[j[best]])


def fit_three_regimes(values: np.ndarray) -> RegimeFit:
    """Fit plateau, power law and rapid decay to a sorted |influence| curve.

    On axes (log rank, log value) the model is a continuous line of three segments,
    each with its own fitted slope, joined at two breakpoints ``b1 < b2``. For fixed
    breakpoints the slopes are ordinary least squares; the breakpoints are chosen by
    a grid search over log-spaced ranks, then refined continuously by Nelder-Mead from
    the best grid pair. Both steps are deterministic. Every regime keeps at least
    ``MIN_POINTS_PER_REGIME`` neurons.

    Every positive value weighs the same in the fit, so the many neurons of the tail
    dominate the residual; the plateau is still found because it bends the curve.

    Args:
        values: shape (n,), |influence| per neuron in any order. Zeros and negatives
            are dropped (their count is kept in ``n_dropped``).

    Returns:
        The :class:`RegimeFit`.

    Raises:
        TwotowerError: fewer than ``MIN_POSITIVE_VALUES`` positive values.
    """
    x, y, n_dropped = log_rank_curve(values)
    require(x.size >= MIN_POSITIVE_VALUES,
            f"need at least {MIN_POSITIVE_VALUES} positive values to fit three "
            f"regimes, got {x.size}; pass more neurons")
    b1, b2 = _grid_search(x, y)
    refined = optimize.minimize(lambda b: _rss_at(x, y, b[0], b[1]), x0=[b1, b2],
                                method="Nelder-Mead",
                                options={"xatol": 1e-4, "fatol": 1e-10, "maxiter": 400})
    if np.isfinite(refined.fun) and refined.fun < _rss_at(x, y, b1, b2):
        b1, b2 = (float(b) for b in refined.x)

    design = _design(x, b1, b2)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    intercept, s1, d1, d2 = (float(c) for c in coef)
    shares = _regime_counts(x, b1, b2) / x.size
    return RegimeFit(
        breakpoint_ranks=(int(round(np.exp(b1))), int(round(np.exp(b2)))),
        breakpoint_log_ranks=(b1, b2),
        slopes=(s1, s1 + d1, s1 + d1 + d2),
        shares=(float(shares[0]), float(shares[1]), float(shares[2])),
        intercept=intercept,
        rss=float(np.sum((design @ coef - y) ** 2)),
        n_fitted=int(x.size),
        n_dropped=n_dropped,
    )


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
    rng = np.random.default_rng(seed)
    boots = np.array([_hill_descending(_largest_descending(
        x[rng.integers(0, x.size, x.size)], k + 1), k) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    require(boots.size > 0, "every bootstrap resample had a tied tail; raise k")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail])
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
    extreme = base >= observed if alternative == "greater" else base <= observed
    return float((1 + extreme.sum()) / (1 + base.size))
