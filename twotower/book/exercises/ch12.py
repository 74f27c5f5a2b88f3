"""Exercise checks of chapter 12 (*Rare-token neurons in each tower*).

Introduced in chapter 12 (*Rare-token neurons in each tower*): the rare half of the
token types, and the effective dimensionality of a group of neurons.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.analysis.neuron_stats import coactivation
from twotower.analysis.rare_neurons import frequency_halves
from twotower.book.exercises.framework import Attempt, exercise

# --- the rare half --------------------------------------------------------------------


def reference_rare_half(counts):
    """Reference of :func:`check_rare_half`: half 0 of the package's
    :func:`~twotower.analysis.rare_neurons.frequency_halves`."""
    return frequency_halves(counts) == 0


def _counts_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(120)
    cases = [dict(counts=np.array([0, 5, 1, 1, 9, 3, 0, 2]))]
    for vocab in (40, 301, 2000):
        counts = np.minimum(rng.zipf(1.4, vocab), 500)  # many ties at 1 and 2
        counts[rng.random(vocab) < 0.2] = 0  # types never seen
        cases.append(dict(counts=counts))
    return cases


@exercise(reference_rare_half, hint=(
    "Hint: keep the ids with count > 0, sort them by (count, -id) with "
    "np.lexsort((-ids, counts[ids])), and mark the first len(ids) // 2 as rare; a "
    "count threshold (median) would put too many tied types in one half."))
def check_rare_half(attempt: Attempt) -> str:
    """Check ``rare_half(counts)``: True for the rarest half of the seen token types.

    Types with count 0 are in neither half; the seen types are ranked by count, ties
    broken so that the higher id counts as rarer, and the ``floor(n / 2)`` first are
    rare.
    """
    return attempt.compare(_counts_cases(),
                           lambda c: f"{int((c['counts'] > 0).sum())} seen types",
                           "count vectors, ties and unseen types included", atol=0)


# --- effective dimensionality ---------------------------------------------------------


def reference_effective_dimensionality(acts, variance_share=0.95):
    """Reference of :func:`check_effective_dimensionality`: the package's
    :func:`~twotower.analysis.neuron_stats.coactivation`."""
    return coactivation(acts, variance_share).effective_dimensionality


def _activation_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(121)
    shared = rng.standard_normal((300, 2))
    return [dict(acts=shared @ rng.standard_normal((2, 10)) + 0.05
                 * rng.standard_normal((300, 10)), variance_share=0.95),
            dict(acts=rng.standard_normal((500, 8)) * np.linspace(0.2, 5, 8) + 3.0,
                 variance_share=0.95),
            dict(acts=rng.standard_normal((200, 16)), variance_share=0.5),
            dict(acts=rng.standard_normal((400, 6)) + 50.0, variance_share=0.95)]


@exercise(reference_effective_dimensionality, hint=(
    "Hint: centre each column, take the squared singular values "
    "(np.linalg.svd(..., compute_uv=False) ** 2), find the first k whose cumulative "
    "share reaches variance_share, and return k / G; do not scale the columns to unit "
    "variance."))
def check_effective_dimensionality(attempt: Attempt) -> str:
    """Check ``effective_dimensionality(acts, variance_share=0.95)``: principal
    components of the centred (N, G) activations needed for ``variance_share`` of the
    variance, divided by G."""
    return attempt.compare(
        _activation_cases(),
        lambda c: f"acts {c['acts'].shape}, share {c['variance_share']}",
        "groups: shared, scaled and independent neurons", atol=1e-9)
