"""The statistics every instrument shares: bootstrap, permutation p, Holm, effect sizes.

Introduced in chapter 2 (*A language with a planted division*), which resamples tokens
and shuffles labels to score a planted split; chapter 7 (*Reading each tower alone*)
bootstraps mean losses, chapter 9 (*Is the preference stable?*) resamples tokens for
every correlation, chapter 10 (*Syntax or semantics?*) compares word classes by effect
sizes, and chapter 11 (*The replication scorecard*) corrects all p-values together by
Holm's procedure.

Each idea has one function here, and every instrument of the package calls it:

* :func:`bootstrap_distribution` draws the resamples (units with replacement, from one
  seeded generator) and :func:`percentile_interval` reads an interval off them;
  :func:`bootstrap_interval` is the two together. A statistic is *vectorised*: it maps
  an ``(S, N)`` array of unit indices (S resamples of N units) to ``(..., S)`` values.
* :func:`shuffled_labels` draws label permutations (within strata, if any) and
  :func:`permutation_p` turns a null distribution into ``(1 + #extreme) / (1 + n)``.
* :func:`holm_adjusted` and :func:`holm`: the family-wise correction.
* :func:`effect_size` (mean difference, Cohen's d, rank-biserial) and
  :func:`pooled_sd`; :func:`pearson`, :func:`row_pearson` and
  :func:`spearman_brown` for correlations.

The random draws are part of the results the book reports, so each function draws in
one documented order (see ``chunk`` of :func:`bootstrap_distribution`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy import stats as scipy_stats

from twotower.errors import require

MIN_UNITS = 3  # fewer units than this: no bootstrap interval (NaN)
TIE_TOLERANCE = 1e-12  # a shuffle that recomputes the observed value by another path
ALTERNATIVES = ("two-sided", "greater", "less")


# --- correlations ---------------------------------------------------------------------


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the entries finite in both (NaN for fewer than 3, or no
    spread)."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(scipy_stats.pearsonr(x[ok], y[ok])[0])


def spearman_brown(r: float) -> float:
    """A split-half correlation stepped up to full length, ``2r / (1 + r)``: the
    reliability of a measure made on twice the data (chapter 8's noise ceiling). NaN
    for a NaN r or r <= -1."""
    return float(2 * r / (1 + r)) if np.isfinite(r) and r > -1 else float("nan")


def row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``(..., N)`` arrays, over the last axis (vectorised)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


# --- the bootstrap --------------------------------------------------------------------


def resample_indices(n: int, n_boot: int, seed: int = 0, chunk: int | None = None
                     ) -> Iterator[np.ndarray]:
    """Blocks of ``(S, n)`` unit indices drawn with replacement, ``n_boot`` rows in all.

    One generator (``seed``) draws every block in turn. ``chunk`` caps the entries
    (rows x ``n``) of one block, at least one row; None draws all rows at once. The
    blocks are part of the draw order: a block of S rows is one call of the generator,
    so the same seed with another ``chunk`` gives other resamples.
    """
    rng = np.random.default_rng(seed)
    rows = n_boot if chunk is None else max(1, chunk // max(n, 1))
    for start in range(0, n_boot, max(rows, 1)):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def bootstrap_distribution(n: int, statistic: Callable[[np.ndarray], np.ndarray],
                           n_boot: int = 1000, seed: int = 0, chunk: int | None = None
                           ) -> np.ndarray:
    """The statistic of ``n_boot`` resamples of ``n`` units (chapters 2 and 7).

    Args:
        n: number of units (tokens, positions, sentences, samples).
        statistic: maps ``(S, n)`` unit indices to ``(..., S)`` values (vectorised).
        n_boot: resamples.
        seed: seed of the resampling generator.
        chunk: at most this many resampled indices in memory at once (see
            :func:`resample_indices`); None: all at once.

    Returns:
        ``(..., n_boot)``: the values of the resamples, in the order drawn.
    """
    blocks = [np.asarray(statistic(idx)) for idx in resample_indices(n, n_boot, seed,
                                                                    chunk)]
    return np.concatenate(blocks, axis=-1)


def percentile_interval(draws: np.ndarray, level: float = 0.95, ignore_nan: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles over the last axis.

    ``ignore_nan`` skips resamples whose statistic is NaN (a resample with no spread);
    without it one NaN makes the interval NaN.
    """
    quantile = np.nanquantile if ignore_nan else np.quantile
    low, high = quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=-1)
    return low, high


def bootstrap_interval(n: int, statistic: Callable[[np.ndarray], np.ndarray],
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float]:
    """Percentile interval of a scalar ``statistic`` over resamples of ``n`` units
    (chapter 9: tokens resampled for every correlation).

    ``statistic`` maps an (S, N) array of unit indices to S values (vectorised);
    resamples where it is NaN are skipped. NaN for fewer than :data:`MIN_UNITS` units
    or no resamples.

    Returns:
        ``(low, high)``.
    """
    if n < MIN_UNITS or n_boot < 1:
        return float("nan"), float("nan")
    low, high = percentile_interval(bootstrap_distribution(n, statistic, n_boot, seed),
                                    level)
    return float(low), float(high)


