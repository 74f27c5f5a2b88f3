"""Token preference: which tower predicts which token better, with its noise ceiling.

Introduced in chapter 8 (*The emerging preference*).

For each vocabulary id v (the definitions of chapter 1):
``ll_k(v)`` = mean log-probability readout k gives to v over the positions where v is
the target, ``n(v)`` their number, and ``pref(v) = ll_A(v) - ll_B(v)`` in nats (> 0:
tower A predicts v better). Tokens seen fewer than ``min_count`` times get NaN, never 0
(the authors' code read unseen tokens as 0: bug 5). The per-id sums are ``bincount``
passes over the per-position arrays (:func:`token_sums_numpy`, the readable version);
when ``numba`` is installed, one compiled pass computes the same sums about ten times
faster (:func:`token_sums`), which is what scoring 10M tokens in well under a second
takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twotower.analysis.stats import pearson, spearman_brown
from twotower.data.scores import TokenScores
from twotower.errors import TwotowerError

try:  # optional: a compiled single pass for the per-id sums (same numbers)
    import numba
except ImportError:  # pragma: no cover - numba ships with the requirements
    numba = None


def token_sums_numpy(target, ll_a, ll_b, vocab_size: int) -> np.ndarray:
    """Per-id sums ``(V, 4)``: occurrences, sum of ll_a, sum of ll_b and sum of
    (ll_a - ll_b)^2, in fp64; one ``bincount`` pass per column (the readable
    version)."""
    ids = np.asarray(target).astype(np.intp, copy=False)  # bincount's index type
    a, b = np.asarray(ll_a, dtype=np.float64), np.asarray(ll_b, dtype=np.float64)
    columns = [np.bincount(ids, minlength=vocab_size)]
    columns += [np.bincount(ids, weights=w, minlength=vocab_size)
                for w in (a, b, np.square(a - b))]
    return np.stack(columns, axis=1).astype(np.float64)


def _sums_loop(ids, a, b, out):  # compiled by numba: one pass over the positions
    for k in range(ids.shape[0]):
        t, x, y = ids[k], np.float64(a[k]), np.float64(b[k])
        out[t, 0] += 1.0
        out[t, 1] += x
        out[t, 2] += y
        out[t, 3] += (x - y) * (x - y)


_sums_compiled = numba.njit(cache=True, nogil=True)(_sums_loop) if numba else None


def token_sums(target, ll_a, ll_b, vocab_size: int) -> np.ndarray:
    """:func:`token_sums_numpy`, in one compiled pass when ``numba`` is installed.

    Raises:
        TwotowerError: for an id outside ``[0, vocab_size)`` (the compiled pass does
            not check bounds, so they are checked here first).
    """
    ids = np.ascontiguousarray(target)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise TwotowerError(f"token ids must lie in [0, {vocab_size}); got "
                            f"{ids.min()}..{ids.max()}: pass the model's vocab_size")
    if _sums_compiled is None or not np.issubdtype(ids.dtype, np.integer):
        return token_sums_numpy(ids, ll_a, ll_b, vocab_size)
    out = np.zeros((vocab_size, 4))
    _sums_compiled(ids, np.ascontiguousarray(ll_a), np.ascontiguousarray(ll_b), out)
    return out


def _token_means(target, ll_a, ll_b, vocab_size):
    sums = token_sums(target, ll_a, ll_b, vocab_size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 0], sums[:, 1] / sums[:, 0], sums[:, 2] / sums[:, 0]


def preference_array(target: np.ndarray, ll_a: np.ndarray, ll_b: np.ndarray,
                     vocab_size: int, min_count: int = 5) -> np.ndarray:
    """``pref`` of every id as a plain array ``(V,)``: mean ll_a - mean ll_b, NaN for
    ids seen fewer than ``min_count`` times (or never)."""
    count, mean_a, mean_b = _token_means(target, ll_a, ll_b, vocab_size)
    pref = mean_a - mean_b
    pref[count < max(min_count, 1)] = np.nan
    return pref


def residual_preference(pref: np.ndarray, ll_a: np.ndarray, ll_b: np.ndarray,
                        count: np.ndarray) -> np.ndarray:
    """pref with the global gap, difficulty and frequency regressed out.

    The residual of a least-squares fit of pref on ``[1, mean loss, log count]`` over
    the tokens where pref is finite (NaN elsewhere). A tower that is simply better
    everywhere, or hard tokens that have larger loss differences, make raw prefs
    correlate across runs without any division of labour (chapter 9).
    """
    pref = np.asarray(pref, dtype=float)
    ok = np.isfinite(pref)
    out = np.full(pref.shape, np.nan)
    if ok.sum() < 4:
        return out
    difficulty = -(np.asarray(ll_a)[ok] + np.asarray(ll_b)[ok]) / 2
    X = np.column_stack([np.ones(ok.sum()), difficulty, np.log(np.asarray(count)[ok])])
    coef, *_ = np.linalg.lstsq(X, pref[ok], rcond=None)
    out[ok] = pref[ok] - X @ coef
    return out


def token_preference(scores: TokenScores, vocab_size: int, min_count: int = 5,
                     tokens: list[str] | None = None) -> pd.DataFrame:
    """Per-token mean log-probabilities, counts and preference.

    Args:
        scores: paired per-position scores of the two readouts.
        vocab_size: V (ids must be < V).
        min_count: tokens with fewer occurrences get NaN.
        tokens: optional id -> string table for a ``token`` column.

    Returns:
        DataFrame indexed by id with columns ``token`` (if given), ``count``, ``ll_a``,
        ``ll_b``, ``pref``, ``pref_se`` (standard error of the mean difference), only
        for ids seen at least once.
    """
    if scores.ll.shape[0] != 2:
        raise TwotowerError("preference needs exactly two readouts (towers A and B)")
    sums = token_sums(scores.target, scores.ll[0], scores.ll[1], vocab_size)  # fp64
    count = sums[:, 0].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ll_a, ll_b, mean_sq = (sums[:, k] / count for k in (1, 2, 3))
        mean_diff = ll_a - ll_b  # the mean of differences is the difference of means
        var = (mean_sq - mean_diff**2) * count / (count - 1)
        se = np.sqrt(np.maximum(var, 0) / count)
    seen = np.flatnonzero(count)
    df = pd.DataFrame({"count": count[seen], "ll_a": ll_a[seen], "ll_b": ll_b[seen],
                       "pref": mean_diff[seen], "pref_se": se[seen]},
                      index=pd.Index(seen, name="id"))
    df.loc[df["count"] < min_count, ["pref", "pref_se"]] = np.nan
    if tokens is not None:
        df.insert(0, "token", [tokens[i] for i in seen])
    return df


def naive_token_preference(scores: TokenScores, min_count: int = 5) -> dict[int, float]:
    """Per-token averaging as a plain Python loop over positions, the way the authors'
    code accumulates per-vocabulary sums (reference for tests and for the benchmark)."""
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for target, a, b in zip(scores.target, scores.ll[0], scores.ll[1]):
        t = int(target)
        total[t] = total.get(t, 0.0) + float(a) - float(b)
        count[t] = count.get(t, 0) + 1
    return {t: (total[t] / count[t] if count[t] >= min_count else float("nan"))
            for t in total}


@dataclass(frozen=True)
class SplitHalf:
    """Split-half reliability of ``pref``: the noise ceiling of any correlation.

    ``r`` correlates pref computed on two halves of the scored text (by article, see
    :func:`text_halves`); ``ceiling`` is the Spearman-Brown estimate for full-length
    data, ``2r / (1 + r)``; ``unit`` says what was split (``"article"``,
    ``"window block"`` or ``"position block"``, or ``"given"`` for halves passed in).
    """

    r: float
    ceiling: float
    n_tokens: int
    r_centred: float  # the same for pref with gap, difficulty, frequency regressed out
    unit: str = "given"


MIN_HALF_ARTICLES = 8  # fewer scored articles than this: halves of window blocks
HALF_BLOCKS = 16  # blocks of consecutive windows (or positions) in that case
HALF_SEED = 0  # every run of one text is split into the same halves


def text_units(scores: TokenScores) -> tuple[np.ndarray, str]:
    """The unit of text each scored position belongs to, for splitting into halves.

    Positions of one article share its topic and its words, so a token's preference
    in one article tells about the same token nearby: halves made of *occurrences*
    inside the same articles agree more than the preference would on new text. The
    units are therefore the articles when the scored text has at least
    :data:`MIN_HALF_ARTICLES`, else :data:`HALF_BLOCKS` blocks of consecutive windows
    (of positions, for scores that do not know their windows).

    Returns:
        ``(units, kind)``: (N,) int unit per position and ``"article"``,
        ``"window block"`` or ``"position block"``.
    """
    article = scores.article
    if article is not None and np.unique(article).size >= MIN_HALF_ARTICLES:
        return np.asarray(article), "article"
    window = scores.window
    if window is not None and window.size and (np.asarray(window) >= 0).all():
        index, kind = np.asarray(window), "window block"
    else:
        index, kind = np.arange(scores.target.size), "position block"
    values, rank = np.unique(index, return_inverse=True)
    return rank * HALF_BLOCKS // max(values.size, 1), kind


def text_halves(scores: TokenScores, seed: int = HALF_SEED) -> tuple[np.ndarray, str]:
    """0/1 per scored position: half of the units of :func:`text_units` (drawn with
    ``seed``) make half 0, the others half 1. Returns ``(half, kind)``."""
    units, kind = text_units(scores)
    values = np.unique(units)
    first = np.random.default_rng(seed).permutation(values)[:values.size // 2]
    return np.where(np.isin(units, first), 0, 1).astype(np.int8), kind


def half_assignment(ids: np.ndarray, seed: int | None = 0) -> np.ndarray:
    """0/1 per occurrence, balanced within each token: each token's occurrences, in a
    random order (``seed``) or in order of appearance (``seed=None``), alternate
    between half 0 and half 1.

    The simplest split (chapter 8's exercise). It overstates reliability on new text
    when a token's occurrences cluster in articles; :func:`text_halves` is what the
    package's statistics use.
    """
    ids = np.asarray(ids)
    if seed is None:
        order = np.argsort(ids, kind="stable")
    else:
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(ids.size), ids))  # grouped by id, random inside
    sorted_ids = ids[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    rank = np.arange(ids.size) - np.repeat(starts, np.diff(np.r_[starts, ids.size]))
    half = np.empty(ids.size, dtype=np.int8)
    half[order] = rank % 2
    return half


def split_half(scores: TokenScores, vocab_size: int, min_count: int = 5,
               seed: int = HALF_SEED, half: np.ndarray | None = None) -> SplitHalf:
    """Correlate pref between two halves of the scored text.

    Args:
        seed: which units go to which half (:func:`text_halves`).
        half: 0/1 per position, instead of :func:`text_halves`.

    Only tokens with at least ``min_count`` occurrences in EACH half count: the same
    token set that a correlation with another run uses (twotower.analysis.stability).
    ``r_centred`` correlates the halves' :func:`residual_preference` instead.
    """
    if half is None:
        half, unit = text_halves(scores, seed)
    else:
        half, unit = np.asarray(half), "given"
    prefs, residuals = [], []
    for h in (0, 1):
        count, mean_a, mean_b = _token_means(scores.target[half == h],
                                             scores.ll[0][half == h],
                                             scores.ll[1][half == h], vocab_size)
        pref = mean_a - mean_b
        pref[count < max(min_count, 1)] = np.nan
        prefs.append(pref)
        residuals.append(residual_preference(pref, mean_a, mean_b, count))
    r = pearson(*prefs)
    n = int((np.isfinite(prefs[0]) & np.isfinite(prefs[1])).sum())
    return SplitHalf(r=r, ceiling=spearman_brown(r), n_tokens=n,
                     r_centred=pearson(*residuals), unit=unit)


def centred_preference(df: pd.DataFrame) -> pd.Series:
    """:func:`residual_preference` of a :func:`token_preference` table, as a Series."""
    values = residual_preference(df["pref"].to_numpy(), df["ll_a"].to_numpy(),
                                 df["ll_b"].to_numpy(), df["count"].to_numpy())
    return pd.Series(values, index=df.index, name="pref_centred")


def global_gap(scores: TokenScores) -> float:
    """Mean over scored positions of ``ll_A - ll_B`` (nats, fp64): how much better
    tower A's readout is on average, whatever the token (chapter 8)."""
    return float((scores.ll[0].astype(np.float64) - scores.ll[1]).mean())


def preference_summary(df: pd.DataFrame, scores: TokenScores | None = None) -> dict:
    """Spread and balance of pref over tokens with enough occurrences."""
    p = df["pref"].dropna().to_numpy()
    out = {"n_tokens": int(p.size)}
    if p.size:
        q = np.quantile(p, [0.05, 0.25, 0.5, 0.75, 0.95])
        out.update({"mean": float(p.mean()), "sd": float(p.std(ddof=1)) if p.size > 1
                    else float("nan"), "share_a_better": float((p > 0).mean()),
                    "q05": q[0], "q25": q[1], "median": q[2], "q75": q[3], "q95": q[4]})
        out = {k: float(v) if isinstance(v, np.floating) else v for k, v in out.items()}
    if scores is not None:
        out["global_gap"] = global_gap(scores)
    return out
