"""The sorted |influence| curve of a layer's neurons: three regimes, and a plateau test.

Introduced in the chapter on rare-token neurons (Liu, Wang & Li 2025). Sort the neurons
by |influence| and plot log value against log rank: Liu et al. describe a plateau of a
few very influential neurons, then a power law, then a rapid decay. Everything here
takes plain arrays, so the same code serves one tower, two towers, or synthetic data.

* :func:`fit_three_regimes` -- a continuous three-segment line through the curve, for
  drawing it and for naming the neurons of each regime.
* :func:`plateau_test` -- does the curve need a plateau at all? A power law with a
  rapid decay is the null; a plateau counts only when a model with one wins by BIC
  (calibrated on samples of the null) *and* its neurons lie above the power law's
  extrapolation to the top ranks. :func:`plateau_table` lists tests side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize

from twotower.analysis.stats import permutation_p
from twotower.errors import require

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


def _candidate_ranks(n: int) -> np.ndarray:
    """Log-spaced ranks where a grid search tries a breakpoint, for ``n`` points."""
    lo, hi = MIN_POINTS_PER_REGIME, n - MIN_POINTS_PER_REGIME
    return np.unique(np.round(np.geomspace(lo, hi, _GRID_SIZE)).astype(int))


def _grid_search(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best pair of breakpoints among log-spaced candidate ranks.

    All pairs are solved at once: the 4x4 normal equations of a pair are a sub-matrix
    of one Gram matrix of [1, x, every candidate hinge].
    """
    n = x.size
    ranks = _candidate_ranks(n)
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


# --- Is there a plateau? The curve without one is the null ---------------------------


@dataclass(frozen=True)
class TailFit:
    """Power law, then rapid decay: a continuous two-segment line through (log rank,
    log value) of the neurons from rank ``first_rank`` on.

    Attributes:
        first_rank: the first rank fitted (1: the whole curve).
        breakpoint_rank: where the power law turns into the rapid decay, as a rank.
        breakpoint_log_rank: the same breakpoint as fitted, in natural-log rank.
        slopes: slopes of the power law and of the decay (d log v / d log r).
        intercept: log value of the power law's line at log rank 0 (rank 1).
        rss: residual sum of squares of log value over the fitted ranks.
    """

    first_rank: int
    breakpoint_rank: int
    breakpoint_log_rank: float
    slopes: tuple[float, float]
    intercept: float
    rss: float

    def predict(self, log_rank: np.ndarray | float) -> np.ndarray:
        """Fitted log value at natural-log ranks (any shape); before ``first_rank``,
        the power law extrapolated to the top ranks."""
        x = np.asarray(log_rank, dtype=float)
        s1, s2 = self.slopes
        return (self.intercept + s1 * x
                + (s2 - s1) * np.maximum(x - self.breakpoint_log_rank, 0.0))


@dataclass(frozen=True)
class PlateauTest:
    """A plateau model of the sorted |influence| curve against the null without one.

    The null is a power law and a rapid decay over every rank (4 parameters: intercept,
    two slopes, one breakpoint). The plateau model gives the top ``plateau_size``
    neurons a line of their own and fits power law and decay to the rest (7
    parameters: the plateau's intercept, slope and end, and the tail's four).

    Attributes:
        null: the fit without a plateau.
        tail: the power law and decay of the plateau model (from rank
            ``plateau_size + 1``).
        plateau_size: neurons in the plateau of the plateau model, ranks 1 to it.
        plateau_line: ``(intercept, slope)`` of the plateau's own line.
        delta_bic: BIC of the null minus BIC of the plateau model (Gaussian residuals
            of log value); > 0 favours the plateau.
        excess: mean over the plateau's neurons of their log value minus the tail's
            power law extrapolated to their ranks (natural log; > 0: above it).
        p_value: ``(1 + m) / (1 + n_null)`` for the ``m`` samples drawn from the null
            whose ``delta_bic`` (with a positive excess) reaches the observed one; 1
            when the plateau model loses or lies below the power law.
        n_null: samples drawn from the null for ``p_value`` (0: none were needed).
        has_plateau: ``delta_bic > 0``, ``excess > 0`` and ``p_value <= level``.
        n_fitted: number of positive values that were fitted.
        n_dropped: number of zero or negative values left out.
    """

    null: TailFit
    tail: TailFit
    plateau_size: int
    plateau_line: tuple[float, float]
    delta_bic: float
    excess: float
    p_value: float
    n_null: int
    has_plateau: bool
    n_fitted: int
    n_dropped: int


def _suffix_sums(a: np.ndarray) -> np.ndarray:
    """Sums over the points from index k on, for every k: (n, ...) -> (n, ...)."""
    return np.cumsum(a[::-1], axis=0)[::-1]


