"""Checks for the book's exercises (ARENA style).

Introduced in chapter 1 (*Is language divisible?*).

An exercise in a chapter is a stub cell, a hidden solution, and a check cell::

    twotower.checks.check_token_preference(token_preference)

Every ``check_*`` calls the reader's function on several inputs, compares the result
with a reference implementation, and prints one line ``✔ check_... passed: ...``. On a
mismatch it raises :class:`AssertionError` whose message says what differed and gives a
hint; it never lets a traceback from inside NumPy or torch through.

Adding a check (for the authors of later chapters): write the reference as a private
function, decorate the check with ``@_exercise(reference)``, compare with the helpers
``_call``, ``_assert_close`` and ``_passed``, put it under its chapter's
header below, and add a broken variant to ``tests/test_checks.py`` (a test fails for any
check without one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# --- framework ------------------------------------------------------------------------


class _Fail(AssertionError):
    """An exercise check failed (raised without the chain of library frames)."""


def _exercise(reference: Callable) -> Callable:
    """Attach the reference implementation to a check, so tests can find it."""

    def decorate(check: Callable) -> Callable:
        check.reference = reference
        return check

    return decorate


def _describe(kwargs: dict[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            parts.append(f"{key}=<array shape {value.shape}>")
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


def _call(name: str, function: Callable, kwargs: dict[str, Any]) -> Any:
    """Call the reader's function with copies of the inputs; report a crash briefly."""
    __tracebackhide__ = True
    if not callable(function):
        raise _Fail(f"✘ {name}: expected a function, got {type(function).__name__}; "
                    "pass the function itself, without calling it")
    copies = {key: value.copy() if isinstance(value, np.ndarray) else value
              for key, value in kwargs.items()}
    try:
        return function(**copies)
    except NotImplementedError:
        raise _Fail(f"✘ {name}: the function still raises NotImplementedError; replace "
                    "that line with your code") from None
    except Exception as error:  # the reader's bug, shown in one line
        raise _Fail(f"✘ {name}: your function raised {type(error).__name__}: {error} "
                    f"(inputs: {_describe(kwargs)})") from None


