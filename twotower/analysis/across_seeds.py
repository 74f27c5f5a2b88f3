"""Stability across seeds, with seeds as the unit: every pair, an interval, a null.

Introduced in chapter 9 (*Is the preference stable?*); chapter 11's scorecard reads it.

Two runs that agree could be lucky; what "stable across seeds" claims is that a new
seed would agree too. So the statistic of a condition (a family, or a control) is
computed from ALL its seeds at once:

* every pair of seeds gets the disattenuated cross-run correlation ``r_x`` of
  :func:`twotower.analysis.stability.compare_runs` (halves of different text on each
  side, divided by both runs' split-half reliabilities), on the tokens all runs
  measure;
* tower labels are arbitrary, so the runs are sign-aligned together: each run gets
  the sign of its entry in the leading eigenvector of the ``r_x`` matrix, and the
  statistic is the mean aligned ``r_x`` over pairs;
* the interval is a jackknife over seeds (leave one seed out), so it says what
  another set of seeds could give, not what other tokens of these runs could give;
* the null repeats the WHOLE procedure, alignment included, on runs whose tokens are
  shuffled against each other, since aligning signs makes even unrelated runs agree
  a little.

:func:`stability_difference` compares two conditions (the two-tower model against a
control run at as many seeds), which is claim 2's primary test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twotower.analysis.stability import RunPreference, disattenuated, half_preferences
from twotower.analysis.stats import permutation_p
from twotower.errors import require

MIN_SEEDS = 3  # fewer: no interval over seeds (a pair is one draw)


def half_stack(runs: Sequence[RunPreference], centred: bool = True
               ) -> tuple[np.ndarray, pd.Index]:
    """(R, 2, T) half preferences of R runs on the T tokens all of them measure."""
    tables = [half_preferences(run, centred) for run in runs]
    tokens = tables[0].index
    for table in tables[1:]:
        tokens = tokens.intersection(table.index)
    stack = np.stack([t.loc[tokens, ["half0", "half1"]].to_numpy().T for t in tables])
    return stack, tokens


def rx_matrix(halves: np.ndarray) -> np.ndarray:
    """Signed r_x (:func:`twotower.analysis.stability.disattenuated`) of every pair of
    runs from (R, 2, T) halves; NaN on the diagonal and where a run's split-half r is
    not positive."""
    out = disattenuated(halves[:, None, 0], halves[:, None, 1],
                        halves[None, :, 0], halves[None, :, 1])
    np.fill_diagonal(out, np.nan)
    return out


def align_signs(matrix: np.ndarray) -> np.ndarray:
    """+1/-1 per run: the signs of the leading eigenvector of the r_x matrix (unit
    diagonal, missing entries 0), first run +1."""
    m = np.nan_to_num(matrix, nan=0.0)
    np.fill_diagonal(m, 1.0)
    _, vectors = np.linalg.eigh(m)
    signs = np.where(vectors[:, -1] < 0, -1.0, 1.0)
    return signs * signs[0]


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def aligned_mean(matrix: np.ndarray, signs: np.ndarray,
                 keep: np.ndarray | None = None) -> float:
    """Mean of the sign-aligned r_x over the pairs of the runs in ``keep``."""
    keep = np.ones(len(signs), bool) if keep is None else keep
    i, j = _pairs(len(signs))
    use = keep[i] & keep[j]
    values = (signs[i] * signs[j] * matrix[i, j])[use]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


@dataclass(frozen=True)
class SeedStability:
    """The seed-level stability of one condition (see the module docstring).

    Attributes:
        label: what the runs are (e.g. "causal" or "independent").
        seeds: the seed of each run.
        matrix: (R, R) signed r_x of every pair (NaN diagonal).
        signs: +1/-1 per run (the alignment).
        mean: mean aligned r_x over pairs.
        se: jackknife standard error over seeds (NaN with fewer than
            :data:`MIN_SEEDS` runs).
        low: lower end of the t interval over seeds (NaN likewise).
        high: upper end of that interval.
        p_value: share of shuffled repeats of the procedure at least as large.
        n_tokens: tokens all runs measure in both halves.
    """

    label: str
    seeds: tuple[int, ...]
    matrix: np.ndarray
    signs: np.ndarray
    mean: float
    se: float
    low: float
    high: float
    p_value: float
    n_tokens: int

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)


def jackknife(matrix: np.ndarray, signs: np.ndarray, level: float = 0.95
              ) -> tuple[float, float, float]:
    """Jackknife over runs of :func:`aligned_mean`: ``(se, low, high)`` with a t
    interval of ``R - 1`` degrees of freedom (NaN for fewer than :data:`MIN_SEEDS`)."""
    n = len(signs)
    if n < MIN_SEEDS:
        return (float("nan"),) * 3
    full = aligned_mean(matrix, signs)
    leave_out = np.array([aligned_mean(matrix, signs, np.arange(n) != k)
                          for k in range(n)])
    se = float(np.sqrt((n - 1) / n * np.sum((leave_out - leave_out.mean()) ** 2)))
    t = stats.t.ppf((1 + level) / 2, n - 1)
    return se, full - t * se, full + t * se


def seed_stability(runs: Sequence[RunPreference], label: str = "", *,
                   centred: bool = True, n_perm: int = 1000, seed: int = 0
                   ) -> SeedStability:
    """:class:`SeedStability` of ``runs`` (one condition, different seeds)."""
    require(len(runs) >= 2, f"stability across seeds needs at least 2 runs, got "
            f"{len(runs)}")
    halves, tokens = half_stack(runs, centred)
    matrix = rx_matrix(halves)
    signs = align_signs(matrix)
    mean = aligned_mean(matrix, signs)
    se, low, high = jackknife(matrix, signs)
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for k in range(n_perm):  # shuffle every run but the first against the others
        shuffled = np.stack([h if r == 0 else h[:, rng.permutation(h.shape[1])]
                             for r, h in enumerate(halves)])
        m = rx_matrix(shuffled)
        null[k] = aligned_mean(m, align_signs(m))
    # one-sided, no tie tolerance: the null repeats the very same computation
    p = permutation_p(mean, null, "greater", tolerance=0.0) if n_perm and \
        np.isfinite(mean) else float("nan")
    return SeedStability(label or runs[0].family, tuple(r.seed for r in runs), matrix,
                         signs, mean, se, low, high, p, int(len(tokens)))


@dataclass(frozen=True)
class Difference:
    """``x.mean - y.mean`` of two :class:`SeedStability` with its interval over seeds
    (independent seed sets: the jackknife variances add; t with the smaller set's
    degrees of freedom) and a two-sided p-value."""

    value: float
    se: float
    low: float
    high: float
    p_value: float


def stability_difference(x: SeedStability, y: SeedStability,
                         level: float = 0.95) -> Difference:
    """How much more stable across seeds ``x`` is than ``y`` (e.g. the two-tower
    model than the independent-towers control)."""
    value = x.mean - y.mean
    se = float(np.hypot(x.se, y.se))
    df = min(x.n_seeds, y.n_seeds) - 1
    if not (np.isfinite(se) and se > 0 and df >= 1):
        return Difference(value, float("nan"), float("nan"), float("nan"), float("nan"))
    t = stats.t.ppf((1 + level) / 2, df)
    p = float(2 * stats.t.sf(abs(value) / se, df))
    return Difference(value, se, value - t * se, value + t * se, p)


def pair_table(result: SeedStability) -> pd.DataFrame:
    """Every pair of seeds of one condition: signed and aligned r_x."""
    i, j = _pairs(result.n_seeds)
    signed = result.matrix[i, j]
    return pd.DataFrame({"condition": result.label,
                         "seed a": np.asarray(result.seeds)[i],
                         "seed b": np.asarray(result.seeds)[j],
                         "r_x": signed,
                         "aligned r_x": result.signs[i] * result.signs[j] * signed})