def _tail_rss_table(x: np.ndarray, y: np.ndarray,
                    knots: np.ndarray) -> np.ndarray:
    """RSS of power law + decay on the points from index k on, for every k and
    candidate knot: (n, C), inf where a segment would get too few points.

    Every (start, knot) pair is solved at once from suffix sums of the columns
    ``[1, x, hinge at the knot]``.
    """
    n = x.size
    hinge = np.maximum(x[:, None] - knots[None, :], 0.0)  # (n, C)
    one, xs = np.ones_like(hinge), np.broadcast_to(x[:, None], hinge.shape)
    columns = (one, xs, hinge)
    gram = np.stack([np.stack([_suffix_sums(a * b) for b in columns], -1)
                     for a in columns], -1)  # (n, C, 3, 3)
    moments = np.stack([_suffix_sums(a * y[:, None]) for a in columns], -1)
    before = np.searchsorted(x, knots, side="right")[None, :] - np.arange(n)[:, None]
    valid = (before >= MIN_POINTS_PER_REGIME) & (n - before - np.arange(n)[:, None]
                                                 >= MIN_POINTS_PER_REGIME)
    gram[~valid] = np.eye(3)
    coef = np.linalg.solve(gram, moments[..., None])[..., 0]
    rss = _suffix_sums(y * y)[:, None] - np.sum(coef * moments, axis=-1)
    return np.where(valid, np.maximum(rss, 0.0), np.inf)


