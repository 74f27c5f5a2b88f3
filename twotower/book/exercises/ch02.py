"""Exercise checks of chapter 2 (*A language with a planted division*).

Introduced in chapter 2 (*A language with a planted division*): the conditional entropy
of a token, how well a preference separates the local from the topic tokens, and the
permutation p-value of that separation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.planted_split import permutation_test, point_biserial
from twotower.book.exercises.framework import Attempt, exercise

# --- conditional entropy --------------------------------------------------------------


def reference_conditional_entropy(condition, target):
    """The exercise's solution: plug-in ``H(target | condition)`` in nats, from counts.

    :func:`twotower.data.synthetic.conditional_entropies` computes the same for every
    process of a planted sample (a test checks that the two agree).
    """
    condition = np.asarray(condition, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    pair = condition * (int(target.max()) + 1) + target
    joint = np.bincount(pair)
    joint = joint[joint > 0] / target.size
    marginal = np.bincount(condition)
    marginal = marginal[marginal > 0] / target.size
    return float(-(joint * np.log(joint)).sum() + (marginal * np.log(marginal)).sum())


def _entropy_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(20)
    cases = []
    condition = rng.integers(0, 6, 5000)
    cases.append(dict(condition=condition, target=(3 * condition + 1) % 7))  # H = 0
    cases.append(dict(condition=condition, target=rng.integers(0, 9, 5000)))
    noisy = np.where(rng.random(5000) < 0.3, rng.integers(0, 6, 5000), condition)
    cases.append(dict(condition=condition, target=noisy))
    cases.append(dict(condition=np.zeros(800, dtype=int),
                      target=rng.integers(10, 14, 800)))  # H(target) itself
    return cases


@exercise(reference_conditional_entropy, hint=(
    "Hint: H(target | condition) = H(condition, target) - H(condition), both from "
    "relative frequencies (count / n) and natural logarithms; a target that is a "
    "function of the condition has entropy 0."))
def check_conditional_entropy(attempt: Attempt) -> str:
    """Check ``conditional_entropy(condition, target)``: the plug-in ``H(target |
    condition)`` in nats, from the counts of the pairs and of the conditions."""
    return attempt.compare(_entropy_cases(), lambda c: f"{c['target'].size} pairs",
                           "cases, a deterministic successor has entropy 0",
                           scalar=True, atol=1e-9)


# --- split correlation ----------------------------------------------------------------


def reference_split_correlation(pref, labels):
    """Reference of :func:`check_split_correlation`: |point-biserial r| of ``pref`` and
    "is local" over the local and topic tokens whose pref is finite."""
    pref, labels = np.asarray(pref, dtype=float), np.asarray(labels)
    keep = np.isfinite(pref) & np.isin(labels, ("local", "topic"))
    return abs(point_biserial(pref[keep], labels[keep] == "local"))


def _split_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(21)
    cases = []
    for n_local, n_topic, effect in ((10, 20, 1.0), (30, 30, -0.4), (15, 40, 0.1)):
        labels = np.array(["special"] * 5 + ["local"] * n_local + ["topic"] * n_topic)
        pref = rng.normal(0, 0.5, labels.size) + effect * (labels == "local")
        pref[:5] = rng.normal(5.0, 1.0, 5)  # special tokens: must be left out
        pref[rng.choice(np.arange(5, labels.size), 4, replace=False)] = np.nan
        cases.append(dict(pref=pref, labels=labels))
    return cases


@exercise(reference_split_correlation, hint=(
    "Hint: keep the tokens labelled 'local' or 'topic' (not 'special') whose pref is "
    "not NaN, correlate pref with (label == 'local') as 0/1, and return the absolute "
    "value: which tower is called A is arbitrary."))
def check_split_correlation(attempt: Attempt) -> str:
    """Check ``split_correlation(pref, labels)``: |Pearson r| between ``pref`` and a
    0/1 "is local" variable over the local and topic tokens whose pref is finite."""
    return attempt.compare(
        _split_cases(),
        lambda c: f"{int(np.isnan(c['pref']).sum())} NaN, 5 special tokens",
        "cases, sign ignored, special tokens and NaN left out", scalar=True)


# --- permutation p-value --------------------------------------------------------------


def reference_permutation_p_value(pref, is_local, n_perm=2000, seed=0):
    """Reference of :func:`check_permutation_p_value`: the p-value of
    :func:`twotower.analysis.planted_split.permutation_test`."""
    return permutation_test(pref, is_local, n_perm, seed)[0]


def _permutation_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(22)
    cases = []
    for n, effect in ((40, 2.0), (40, -2.0), (60, 0.0), (50, 0.35)):
        is_local = (np.arange(n) % 2).astype(float)
        cases.append(dict(pref=rng.normal(0, 1, n) + effect * is_local,
                          is_local=is_local, n_perm=2000))
    return cases


@exercise(reference_permutation_p_value, hint=(
    "Hint: shuffle is_local n_perm times, compare the |r| of each shuffle with the "
    "observed |r| (two-sided: a strongly negative r is as surprising as a positive "
    "one), and count the observed labelling too: (1 + hits) / (1 + n_perm), so the "
    "p-value is never 0."))
def check_permutation_p_value(attempt: Attempt) -> str:
    """Check ``permutation_p_value(pref, is_local, n_perm, seed)``: the two-sided
    permutation p-value of |r|, ``(1 + #{|r_shuffled| >= |r|}) / (1 + n_perm)``.

    The reader's random numbers differ from the reference's, so the p-values are
    compared within Monte Carlo error (0.04), and exactly where the answer is known.
    """
    for case in _permutation_cases():
        got = attempt.call(**case)
        attempt.one_number(got)
        expected = reference_permutation_p_value(**{**case, "n_perm": 20_000}, seed=1)
        floor = 1 / (1 + case["n_perm"])
        if expected < floor:  # no shuffle beats a strong effect: the answer is exact
            expected = floor
        r = np.corrcoef(case["pref"], case["is_local"])[0, 1]
        attempt.close(got, expected, f"n={case['pref'].size}, true r = {r:+.2f}",
                      atol=0.04 if expected > 0.01 else 1e-9)
    return "4 cases: strong (either sign), none, weak"