def _assert_close(name: str, got: Any, expected: np.ndarray | float, case: str,
                  hint: str = "", atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Compare arrays or numbers, NaN in the same places, with a readable message."""
    __tracebackhide__ = True
    expected = np.asarray(expected, dtype=float)
    try:
        got_array = np.asarray(got, dtype=float)
    except (TypeError, ValueError):
        raise _Fail(f"✘ {name}: returned {type(got).__name__}, expected numbers "
                    f"({case}). {hint}".strip()) from None
    if got_array.shape != expected.shape:
        raise _Fail(f"✘ {name}: returned shape {got_array.shape}, expected "
                    f"{expected.shape} ({case}). {hint}".strip())
    nan_got, nan_expected = np.isnan(got_array), np.isnan(expected)
    if (nan_got != nan_expected).any():
        where = np.flatnonzero((nan_got != nan_expected).ravel())[:5].tolist()
        raise _Fail(f"✘ {name}: NaN where a number was expected or the other way "
                    f"round, at flat index {where} ({case}). {hint}".strip())
    finite = ~nan_expected
    if not np.allclose(got_array[finite], expected[finite], atol=atol, rtol=rtol):
        error = np.abs(got_array[finite] - expected[finite])
        worst = int(np.argmax(error))
        raise _Fail(f"✘ {name}: values differ from the reference (largest error "
                    f"{error[worst]:.3g}: got {got_array[finite][worst]:.6g}, expected "
                    f"{expected[finite][worst]:.6g}; {case}). {hint}".strip())


def _passed(name: str, detail: str) -> None:
    print(f"✔ {name} passed: {detail}")


# ======================================================================================
# Chapter 1: Is language divisible?  (book/01_is_language_divisible.ipynb)
# ======================================================================================


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


def _token_preference(logp_a, logp_b, targets, vocab_size, min_count=5):
    counts = np.bincount(targets, minlength=vocab_size)
    sum_a = np.bincount(targets, weights=logp_a, minlength=vocab_size)
    sum_b = np.bincount(targets, weights=logp_b, minlength=vocab_size)
    pref = np.full(vocab_size, np.nan)
    enough = counts >= max(min_count, 1)
    pref[enough] = (sum_a[enough] - sum_b[enough]) / counts[enough]
    return pref


def _preference_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    cases = []
    for n, vocab, min_count in ((40, 6, 1), (300, 25, 5), (1000, 80, 3), (12, 10, 2)):
        targets = rng.integers(0, vocab - 2, size=n)  # the last two ids never occur
        cases.append(dict(logp_a=-rng.gamma(2.0, 1.5, n),
                          logp_b=-rng.gamma(2.0, 1.5, n), targets=targets,
                          vocab_size=vocab, min_count=min_count))
    return cases


@_exercise(_token_preference)
def check_token_preference(token_preference: Callable) -> None:
    """Check ``token_preference(logp_a, logp_b, targets, vocab_size, min_count)``.

    Expected: an array of shape ``(vocab_size,)`` with ``mean(logp_a) - mean(logp_b)``
    over the occurrences of each token, and NaN for tokens seen fewer than
    ``min_count`` times.
    """
    __tracebackhide__ = True
    name = "check_token_preference"
    hint = ("Hint: pref[v] = mean of logp_a over positions whose target is v, minus "
            "the same mean of logp_b; tokens with fewer than min_count occurrences are "
            "NaN, never 0 (np.bincount with weights= does the sums).")
    cases = _preference_cases()
    for case in cases:
        got = _call(name, token_preference, case)
        _assert_close(name, got, _token_preference(**case),
                      f"vocab_size={case['vocab_size']}, min_count={case['min_count']}",
                      hint)
    _passed(name, f"{len(cases)} cases, rare tokens are NaN")


def _centred_preference(pref):
    pref = np.asarray(pref, dtype=float)
    return pref - np.nanmean(pref)


@_exercise(_centred_preference)
def check_centred_preference(centred_preference: Callable) -> None:
    """Check ``centred_preference(pref)``: ``pref`` minus its mean over tokens.

    NaN entries (rare tokens) stay NaN and are left out of the mean.
    """
    __tracebackhide__ = True
    name = "check_centred_preference"
    hint = ("Hint: subtract the mean over the tokens that have a value (np.nanmean), "
            "and keep NaN as NaN.")
    rng = np.random.default_rng(2)
    cases = []
    for size, shift in ((10, 0.0), (50, 0.8), (200, -1.3)):
        pref = rng.normal(shift, 0.5, size)
        pref[rng.random(size) < 0.3] = np.nan
        cases.append(dict(pref=pref))
    for case in cases:
        got = _call(name, centred_preference, case)
        _assert_close(name, got, _centred_preference(**case),
                      f"{int(np.isnan(case['pref']).sum())} NaN of {case['pref'].size}",
                      hint)
    _passed(name, f"{len(cases)} cases, NaN kept")


def _split_half_correlation(logp_a, logp_b, targets, half, vocab_size, min_count=5):
    prefs = [_token_preference(logp_a[half == k], logp_b[half == k], targets[half == k],
                               vocab_size, min_count) for k in (0, 1)]
    both = np.isfinite(prefs[0]) & np.isfinite(prefs[1])
    if both.sum() < 3:
        return float("nan")
    return float(np.corrcoef(prefs[0][both], prefs[1][both])[0, 1])


def alternate_halves(targets: np.ndarray) -> np.ndarray:
    """0/1 per position: each token's occurrences go alternately to half 0 and half 1.

    Args:
        targets: ``(N,)`` int token ids.

    Returns:
        ``(N,)`` int array of 0 and 1, balanced within every token.
    """
    targets = np.asarray(targets)
    order = np.argsort(targets, kind="stable")
    sorted_ids = targets[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_ids.size]))
    half = np.empty(targets.size, dtype=int)
    half[order] = (np.arange(targets.size) - run_start) % 2
    return half


@_exercise(_split_half_correlation)
def check_split_half_correlation(split_half_correlation: Callable) -> None:
    """Check ``split_half_correlation(logp_a, logp_b, targets, half, vocab_size,
    min_count)``: Pearson r between the preferences computed on the two halves.
    """
    __tracebackhide__ = True
    name = "check_split_half_correlation"
    hint = ("Hint: compute pref separately on the positions with half == 0 and with "
            "half == 1 (min_count applies within each half), keep the tokens finite in "
            "BOTH halves, and return np.corrcoef(...)[0, 1] as a float.")
    cases = []
    for seed, spread in ((0, 0.6), (1, 0.1), (2, 0.0)):
        toy = toy_scores(4000, 120, seed=seed, spread=spread, noise=1.0)
        cases.append(dict(logp_a=toy.logp_a, logp_b=toy.logp_b, targets=toy.targets,
                          half=alternate_halves(toy.targets), vocab_size=toy.vocab_size,
                          min_count=4))
    for case in cases:
        got = _call(name, split_half_correlation, case)
        if np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned an array of shape {np.shape(got)}, "
                        f"expected one number. {hint}")
        _assert_close(name, got, _split_half_correlation(**case), "toy scores", hint,
                      atol=1e-6)
    _passed(name, f"{len(cases)} toy runs")
