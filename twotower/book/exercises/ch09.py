"""Exercise checks of chapter 9 (*Is the preference stable?*).

Introduced in chapter 9 (*Is the preference stable?*): the correlation of two runs'
preferences after aligning the arbitrary tower labels, and the same correlation
corrected for the noise of each run (disattenuated).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.stability import disattenuated
from twotower.book.exercises.framework import Attempt, exercise

# --- aligned correlation --------------------------------------------------------------


def reference_aligned_correlation(pref_a, pref_b):
    """The exercise's solution: ``(|r|, r < 0)`` over the tokens finite in both runs."""
    pref_a, pref_b = np.asarray(pref_a, float), np.asarray(pref_b, float)
    both = np.isfinite(pref_a) & np.isfinite(pref_b)
    r = float(np.corrcoef(pref_a[both], pref_b[both])[0, 1])
    return abs(r), bool(r < 0)


def _stability_cases(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    cases = []
    for n, sign, noise in ((50, 1, 0.5), (400, -1, 1.0), (2000, -1, 3.0), (300, 1, 2)):
        true = rng.normal(size=n)
        a = true + 0.5 * rng.normal(size=n)
        b = sign * true + noise * rng.normal(size=n)
        a[rng.random(n) < 0.1] = np.nan
        b[rng.random(n) < 0.1] = np.nan
        cases.append(dict(pref_a=a, pref_b=b))
    return cases


@exercise(reference_aligned_correlation, hint=(
    "Hint: keep the tokens where both prefs are finite, take Pearson r there, and if "
    "it is negative flip run b (tower labels are arbitrary): return (abs(r), r < 0)."))
def check_aligned_correlation(attempt: Attempt) -> str:
    """Check ``aligned_correlation(pref_a, pref_b)``: ``(r, flipped)``, the Pearson r
    over tokens finite in both runs after flipping run b's sign if r < 0."""
    cases = _stability_cases(91)
    for case in cases:
        got = attempt.call(**case)
        if not isinstance(got, tuple) or len(got) != 2:
            attempt.fail(f"expected a tuple (r, flipped), got {type(got).__name__}.")
        r, flipped = reference_aligned_correlation(**case)
        where = f"{case['pref_a'].size} tokens"
        attempt.close(got[0], r, where, atol=1e-9)
        if bool(got[1]) != flipped:
            attempt.fail(f"flipped is {bool(got[1])}, expected {flipped} ({where}).")
    return f"{len(cases)} pairs of runs, NaN tokens and swapped labels included"


# --- disattenuated correlation --------------------------------------------------------


def reference_disattenuated_correlation(a0, a1, b0, b1):
    """Reference of :func:`check_disattenuated_correlation`: the package's
    :func:`~twotower.analysis.stability.disattenuated` for one pair of runs."""
    return float(disattenuated(*(np.asarray(h, np.float64) for h in (a0, a1, b0, b1))))


def _disattenuated_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(91)
    cases = []
    for rho, noise, n in ((1.0, 0.5, 400), (0.5, 1.0, 600), (0.0, 1.0, 300),
                          (-0.6, 0.7, 500), (0.8, 3.0, 200)):
        common, own = rng.standard_normal((2, n))
        truth = [common, rho * common + np.sqrt(1 - rho**2) * own]
        halves = [t + noise * rng.standard_normal(n) for t in truth for _ in (0, 1)]
        cases.append(dict(zip(("a0", "a1", "b0", "b1"), halves)))
    x, y = rng.standard_normal((2, 80))
    noise = 0.3 * rng.standard_normal((4, 80))  # both runs' halves disagree
    cases.append(dict(a0=x + noise[0], a1=-x + noise[1], b0=y + noise[2],
                      b1=-y + noise[3]))
    return cases


@exercise(reference_disattenuated_correlation, hint=(
    "Hint: cross = (r(a0, b1) + r(a1, b0)) / 2 pairs halves of different text; divide "
    "it by sqrt(r(a0, a1) * r(b0, b1)), the two runs' own split-half correlations; NaN "
    "when either of those is not positive."))
def check_disattenuated_correlation(attempt: Attempt) -> str:
    """Check ``disattenuated_correlation(a0, a1, b0, b1)``: the correlation of two
    runs' noise-free preferences from their half preferences on the same tokens."""
    return attempt.compare(_disattenuated_cases(), lambda c: f"{c['a0'].size} tokens",
                           "cases, an unreliable run included")