def _line_rss_prefix(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Least-squares line through the first k points, for every k = 0..n:
    ``(intercept, slope, rss)``, each (n + 1,), NaN where k < 2."""
    def prefix(a):
        return np.concatenate([[0.0], np.cumsum(a)])
    k, sx, sy = prefix(np.ones_like(x)), prefix(x), prefix(y)
    sxx, sxy, syy = prefix(x * x), prefix(x * y), prefix(y * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (k * sxy - sx * sy) / (k * sxx - sx * sx)
        intercept = (sy - slope * sx) / k
    rss = syy - intercept * sy - slope * sxy
    return intercept, slope, np.maximum(rss, 0.0)


def _fit_tail(x: np.ndarray, y: np.ndarray, start: int, knots: np.ndarray,
              best: int) -> TailFit:
    """Power law + decay on the points from ``start`` on: the grid knot ``best``,
    refined continuously between its neighbours on the grid."""
    xt, yt = x[start:], y[start:]

    def line(b: float) -> tuple[np.ndarray, float]:  # coefficients and RSS at knot b
        design = np.stack([np.ones_like(xt), xt, np.maximum(xt - b, 0.0)], axis=1)
        coef, *_ = np.linalg.lstsq(design, yt, rcond=None)
        return coef, float(np.sum((design @ coef - yt) ** 2))

    def rss(b: float) -> float:
        return line(b)[1]

    lo = max(knots[max(best - 1, 0)], xt[MIN_POINTS_PER_REGIME - 1])
    hi = min(knots[min(best + 1, knots.size - 1)], xt[-MIN_POINTS_PER_REGIME - 1])
    knot = float(knots[best])
    if lo < hi:
        refined = optimize.minimize_scalar(rss, bounds=(lo, hi), method="bounded",
                                           options={"xatol": 1e-5})
        if refined.fun < rss(knot):
            knot = float(refined.x)
    coef, tail_rss = line(knot)
    return TailFit(first_rank=start + 1, breakpoint_rank=int(round(np.exp(knot))),
                   breakpoint_log_rank=knot,
                   slopes=(float(coef[1]), float(coef[1] + coef[2])),
                   intercept=float(coef[0]), rss=tail_rss)


def _bic(rss: float, n: int, n_parameters: int) -> float:
    """BIC of a least-squares fit with Gaussian residuals (variance profiled out)."""
    return n * np.log(max(rss, np.finfo(float).tiny) / n) + n_parameters * np.log(n)


def _compare(x: np.ndarray, y: np.ndarray) -> tuple:
    """Both fits of one sorted curve: ``(null, tail, plateau_size, plateau_line,
    delta_bic, excess)`` (see :class:`PlateauTest`)."""
    n = x.size
    y0 = y - y.mean()  # the fits have intercepts; centring keeps the sums small
    knots = np.log(_candidate_ranks(n).astype(float))
    tail_rss = _tail_rss_table(x, y0, knots)  # (n, C)
    intercept, slope, head_rss = _line_rss_prefix(x, y0)
    total = head_rss[:n, None] + tail_rss
    total[:MIN_POINTS_PER_REGIME] = np.inf  # a plateau needs points of its own
    k, c = (int(i) for i in np.unravel_index(int(np.argmin(total)), total.shape))
    null = _fit_tail(x, y, 0, knots, int(np.argmin(tail_rss[0])))
    tail = _fit_tail(x, y, k, knots, c)
    head = (float(intercept[k] + y.mean()), float(slope[k]))
    rss = float(np.sum((head[0] + head[1] * x[:k] - y[:k]) ** 2)) + tail.rss
    delta_bic = float(_bic(null.rss, n, 4) - _bic(rss, n, 7))
    excess = float(np.mean(y[:k] - tail.predict(x[:k])))
    return null, tail, k, head, delta_bic, excess


def _evidence(delta_bic: float, excess: float) -> float:
    """The statistic of the test: ``delta_bic`` for a winning plateau above the power
    law, -inf otherwise."""
    return delta_bic if delta_bic > 0 and excess > 0 else -np.inf


def plateau_test(values: np.ndarray, n_null: int = 99, seed: int = 0,
                 level: float = 0.05) -> PlateauTest:
    """Is there a plateau of neurons above the power law of the sorted |influence|?

    Fits the null (power law and rapid decay, no plateau) and the plateau model (a
    line of its own for the top neurons, then power law and decay) by least squares
    over a grid of breakpoints (every plateau end, log-spaced knots, each knot then
    refined continuously), and compares them by BIC, counting every breakpoint as a
    parameter. The sorted curve of any light-tailed sample bends down at its top on
    log-log axes (|N(0, 1)| does), and a continuous three-segment line calls that bend
    a flat plateau; so the plateau counts only when its neurons lie *above* the power
    law of the other neurons extrapolated to their ranks: more influential than the
    power law predicts.

    Sorted values are not independent Gaussian residuals around a line (the top few
    of a power-law sample scatter widely), so BIC alone prefers the plateau model
    even on samples from the null. The test is therefore calibrated: ``n_null``
    samples of the same size are drawn from the fitted null (the values at ranks
    ``n * U`` on its line, U uniform) and tested the same way; ``p_value`` is the share
    of them with at least the observed evidence.

    Args:
        values: shape (n,), |influence| per neuron in any order. Zeros and negatives
            are dropped (their count is kept in ``n_dropped``).
        n_null: samples drawn from the null (only when the plateau model wins and
            lies above the power law; otherwise ``p_value`` is 1 without them).
        seed: seed of those samples.
        level: the largest ``p_value`` that still counts as a plateau.

    Returns:
        The :class:`PlateauTest`.

    Raises:
        TwotowerError: fewer than ``MIN_POSITIVE_VALUES`` positive values.
    """
    x, y, n_dropped = log_rank_curve(values)
    n = x.size
    require(n >= MIN_POSITIVE_VALUES,
            f"need at least {MIN_POSITIVE_VALUES} positive values to test for a "
            f"plateau, got {n}; pass more neurons")
    require(n_null >= 1, f"n_null must be at least 1, got {n_null}")
    require(0 < level < 1, f"level must be in (0, 1), got {level}")
    null, tail, k, head, delta_bic, excess = _compare(x, y)
    observed, p_value, drawn = _evidence(delta_bic, excess), 1.0, 0
    if np.isfinite(observed):
        rng = np.random.default_rng(seed)
        evidence = np.empty(n_null)
        for i in range(n_null):
            sample = null.predict(np.log(n * (1.0 - rng.random(n))))
            evidence[i] = _evidence(*_compare(x, np.sort(sample)[::-1])[4:])
        p_value = permutation_p(observed, evidence, "greater", tolerance=0.0)
        drawn = n_null
    return PlateauTest(null=null, tail=tail, plateau_size=k, plateau_line=head,
                       delta_bic=delta_bic, excess=excess, p_value=float(p_value),
                       n_null=drawn,
                       has_plateau=bool(np.isfinite(observed) and p_value <= level),
                       n_fitted=n, n_dropped=n_dropped)


def plateau_table(tests: Mapping[tuple, PlateauTest],
                  fits: Mapping[tuple, RegimeFit] | None = None,
                  names: Sequence[str] = ("curve", "tower")) -> pd.DataFrame:
    """One row per curve: its key, its three-regime fit, and its plateau test.

    Args:
        tests: a :class:`PlateauTest` per curve, keyed by tuples such as
            ``(curve, tower)``.
        fits: the :class:`RegimeFit` of each curve, same keys (optional; adds the
            breakpoints and slopes drawn in the figures).
        names: column names of the parts of a key.

    Returns:
        Columns ``names``, then (with ``fits``) ``breakpoints (ranks)`` and ``slopes``,
        then ``plateau size``, ``ΔBIC``, ``excess (log)``, ``p`` and ``plateau``.
    """
    rows = []
    for key, test in tests.items():
        row = dict(zip(names, key, strict=True))
        if fits is not None:
            row["breakpoints (ranks)"] = fits[key].breakpoint_ranks
            row["slopes"] = tuple(round(s, 2) for s in fits[key].slopes)
        rows.append(row | {"plateau size": test.plateau_size, "ΔBIC": test.delta_bic,
                           "excess (log)": test.excess, "p": test.p_value,
                           "plateau": test.has_plateau})
    return pd.DataFrame(rows)
