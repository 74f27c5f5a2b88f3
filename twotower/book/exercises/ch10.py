"""Exercise checks of chapter 10 (*Syntax or semantics?*).

Introduced in chapter 10 (*Syntax or semantics?*): Cohen's d of function against
content words, and their difference within frequency bins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.stats import effect_size
from twotower.analysis.syntax import class_difference
from twotower.book.exercises.framework import Attempt, exercise

# --- Cohen's d ------------------------------------------------------------------------


def reference_cohens_d(x, y):
    """Reference of :func:`check_cohens_d`: ``cohens_d`` of
    :func:`~twotower.analysis.stats.effect_size`."""
    return effect_size(x, y)["cohens_d"]


def _cohens_d_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(101)
    cases = [dict(x=np.array([1.0, 2.0, 3.0]), y=np.array([0.0, 1.0]))]
    cases += [dict(x=rng.normal(0.5, 1, n), y=rng.normal(0, 2, m))
              for n, m in ((5, 40), (30, 8), (200, 300))]
    return cases


@exercise(reference_cohens_d, hint=(
    "Hint: pooled sd = sqrt(((n_x - 1) var_x + (n_y - 1) var_y) / (n_x + n_y - 2)) "
    "with var of ddof=1 in each group; d = (mean x - mean y) / pooled sd."))
def check_cohens_d(attempt: Attempt) -> str:
    """Check ``cohens_d(x, y)``: (mean x - mean y) / pooled standard deviation."""
    return attempt.compare(_cohens_d_cases(),
                           lambda c: f"{c['x'].size} and {c['y'].size} values",
                           "pairs of samples of unequal sizes and spreads")


# --- difference within frequency bins -------------------------------------------------


def reference_stratified_difference(values, is_function, bins):
    """Reference of :func:`check_stratified_difference`: the package's
    :func:`~twotower.analysis.syntax.class_difference` within bins."""
    return float(class_difference(values, is_function, bins))


def _stratified_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(102)
    cases = []
    for n, n_bins in ((12, 2), (300, 5), (2000, 8)):
        bins = rng.integers(0, n_bins, n)
        is_function = rng.random(n) < (0.1 + 0.8 * bins / n_bins)
        values = 0.3 * bins + 0.2 * is_function + rng.normal(size=n)
        is_function[bins == 0] = False  # one bin without function words
        cases.append(dict(values=values, is_function=is_function, bins=bins))
    return cases


@exercise(reference_stratified_difference, hint=(
    "Hint: for each bin holding both classes take mean(function) - mean(content) and "
    "the weight n_f * n_c / (n_f + n_c); skip bins with only one class; return "
    "sum(weight * difference) / sum(weight)."))
def check_stratified_difference(attempt: Attempt) -> str:
    """Check ``stratified_difference(values, is_function, bins)``: the within-bin
    difference of means, averaged over bins with weights n_f n_c / (n_f + n_c)."""
    return attempt.compare(
        _stratified_cases(),
        lambda c: f"{c['values'].size} tokens in {c['bins'].max() + 1} bins",
        "tables, a bin without function words included")
