"""Exercise checks of chapter 13 (*One language per tower?*).

Introduced in chapter 13 (*One language per tower?*): how often each neuron fires on
each language, and the entropy of that over languages (LAPE).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.lape import activation_probability, language_entropy
from twotower.book.exercises.framework import Attempt, exercise

# --- activation probability -----------------------------------------------------------


def reference_activation_probability(acts, lang, n_languages):
    """Reference of :func:`check_activation_probability`: the package's
    :func:`~twotower.analysis.lape.activation_probability`."""
    return activation_probability(acts, lang, n_languages)


def _activation_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(130)
    cases = []
    for n, layers, neurons, k in ((50, 1, 4, 2), (300, 3, 16, 3), (400, 2, 8, 2)):
        acts = rng.standard_normal((n, layers, neurons))
        acts[rng.random(acts.shape) < 0.1] = 0.0  # exactly zero is not active
        cases.append(dict(acts=acts, lang=rng.integers(-1, k, n), n_languages=k))
    return cases


@exercise(reference_activation_probability, hint=(
    "Hint: for each language k, take the rows with lang == k (rows with a negative id "
    "belong to no language), compare with > 0 (strictly) and average over those rows; "
    "stack the K results on the last axis."))
def check_activation_probability(attempt: Attempt) -> str:
    """Check ``activation_probability(acts, lang, n_languages)``: for (N, L, M)
    activations and (N,) language ids (negative = skip), the (L, M, K) share of each
    language's tokens on which each neuron is > 0."""
    return attempt.compare(
        _activation_cases(),
        lambda c: f"acts {c['acts'].shape}, {c['n_languages']} languages",
        "cases, padding skipped, zero counts as off")


# --- entropy over languages -----------------------------------------------------------


def _probability_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(131)
    cases = []
    for shape in ((1, 3, 2), (2, 20, 3), (4, 10, 2)):
        p = rng.uniform(size=shape) * (rng.random(shape) > 0.2)
        p[0, 0] = 0.0  # a dead neuron
        cases.append(dict(act_prob=p))
    return cases


@exercise(language_entropy, hint=(
    "Hint: divide by the sum over the language axis, use 0 log 0 = 0, natural log; a "
    "neuron with all probabilities 0 has no preference: give it the uniform "
    "distribution (entropy log K)."))
def check_lape_entropy(attempt: Attempt) -> str:
    """Check ``lape_entropy(act_prob)``: (L, M, K) -> (L, M) natural-log entropy of
    each neuron's activation probabilities normalised over languages; a neuron that
    never fires gets ``log K``. The reference is
    :func:`twotower.analysis.lape.language_entropy`."""
    return attempt.compare(_probability_cases(),
                           lambda c: f"act_prob {c['act_prob'].shape}",
                           "cases, one-language and dead neurons included")
