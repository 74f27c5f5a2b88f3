"""Exercise checks of chapter 1 (*Is language divisible?*), and its toy scores.

Introduced in chapter 1 (*Is language divisible?*): the token preference of two made-up
towers (:func:`toy_scores`), centred, and its split-half correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from twotower.analysis.preference import half_assignment, preference_array, split_half
from twotower.book.exercises.framework import Attempt, exercise
from twotower.data.scores import TokenScores


@dataclass(frozen=True)
class ToyScores:
    """Per-position log-probabilities of the true token under two made-up towers.

    Attributes:
        targets: ``(N,)`` int, the token id at each scored position.
        logp_a: ``(N,)`` float, log-probability of the true token under tower A.
        logp_b: ``(N,)`` float, the same under tower B.
        true_pref: ``(V,)`` float, the planted preference of every token (NaN for
            tokens that never occur).
        vocab_size: V.
    """

    targets: np.ndarray
    logp_a: np.ndarray
    logp_b: np.ndarray
    true_pref: np.ndarray
    vocab_size: int


def toy_scores(n_positions: int = 20_000, vocab_size: int = 500, *, seed: int = 0,
               gap: float = 0.0, spread: float = 0.3, noise: float = 1.5,
               zipf: float = 1.1) -> ToyScores:
    """Simulate what two towers' readouts would score, with a known answer.

    Token ids are drawn from a Zipf law (id 0 most frequent). Every token v gets a
    difficulty ``d(v)`` (rarer tokens are harder) and a planted preference
    ``p(v) ~ Normal(gap, spread)``. At each position the log-probability of the true
    token is ``-d(v) + p(v)/2 + noise`` under tower A and ``-d(v) - p(v)/2 + noise``
    under tower B, with independent Gaussian noise of scale ``noise`` per tower.

    Args:
        n_positions: Number of scored positions N.
        vocab_size: Number of token types V.
        seed: Seed of the generator.
        gap: Mean planted preference: a tower that is better on every token.
        spread: Standard deviation of the planted preference over tokens.
        noise: Standard deviation of the per-position noise of each tower.
        zipf: Exponent of the Zipf law of token frequencies.

    Returns:
        The simulated scores and the planted preference.
    """
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1, dtype=float)
    frequency = ranks ** -zipf
    targets = rng.choice(vocab_size, size=n_positions, p=frequency / frequency.sum())
    difficulty = 2.0 + 0.8 * np.log(ranks)
    planted = rng.normal(gap, spread, size=vocab_size)
    base = -difficulty[targets]
    logp_a = base + planted[targets] / 2 + rng.normal(0.0, noise, n_positions)
    logp_b = base - planted[targets] / 2 + rng.normal(0.0, noise, n_positions)
    seen = np.bincount(targets, minlength=vocab_size) > 0
    return ToyScores(targets=targets, logp_a=logp_a, logp_b=logp_b,
                     true_pref=np.where(seen, planted, np.nan), vocab_size=vocab_size)


def alternate_halves(targets: np.ndarray) -> np.ndarray:
    """0/1 per position: each token's occurrences go alternately to half 0 and half 1.

    Args:
        targets: ``(N,)`` int token ids.

    Returns:
        ``(N,)`` int array of 0 and 1, balanced within every token.
    """
    return half_assignment(np.asarray(targets), seed=None).astype(int)


# --- token preference -----------------------------------------------------------------


def reference_token_preference(logp_a, logp_b, targets, vocab_size, min_count=5):
    """Reference of :func:`check_token_preference`: the package's preference array."""
    return preference_array(targets, logp_a, logp_b, vocab_size, min_count)


def _preference_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    cases = []
    for n, vocab, min_count in ((40, 6, 1), (300, 25, 5), (1000, 80, 3), (12, 10, 2)):
        targets = rng.integers(0, vocab - 2, size=n)  # the last two ids never occur
        cases.append(dict(logp_a=-rng.gamma(2.0, 1.5, n),
                          logp_b=-rng.gamma(2.0, 1.5, n), targets=targets,
                          vocab_size=vocab, min_count=min_count))
    return cases


@exercise(reference_token_preference, hint=(
    "Hint: pref[v] = mean of logp_a over positions whose target is v, minus the same "
    "mean of logp_b; tokens with fewer than min_count occurrences are NaN, never 0 "
    "(np.bincount with weights= does the sums)."))
def check_token_preference(attempt: Attempt) -> str:
    """Check ``token_preference(logp_a, logp_b, targets, vocab_size, min_count)``.

    Expected: an array of shape ``(vocab_size,)`` with ``mean(logp_a) - mean(logp_b)``
    over the occurrences of each token, and NaN for tokens seen fewer than
    ``min_count`` times.
    """
    return attempt.compare(
        _preference_cases(),
        lambda c: f"vocab_size={c['vocab_size']}, min_count={c['min_count']}",
        "cases, rare tokens are NaN")


# --- centred preference ---------------------------------------------------------------


def reference_centred_preference(pref):
    """Reference of :func:`check_centred_preference`: ``pref`` minus its NaN-mean."""
    pref = np.asarray(pref, dtype=float)
    return pref - np.nanmean(pref)


def _centred_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(2)
    cases = []
    for size, shift in ((10, 0.0), (50, 0.8), (200, -1.3)):
        pref = rng.normal(shift, 0.5, size)
        pref[rng.random(size) < 0.3] = np.nan
        cases.append(dict(pref=pref))
    return cases


@exercise(reference_centred_preference, hint=(
    "Hint: subtract the mean over the tokens that have a value (np.nanmean), and keep "
    "NaN as NaN."))
def check_centred_preference(attempt: Attempt) -> str:
    """Check ``centred_preference(pref)``: ``pref`` minus its mean over tokens.

    NaN entries (rare tokens) stay NaN and are left out of the mean.
    """
    return attempt.compare(
        _centred_cases(),
        lambda c: f"{int(np.isnan(c['pref']).sum())} NaN of {c['pref'].size}",
        "cases, NaN kept")


# --- split-half correlation -----------------------------------------------------------


def reference_split_half_correlation(logp_a, logp_b, targets, half, vocab_size,
                                     min_count=5):
    """Reference of :func:`check_split_half_correlation`: the package's split half."""
    scores = TokenScores(np.asarray(targets), np.stack([logp_a, logp_b]),
                         np.asarray(logp_a))
    return split_half(scores, vocab_size, min_count, half=half).r


def _split_half_cases() -> list[dict[str, Any]]:
    cases = []
    for seed, spread in ((0, 0.6), (1, 0.1), (2, 0.0)):
        toy = toy_scores(4000, 120, seed=seed, spread=spread, noise=1.0)
        cases.append(dict(logp_a=toy.logp_a, logp_b=toy.logp_b, targets=toy.targets,
                          half=alternate_halves(toy.targets), vocab_size=toy.vocab_size,
                          min_count=4))
    return cases


@exercise(reference_split_half_correlation, hint=(
    "Hint: compute pref separately on the positions with half == 0 and with half == 1 "
    "(min_count applies within each half), keep the tokens finite in BOTH halves, and "
    "return np.corrcoef(...)[0, 1] as a float."))
def check_split_half_correlation(attempt: Attempt) -> str:
    """Check ``split_half_correlation(logp_a, logp_b, targets, half, vocab_size,
    min_count)``: Pearson r between the preferences computed on the two halves.
    """
    return attempt.compare(_split_half_cases(), lambda c: "toy scores", "toy runs",
                           scalar=True)