def bootstrap_correlation(x: np.ndarray, y: np.ndarray, n_boot: int = 1000,
                          seed: int = 0, level: float = 0.95
                          ) -> tuple[float, float, float]:
    """Pearson r over the entries finite in both, with a percentile bootstrap interval
    (entries resampled). Returns ``(r, low, high)``."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x)[ok], np.asarray(y)[ok]
    if x.size < MIN_UNITS:
        return float("nan"), float("nan"), float("nan")
    low, high = bootstrap_interval(x.size, lambda i: row_pearson(x[i], y[i]), n_boot,
                                   seed, level)
    return pearson(x, y), low, high


# --- permutations ---------------------------------------------------------------------


def bootstrap_means(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    chunk: int = 4_000_000):
    """Means of paired measurements with percentile bootstrap intervals (chapter 7).

    All rows are resampled with the SAME positions in each bootstrap draw, so the
    intervals of differences between rows stay paired.

    Args:
        values: ``(M, N)`` (or ``(N,)``) numbers, one row per measurement and one
            column per position, e.g. the losses of the joint head and both readouts.
        n_boot: bootstrap draws.
        seed: seed of the resampling.
        level: coverage of the interval.
        chunk: at most this many resampled entries in memory at once.

    Returns:
        ``(mean, low, high)``, each ``(M,)`` (or a float for a 1-D input).
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    values = np.atleast_2d(values)
    n = values.shape[1]
    draws = bootstrap_distribution(n, lambda idx: values[:, idx].mean(-1), n_boot, seed,
                                   chunk=chunk)  # (M, n_boot)
    low, high = percentile_interval(draws, level, ignore_nan=False)
    mean = values.mean(1)
    if flat:
        return float(mean[0]), float(low[0]), float(high[0])
    return mean, low, high


def shuffled_labels(labels: np.ndarray, n_perm: int, seed: int = 0,
                    strata: np.ndarray | None = None, method: str = "keys"
                    ) -> np.ndarray:
    """``(n_perm, N)``: ``labels (N,)`` shuffled ``n_perm`` times, within each stratum.

    Shuffling within frequency bins keeps each class's frequency profile. Two ways to
    draw a shuffle, each the one an instrument has always used (same seed, same
    shuffles):

    * ``"keys"``: order the labels of a stratum by uniform random keys, one
      ``(n_perm, size)`` draw per stratum, strata in sorted order (chapters 2 and 10);
    * ``"shuffle"``: one Fisher-Yates shuffle (``Generator.permutation``) per row,
      row after row within each stratum (chapter 9's nulls over tokens).

    Pass ``np.arange(N)`` as labels to get the permutations themselves.
    """
    require(method in ("keys", "shuffle"), f"method must be 'keys' or 'shuffle', "
            f"got {method!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    strata = np.zeros(labels.size, int) if strata is None else np.asarray(strata)
    out = np.empty((n_perm, labels.size), dtype=labels.dtype)
    for s in np.unique(strata):
        cols = np.flatnonzero(strata == s)
        if method == "keys":
            out[:, cols] = labels[cols][np.argsort(rng.random((n_perm, cols.size)),
                                                   axis=1)]
        else:
            for row in range(n_perm):
                out[row, cols] = rng.permutation(labels[cols])
    return out


def permutation_p(observed: float, null: np.ndarray, alternative: str = "two-sided",
                  tolerance: float = TIE_TOLERANCE) -> float:
    """``(1 + #{null at least as extreme as observed}) / (1 + n)``: never 0 (chapter 2).

    ``two-sided`` compares ``|null|`` with ``|observed|``; ``greater`` and ``less``
    the signed values. ``tolerance`` counts a null value that falls short by round-off
    as a tie (the identity shuffle recomputes the observed value by another path);
    pass 0 where both come from the same code.
    """
    require(alternative in ALTERNATIVES,
            f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    null = np.asarray(null, dtype=float)
    if alternative == "two-sided":
        extreme = np.abs(null) >= abs(observed) - tolerance
    elif alternative == "greater":
        extreme = null >= observed - tolerance
    else:
        extreme = null <= observed + tolerance
    return float((1 + extreme.sum()) / (1 + null.size))


# --- many tests at once ---------------------------------------------------------------


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (chapter 11): the k-th smallest p times
    ``m - k + 1``, made non-decreasing. A hypothesis is rejected at family-wise level
    ``alpha`` when its adjusted p is at most ``alpha``."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else p
    out = np.empty(m)
    out[order] = np.minimum(steps, 1.0)
    return out


def holm(p_values, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses to reject at family-wise ``alpha``.

    Returns:
        (m,) booleans in the order of ``p_values``.
    """
    return holm_adjusted(p_values) <= alpha


# --- effect sizes ---------------------------------------------------------------------


def pooled_sd(x: np.ndarray, y: np.ndarray) -> float:
    """Pooled standard deviation of two samples (ddof 1 in each)."""
    return float(np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                         / (x.size + y.size - 2)))


def effect_size(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How far ``x`` lies above ``y`` (chapter 10): mean difference, Cohen's d,
    rank-biserial.

    Cohen's d divides by the pooled standard deviation (ddof 1); the rank-biserial
    correlation is ``2 P(X > Y) - 1`` (ties count half), in [-1, 1].
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or y.size < 2:
        nan = float("nan")
        return {"mean_diff": nan, "cohens_d": nan, "rank_biserial": nan}
    diff = x.mean() - y.mean()
    pooled = pooled_sd(x, y)
    u = scipy_stats.mannwhitneyu(x, y, alternative="two-sided").statistic  # x > y pairs
    return {"mean_diff": float(diff),
            "cohens_d": float(diff / pooled) if pooled > 0 else float("nan"),
            "rank_biserial": float(2 * u / (x.size * y.size) - 1)}
