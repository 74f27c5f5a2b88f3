"""Chapters 9-11's exercise checks reject broken variants.

``BROKEN`` is merged into ``tests/test_checks.py``'s table, whose meta-tests call every
check with its reference, a stub and each broken variant.
"""

from __future__ import annotations

import numpy as np

from twotower.analysis.stats import holm
from twotower.book.exercises import ch09, ch10

# --- chapter 9 ------------------------------------------------------------------------


def _aligned_without_nan_filter(pref_a, pref_b):
    r = float(np.corrcoef(pref_a, pref_b)[0, 1])  # NaN as soon as one token is NaN
    return abs(r), bool(r < 0)


def _aligned_signed(pref_a, pref_b):
    r, flipped = ch09.reference_aligned_correlation(pref_a, pref_b)
    return (-r if flipped else r), flipped  # reports the raw, signed r


def _aligned_never_flipped(pref_a, pref_b):
    return ch09.reference_aligned_correlation(pref_a, pref_b)[0], False


def _r(x, y):
    return float(np.corrcoef(x, y)[0, 1])


def _not_disattenuated(a0, a1, b0, b1):
    return (_r(a0, b1) + _r(a1, b0)) / 2


def _stepped_up_reliabilities(a0, a1, b0, b1):
    rel = [2 * r / (1 + r) for r in (_r(a0, a1), _r(b0, b1))]  # full-length ones
    cross = (_r(a0, b1) + _r(a1, b0)) / 2  # ...for a half-length correlation
    return cross / np.sqrt(rel[0] * rel[1]) if min(rel) > 0 else float("nan")


def _two_negative_reliabilities_accepted(a0, a1, b0, b1):
    rel = _r(a0, a1) * _r(b0, b1)
    cross = (_r(a0, b1) + _r(a1, b0)) / 2
    return cross / np.sqrt(abs(rel)) if rel != 0 else float("nan")


# --- chapter 10 -----------------------------------------------------------------------


def _d_with_sd_of_everything(x, y):
    return (np.mean(x) - np.mean(y)) / np.std(np.concatenate([x, y]), ddof=1)


def _d_with_ddof_0(x, y):
    pooled = np.sqrt((x.size * x.var() + y.size * y.var()) / (x.size + y.size))
    return (x.mean() - y.mean()) / pooled


def _d_backwards(x, y):
    return -ch10.reference_cohens_d(x, y)


def _stratified_unweighted(values, is_function, bins):
    diffs = [values[(bins == b) & is_function].mean() -
             values[(bins == b) & ~is_function].mean() for b in np.unique(bins)
             if is_function[bins == b].any() and (~is_function[bins == b]).any()]
    return float(np.mean(diffs))


def _stratified_ignoring_bins(values, is_function, bins):
    return float(values[is_function].mean() - values[~is_function].mean())


def _stratified_nan_bins(values, is_function, bins):
    total = weight = 0.0
    for b in np.unique(bins):
        f, c = values[(bins == b) & is_function], values[(bins == b) & ~is_function]
        w = f.size * c.size / max(f.size + c.size, 1)
        total += w * (f.mean() - c.mean()) if f.size else np.nan  # empty bin -> NaN
        weight += w
    return float(total / weight)


# --- chapter 11 -----------------------------------------------------------------------


def _verdict_ties_hold(low, bar=0.0):
    if np.isnan(low):
        return "not measured at this scale"
    return "holds" if low >= bar else "does not hold"


def _verdict_nan_fails(low, bar=0.0):
    return "holds" if low > bar else "does not hold"  # NaN > bar is False


def _bonferroni(p_values, alpha=0.05):
    return np.asarray(p_values) <= alpha / len(p_values)


def _holm_without_stopping(p_values, alpha=0.05):
    p = np.asarray(p_values)
    order = np.argsort(p)
    reject = np.zeros(p.size, dtype=bool)
    for i, index in enumerate(order):
        reject[index] = p[index] <= alpha / (p.size - i)
    return reject


def _holm_in_sorted_order(p_values, alpha=0.05):
    return holm(np.sort(p_values), alpha)


BROKEN = {
    "check_aligned_correlation": [_aligned_without_nan_filter, _aligned_signed,
                                  _aligned_never_flipped],
    "check_disattenuated_correlation": [_not_disattenuated, _stepped_up_reliabilities,
                                        _two_negative_reliabilities_accepted],
    "check_cohens_d": [_d_with_sd_of_everything, _d_with_ddof_0, _d_backwards],
    "check_stratified_difference": [_stratified_unweighted, _stratified_ignoring_bins,
                                    _stratified_nan_bins],
    "check_verdict": [_verdict_ties_hold, _verdict_nan_fails],
    "check_holm": [_bonferroni, _holm_without_stopping, _holm_in_sorted_order],
}
