"""Exercise checks of chapter 11 (*Replication scorecard*).

Introduced in chapter 11 (*Replication scorecard*): the scorecard's verdict on an
interval, and Holm's step-down correction for many tests.
"""

from __future__ import annotations

import numpy as np

from twotower.analysis.stats import holm
from twotower.book.exercises.framework import Attempt, exercise
from twotower.experiments.scorecard import interval_verdict

# --- verdict --------------------------------------------------------------------------


@exercise(interval_verdict, hint=(
    "Hint: NaN (nothing measured) -> 'not measured at this scale'; a lower end "
    "strictly above the bar -> 'holds'; anything else -> 'does not hold'."))
def check_verdict(attempt: Attempt) -> str:
    """Check ``verdict(low, bar=0.0)``: the scorecard's rule for an interval whose
    lower end is ``low``."""
    cases = [dict(low=low, bar=bar) for low, bar in
             ((0.2, 0.0), (-0.1, 0.0), (0.0, 0.0), (float("nan"), 0.0), (0.1, 0.15),
              (0.2, 0.15))]
    for case in cases:
        got = attempt.call(**case)
        expected = interval_verdict(**case)
        if got != expected:
            attempt.fail(f"got {got!r}, expected {expected!r} for low={case['low']}, "
                         f"bar={case['bar']}.")
    return f"{len(cases)} intervals, the edge and NaN included"


# --- Holm's correction ----------------------------------------------------------------


@exercise(holm, hint=(
    "Hint: sort the p-values; the i-th smallest (i = 0, 1, ...) is rejected if p <= "
    "alpha / (m - i) AND every smaller one was rejected: stop at the first failure. "
    "Return the decisions in the original order."))
def check_holm(attempt: Attempt) -> str:
    """Check ``holm(p_values, alpha)``: which hypotheses Holm's step-down procedure
    rejects, as booleans in the order of ``p_values``, against
    :func:`twotower.analysis.stats.holm`."""
    cases = [dict(p_values=np.array(p), alpha=a) for p, a in (
        ([0.01, 0.04, 0.03, 0.005], 0.05), ([0.001, 0.2, 0.011, 0.012], 0.05),
        ([0.5, 0.001], 0.05), ([0.04, 0.01, 0.02], 0.05), ([0.009], 0.01),
        ([0.014, 0.03, 0.04], 0.05), ([0.03, 0.03, 0.03], 0.1))]
    return attempt.compare(
        cases, lambda c: f"p = {c['p_values'].tolist()}, alpha = {c['alpha']}",
        "families of tests")
