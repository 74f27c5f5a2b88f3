"""Exercise checks of chapter 8 (*The emerging preference*).

Introduced in chapter 8 (*The emerging preference*): the per-token preference table
with standard errors, and its split-half reliability with the Spearman-Brown ceiling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.preference import half_assignment, split_half, token_preference
from twotower.book.exercises.ch01 import toy_scores
from twotower.book.exercises.framework import Attempt, exercise
from twotower.data.scores import TokenScores


def _scores(target, ll_a, ll_b) -> TokenScores:
    ll = np.stack([np.asarray(ll_a, dtype=np.float64),
                   np.asarray(ll_b, dtype=np.float64)])
    return TokenScores(np.asarray(target), ll, ll[0])


def _scored_cases(seed: int, sizes) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    cases = []
    for n, vocab, min_count in sizes:
        toy = toy_scores(n, vocab, seed=int(rng.integers(1000)), gap=0.1, noise=1.0)
        cases.append(dict(target=toy.targets, ll_a=toy.logp_a, ll_b=toy.logp_b,
                          vocab_size=vocab + 3, min_count=min_count))  # 3 never seen
    return cases


# --- preference table -----------------------------------------------------------------


def reference_preference_table(target, ll_a, ll_b, vocab_size, min_count=5):
    """Reference of :func:`check_preference_table`: the columns ``count``, ``pref`` and
    ``pref_se`` of :func:`~twotower.analysis.preference.token_preference`, one entry
    per token id."""
    df = token_preference(_scores(target, ll_a, ll_b), vocab_size, min_count)
    count = np.zeros(vocab_size, dtype=np.int64)
    pref, pref_se = np.full(vocab_size, np.nan), np.full(vocab_size, np.nan)
    count[df.index] = df["count"].to_numpy()
    pref[df.index] = df["pref"].to_numpy()
    pref_se[df.index] = df["pref_se"].to_numpy()
    return count, pref, pref_se


@exercise(reference_preference_table, hint=(
    "Hint: with d = ll_a - ll_b per position, bincount gives n(v), the sum of d and "
    "the sum of d**2 per token; pref = mean of d, pref_se = sample standard deviation "
    "(ddof=1) / sqrt(n). pref and pref_se are NaN below min_count; count is 0 for "
    "unseen tokens."))
def check_preference_table(attempt: Attempt) -> str:
    """Check ``preference_table(target, ll_a, ll_b, vocab_size, min_count)``:
    ``(count, pref, pref_se)``, three ``(vocab_size,)`` arrays, against
    :func:`twotower.analysis.preference.token_preference`."""
    cases = _scored_cases(31, ((60, 8, 2), (3000, 150, 5), (20_000, 400, 10)))
    for case in cases:
        got = attempt.call(**case)
        if not isinstance(got, tuple) or len(got) != 3:
            attempt.fail("expected a tuple (count, pref, pref_se), got "
                         f"{type(got).__name__}.")
        expected = reference_preference_table(**case)
        where = f"vocab_size={case['vocab_size']}, min_count={case['min_count']}"
        for label, value, reference in zip(("count", "pref", "pref_se"), got, expected):
            attempt.close(value, reference, f"{label}, {where}", atol=1e-9, rtol=1e-6)
    return f"{len(cases)} cases: counts, preferences, standard errors"


# --- split-half reliability -----------------------------------------------------------


def reference_split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count=5, seed=0):
    """Reference of :func:`check_split_half_ceiling`: ``(r, ceiling)`` of
    :func:`~twotower.analysis.preference.split_half` on the halves of
    :func:`~twotower.analysis.preference.half_assignment`."""
    result = split_half(_scores(target, ll_a, ll_b), vocab_size, min_count,
                        half=half_assignment(np.asarray(target), seed))
    return result.r, result.ceiling


@exercise(reference_split_half_ceiling, hint=(
    "Hint: half = half_assignment(target, seed); compute pref on the positions of each "
    "half (min_count applies within each half), correlate over the tokens finite in "
    "both, and return (r, 2 r / (1 + r)): Spearman-Brown steps the half-length "
    "reliability up to the full data."))
def check_split_half_ceiling(attempt: Attempt) -> str:
    """Check ``split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count, seed)``:
    ``(r, ceiling)`` as :func:`twotower.analysis.preference.split_half` computes them,
    with the halves of :func:`twotower.analysis.preference.half_assignment`."""
    cases = _scored_cases(32, ((4000, 100, 4), (20_000, 300, 6), (50_000, 500, 10)))
    for seed, case in enumerate(cases):
        case = dict(case, seed=seed)
        got = attempt.call(**case)
        if np.shape(got) != (2,):
            attempt.fail(f"returned shape {np.shape(got)}, expected two numbers (r, "
                         "ceiling).")
        attempt.close(got, reference_split_half_ceiling(**case),
                      f"vocab_size={case['vocab_size']}, min_count="
                      f"{case['min_count']}, seed={seed}", atol=1e-9, rtol=1e-6)
    return f"{len(cases)} toy runs, r and its Spearman-Brown ceiling"
