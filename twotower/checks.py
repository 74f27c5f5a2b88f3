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

from .preference import half_assignment, preference_array, split_half
from .readouts import TokenScores

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
    scores = TokenScores(np.asarray(targets), np.stack([logp_a, logp_b]),
                         np.asarray(logp_a))
    return split_half(scores, vocab_size, min_count, half=half).r


def alternate_halves(targets: np.ndarray) -> np.ndarray:
    """0/1 per position: each token's occurrences go alternately to half 0 and half 1.

    Args:
        targets: ``(N,)`` int token ids.

    Returns:
        ``(N,)`` int array of 0 and 1, balanced within every token.
    """
    return half_assignment(np.asarray(targets), seed=None).astype(int)


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


# --- Chapter 2: a language with a planted division ---
# (book/02_planted_division.ipynb)


def _conditional_entropy(condition, target):
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


@_exercise(_conditional_entropy)
def check_conditional_entropy(conditional_entropy: Callable) -> None:
    """Check ``conditional_entropy(condition, target)``: the plug-in ``H(target |
    condition)`` in nats, from the counts of the pairs and of the conditions."""
    __tracebackhide__ = True
    name = "check_conditional_entropy"
    hint = ("Hint: H(target | condition) = H(condition, target) - H(condition), both "
            "from relative frequencies (count / n) and natural logarithms; a target "
            "that is a function of the condition has entropy 0.")
    cases = _entropy_cases()
    for case in cases:
        got = _call(name, conditional_entropy, case)
        if np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                        f"number. {hint}")
        _assert_close(name, got, _conditional_entropy(**case),
                      f"{case['target'].size} pairs", hint, atol=1e-9)
    _passed(name, f"{len(cases)} cases, a deterministic successor has entropy 0")


def _split_correlation(pref, labels):
    pref, labels = np.asarray(pref, dtype=float), np.asarray(labels)
    keep = np.isfinite(pref) & np.isin(labels, ("local", "topic"))
    is_local = (labels[keep] == "local").astype(float)
    return float(abs(np.corrcoef(pref[keep], is_local)[0, 1]))


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


@_exercise(_split_correlation)
def check_split_correlation(split_correlation: Callable) -> None:
    """Check ``split_correlation(pref, labels)``: |Pearson r| between ``pref`` and a
    0/1 "is local" variable over the local and topic tokens whose pref is finite."""
    __tracebackhide__ = True
    name = "check_split_correlation"
    hint = ("Hint: keep the tokens labelled 'local' or 'topic' (not 'special') whose "
            "pref is not NaN, correlate pref with (label == 'local') as 0/1, and "
            "return the absolute value: which tower is called A is arbitrary.")
    cases = _split_cases()
    for case in cases:
        got = _call(name, split_correlation, case)
        if np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                        f"number. {hint}")
        _assert_close(name, got, _split_correlation(**case),
                      f"{int(np.isnan(case['pref']).sum())} NaN, 5 special tokens", hint)
    _passed(name, f"{len(cases)} cases, sign ignored, special tokens and NaN left out")


def _permutation_p_value(pref, is_local, n_perm=2000, seed=0):
    pref, is_local = np.asarray(pref, dtype=float), np.asarray(is_local, dtype=float)
    rng = np.random.default_rng(seed)
    observed = abs(np.corrcoef(pref, is_local)[0, 1])
    # all shuffles at once: row i of `shuffled` is one random relabelling
    shuffled = is_local[np.argsort(rng.random((n_perm, is_local.size)), axis=1)]
    z = (pref - pref.mean()) / pref.std()
    centred = shuffled - shuffled.mean(1, keepdims=True)
    null = np.abs(centred @ z / (pref.size * centred.std(1)))
    return float((1 + (null >= observed - 1e-12).sum()) / (1 + n_perm))


def _permutation_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(22)
    cases = []
    for n, effect in ((40, 2.0), (40, -2.0), (60, 0.0), (50, 0.35)):
        is_local = (np.arange(n) % 2).astype(float)
        cases.append(dict(pref=rng.normal(0, 1, n) + effect * is_local,
                          is_local=is_local, n_perm=2000))
    return cases


@_exercise(_permutation_p_value)
def check_permutation_p_value(permutation_p_value: Callable) -> None:
    """Check ``permutation_p_value(pref, is_local, n_perm, seed)``: the two-sided
    permutation p-value of |r|, ``(1 + #{|r_shuffled| >= |r|}) / (1 + n_perm)``.

    The reader's random numbers differ from the reference's, so the p-values are
    compared within Monte Carlo error (0.04), and exactly where the answer is known.
    """
    __tracebackhide__ = True
    name = "check_permutation_p_value"
    hint = ("Hint: shuffle is_local n_perm times, compare the |r| of each shuffle with "
            "the observed |r| (two-sided: a strongly negative r is as surprising as a "
            "positive one), and count the observed labelling too: (1 + hits) / "
            "(1 + n_perm), so the p-value is never 0.")
    for case in _permutation_cases():
        got = _call(name, permutation_p_value, case)
        if np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                        f"number. {hint}")
        expected = _permutation_p_value(**{**case, "n_perm": 20_000}, seed=1)
        floor = 1 / (1 + case["n_perm"])
        if expected < floor:  # no shuffle beats a strong effect: the answer is exact
            expected = floor
        _assert_close(name, got, expected, f"n={case['pref'].size}, true r = "
                      f"{np.corrcoef(case['pref'], case['is_local'])[0, 1]:+.2f}", hint,
                      atol=0.04 if expected > 0.01 else 1e-9)
    _passed(name, "4 cases: strong (either sign), none, weak")


# --- Chapter 3: Data and tokens ---
# (book/03_data_and_tokens.ipynb)


def _rank_frequency(ids, special_ids=()):
    ids = np.asarray(ids, dtype=np.int64).ravel()
    counts = np.bincount(ids)
    special = np.asarray(special_ids, dtype=np.int64)
    counts[special[special < counts.size]] = 0
    return np.sort(counts[counts > 0])[::-1]


def _rank_frequency_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(30)
    cases = []
    for n, vocab, special in ((2000, 50, (0, 1, 2, 3, 4)), (500, 300, ()),
                              (5000, 1000, (0, 100, 101, 102, 103))):
        ids = np.minimum(rng.zipf(1.3, n), vocab) - 1  # ids 0 .. vocab-1, Zipf-like
        cases.append(dict(ids=ids, special_ids=special))
    windows = rng.integers(5, 40, size=(8, 16))  # 2-D windows with [CLS] and PAD
    windows[:, 0], windows[:, 12:] = 2, 0
    cases.append(dict(ids=windows, special_ids=(0, 1, 2, 3, 4)))
    return cases


@_exercise(_rank_frequency)
def check_rank_frequency(rank_frequency: Callable) -> None:
    """Check ``rank_frequency(ids, special_ids)``: how often each token id occurs,
    special ids left out, sorted from the most to the least frequent, without zeros.
    """
    __tracebackhide__ = True
    name = "check_rank_frequency"
    hint = ("Hint: np.bincount counts every id (flatten 2-D windows first); set the "
            "counts of the special ids to 0, drop the zeros (ids never seen) and sort "
            "in descending order: element r-1 is the frequency of rank r.")
    cases = _rank_frequency_cases()
    for case in cases:
        got = _call(name, rank_frequency, case)
        _assert_close(name, got, _rank_frequency(**case),
                      f"ids of shape {case['ids'].shape}, special ids "
                      f"{case['special_ids']}", hint, atol=0)
    _passed(name, f"{len(cases)} cases, special ids and unseen ids left out")


_FERTILITY_TEXT = (
    "the european lobster is a species of clawed lobster from the eastern atlantic "
    "ocean . it is closely related to the american lobster . lobsters are blue in life "
    "and become red on cooking . the female carries the eggs for up to a year . "
)


def _tiny_tokenizer():
    from .tokenizer import train_wordpiece

    return train_wordpiece([_FERTILITY_TEXT] * 5, vocab_size=120)


def _fertility(words, tokenizer):
    encodings = tokenizer.encode_batch(list(words), add_special_tokens=False)
    return np.array([len(encoding.ids) for encoding in encodings], dtype=np.int64)


@_exercise(_fertility)
def check_fertility(fertility: Callable) -> None:
    """Check ``fertility(words, tokenizer)``: the number of WordPiece tokens of each
    word, without ``[CLS]`` and ``[SEP]``.
    """
    __tracebackhide__ = True
    name = "check_fertility"
    hint = ("Hint: tokenizer.encode(word, add_special_tokens=False).ids holds the "
            "word's pieces (encode adds [CLS] and [SEP] unless told not to); return one "
            "count per word, in order (encode_batch does all words at once).")
    tokenizer = _tiny_tokenizer()
    cases = [dict(words=["the", "lobster", "lobsters", "Cooking", "eggs"],
                  tokenizer=tokenizer),
             dict(words=["homarus", "gammarus", "ζ", "carapace", "a", "hard-shelled"],
                  tokenizer=tokenizer),
             dict(words=_FERTILITY_TEXT.split()[:30], tokenizer=tokenizer)]
    for case in cases:
        got = _call(name, fertility, case)
        _assert_close(name, got, _fertility(**case), f"words {case['words'][:4]}...",
                      hint, atol=0)
    _passed(name, f"{len(cases)} word lists, unknown and split words included")


def _windows_crossing_articles(label_windows, special_ids):
    windows = np.asarray(label_windows, dtype=np.int64)
    real = ~np.isin(windows, np.asarray(special_ids, dtype=np.int64))
    big = np.iinfo(np.int64).max
    lowest = np.where(real, windows, big).min(axis=1)
    highest = np.where(real, windows, -big).max(axis=1)
    return real.any(axis=1) & (highest > lowest)


def _crossing_cases() -> list[dict[str, Any]]:
    from .data import TokenStream, make_windows
    from .tokenizer import SpecialIds

    rng = np.random.default_rng(31)
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    cases = []
    for n_articles, max_len in ((12, 16), (40, 9)):
        lengths = rng.integers(1, 60, n_articles)
        offsets = np.r_[0, np.cumsum(lengths)]
        labels = np.repeat(np.arange(n_articles), lengths) + 10  # article of each token
        windows = make_windows(TokenStream(labels, offsets), max_len, special)
        cases.append(dict(label_windows=windows, special_ids=special.all))
        body = max_len - 1  # the authors' packing: cut the stream, ignore articles
        packed = labels[: labels.size // body * body].reshape(-1, body)
        cases.append(dict(label_windows=np.c_[np.full(len(packed), special.cls), packed],
                          special_ids=special.all))
    return cases


@_exercise(_windows_crossing_articles)
def check_windows_crossing_articles(windows_crossing_articles: Callable) -> None:
    """Check ``windows_crossing_articles(label_windows, special_ids)``: one bool per
    window, True when its non-special tokens come from more than one article.
    """
    __tracebackhide__ = True
    name = "check_windows_crossing_articles"
    hint = ("Hint: in label_windows every real token is the number of its article; "
            "ignore the special ids ([CLS], PAD, ...) and flag a row whose remaining "
            "labels are not all equal (compare the row's min and max over real tokens).")
    cases = _crossing_cases()
    for case in cases:
        got = _call(name, windows_crossing_articles, case)
        expected = _windows_crossing_articles(**case)
        _assert_close(name, np.asarray(got, dtype=float) if np.ndim(got) else got,
                      expected.astype(float), f"{len(expected)} windows, "
                      f"{int(expected.sum())} crossing", hint, atol=0)
    _passed(name, f"{len(cases)} window sets, ours and naively packed ones")


# --- Chapter 4: Three kinds of tower ---
# (book/04_three_kinds_of_tower.ipynb)


def position_influence(forward: Callable, ids, changed) -> np.ndarray:
    """How much each output position moves when one input token is replaced.

    Introduced in chapter 4 (*Three kinds of tower*) to check for leakage: row ``j +
    1`` of one batch is ``ids`` with token ``j`` replaced by ``changed[j]``, row 0 the
    original, and ``forward`` runs all of them at once.

    Args:
        forward: ``(B, T) ids -> (B, T, ...)`` float outputs (logits, or a hooked
            stream), computed without dropout (call ``model.eval()`` first).
        ids: ``(T,)`` token ids.
        changed: ``(T,)`` replacement ids, ``changed[j] != ids[j]``.

    Returns:
        ``(T, T)`` array: entry ``[i, j]`` is the largest absolute change of the output
        at position i when input token j is replaced (0 where i cannot see j).
    """
    import torch

    ids = torch.as_tensor(ids, dtype=torch.long)
    T = ids.shape[0]
    batch = ids.repeat(T + 1, 1)  # (T+1, T)
    batch[torch.arange(1, T + 1), torch.arange(T)] = torch.as_tensor(changed).long()
    with torch.no_grad():
        out = forward(batch).float().reshape(T + 1, T, -1)  # (T+1, T, F)
    change = (out[1:] - out[:1]).abs().amax(dim=-1)  # (T changed j, T output i)
    return change.T.cpu().numpy()


def _causal_mask(T):
    import torch

    from .layers import attention_by_hand

    g = torch.Generator().manual_seed(T)
    q, k, v = torch.randn(3, T, 4, generator=g)
    _, weights = attention_by_hand(q, k, v, causal=True)  # the package's mask at work
    return (weights == 0).numpy()


@_exercise(_causal_mask)
def check_causal_mask(causal_mask: Callable) -> None:
    """Check ``causal_mask(T)``: a ``(T, T)`` bool array, True where query position i
    must NOT attend to key position j (the future, j > i)."""
    __tracebackhide__ = True
    name = "check_causal_mask"
    hint = ("Hint: position i may attend to itself and to the past (j <= i); the mask "
            "is True strictly above the diagonal (np.triu with k=1, or torch.triu(..., "
            "diagonal=1)).")
    for T in (1, 2, 5, 16):
        got = _call(name, causal_mask, dict(T=T))
        _assert_close(name, np.asarray(got, dtype=float) if np.ndim(got) else got,
                      _causal_mask(T).astype(float), f"T={T}", hint, atol=0)
    _passed(name, "T = 1, 2, 5, 16: the future is masked, the present is not")


def _mask_tokens(ids, special, n_tokens, generator, mlm_probability=0.15):
    from .objectives import Objective

    objective = Objective(family="mlm", special_ids=special.all, pad_id=special.pad,
                          cls_id=special.cls, mask_id=special.mask, n_tokens=n_tokens,
                          mlm_probability=mlm_probability)
    batch = objective.make_batch(ids.numpy(), generator)
    return batch.input_ids, batch.targets


def _masking_statistics(ids, inputs, targets, special):
    """Shares that define BERT masking, from one (inputs, targets) pair."""
    import torch

    is_special = torch.isin(ids, torch.tensor(special.all))
    selected = targets != -100
    n_selected = max(int(selected.sum()), 1)
    masked = selected & (inputs == special.mask)
    kept = selected & (inputs == ids)
    return {"selected": float(selected.sum()) / float((~is_special).sum()),
            "[MASK]": float(masked.sum()) / n_selected,
            "random": float((selected & ~masked & ~kept).sum()) / n_selected,
            "kept": float(kept.sum()) / n_selected}


def _masking_problem(ids, inputs, targets, special, n_tokens) -> str:
    import torch

    if tuple(inputs.shape) != tuple(ids.shape) or tuple(targets.shape) != \
            tuple(ids.shape):
        return f"returned shapes {tuple(inputs.shape)}, {tuple(targets.shape)}, " \
               f"expected two of {tuple(ids.shape)}"
    selected = targets != -100
    is_special = torch.isin(ids, torch.tensor(special.all))
    if (selected & is_special).any():
        return "a special position ([CLS], [SEP], PAD, [UNK], ...) was selected"
    if (targets[selected] != ids[selected]).any():
        return "a target is not the original token at its position"
    if (inputs[~selected] != ids[~selected]).any():
        return "an input changed at a position that has no target"
    changed = selected & (inputs != ids) & (inputs != special.mask)
    bad = inputs[changed]
    if torch.isin(bad, torch.tensor(special.all)).any() or (bad >= n_tokens).any():
        return "a random replacement is a special id or not below n_tokens"
    return ""


@_exercise(_mask_tokens)
def check_mask_tokens(mask_tokens: Callable) -> None:
    """Check ``mask_tokens(ids, special, n_tokens, generator, mlm_probability)``:
    BERT's masking, returning ``(inputs, targets)``.

    The reader's random draws differ from the package's, so the shares of selected,
    ``[MASK]``, random and kept positions are compared with those of the package's
    :class:`~twotower.objectives.Objective` within 5 standard errors, and the rules
    (specials never selected, targets = original tokens, nothing else changed,
    replacements never special) are checked exactly.
    """
    __tracebackhide__ = True
    import torch

    from .tokenizer import SpecialIds

    name = "check_mask_tokens"
    hint = ("Hint: select each non-special position with probability mlm_probability "
            "(draw from generator=...); targets = the token there, -100 elsewhere; of "
            "the selected, 80% become special.mask, 10% a random non-special id below "
            "n_tokens, 10% stay as they are.")
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    g = torch.Generator().manual_seed(40)
    ids = torch.randint(5, 60, (256, 128), generator=g)
    ids[:, 0], ids[:, -20:], ids[::7, 40] = special.cls, special.pad, special.unk
    ids[:, 60] = special.sep
    for p in (0.15, 0.4):
        case = dict(ids=ids.clone(), special=special, n_tokens=60,
                    generator=torch.Generator().manual_seed(1), mlm_probability=p)
        got = _call(name, mask_tokens, case)
        again = _call(name, mask_tokens, {**case, "ids": ids.clone(),
                                          "generator": torch.Generator().manual_seed(1)})
        if not isinstance(got, tuple) or len(got) != 2:
            raise _Fail(f"✘ {name}: return a pair (inputs, targets), got "
                        f"{type(got).__name__}. {hint}")
        inputs, targets = (torch.as_tensor(t) for t in got)
        problem = _masking_problem(ids, inputs, targets, special, 60)
        if problem:
            raise _Fail(f"✘ {name}: {problem} (mlm_probability={p}). {hint}")
        if any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
               for a, b in zip(got, again)):
            raise _Fail(f"✘ {name}: two calls with generators of the same seed gave "
                        f"different masks; draw every random number from the "
                        f"generator argument. {hint}")
        reference = _mask_tokens(**{**case, "generator":
                                    torch.Generator().manual_seed(2)})
        mine = _masking_statistics(ids, inputs, targets, special)
        theirs = _masking_statistics(ids, *reference, special)
        eligible = float((~torch.isin(ids, torch.tensor(special.all))).sum())
        for key, share in theirs.items():  # n: positions each share is taken over
            n = eligible * (1.0 if key == "selected" else theirs["selected"])
            tolerance = 5 * np.sqrt(2 * max(share * (1 - share), 0.01) / n)
            if abs(mine[key] - share) > tolerance:
                raise _Fail(f"✘ {name}: share '{key}' is {mine[key]:.3f}, the "
                            f"package's is {share:.3f} (mlm_probability={p}). {hint}")
    _passed(name, "rules exact, shares 15% / 80-10-10 within 5 standard errors")


_INFLUENCE_FAMILIES = ("causal", "mlm", "bilm")


def _predicted_influence(family, T):
    import torch

    from .config import ModelConfig
    from .model import SingleTowerLM

    cfg = ModelConfig(family=family, n_layers=2, d_model=16, n_heads=2,
                      d_ff=24 if family == "bilm" else 32, vocab_size=64, max_len=T,
                      dropout=0.0)
    torch.manual_seed(T)
    model = SingleTowerLM(cfg).eval()
    g = torch.Generator().manual_seed(T)
    ids = torch.randint(5, 64, (T,), generator=g)
    changed = 5 + (ids - 5 + torch.randint(1, 59, (T,), generator=g)) % 59
    influence = position_influence(model, ids, changed)  # measured, not assumed
    return influence > 1e-6 * influence.max()


@_exercise(_predicted_influence)
def check_predicted_influence(predicted_influence: Callable) -> None:
    """Check ``predicted_influence(family, T)``: a ``(T, T)`` bool array, True where
    the prediction at position i can change when the input token at position j
    changes, for ``family`` in causal, mlm, bilm. The answer is measured on small
    models of the package with :func:`position_influence`."""
    __tracebackhide__ = True
    name = "check_predicted_influence"
    hint = ("Hint: row i is the output position, column j the changed input. The causal "
            "prediction at i (of token i+1) reads tokens 0..i; the masked LM reads every "
            "position (the [MASK] in the input hides the target); the biLM's forward "
            "stream reads j < i and its backward stream j > i, never i itself.")
    for family in _INFLUENCE_FAMILIES:
        for T in (4, 9):
            got = _call(name, predicted_influence, dict(family=family, T=T))
            _assert_close(name, np.asarray(got, dtype=float) if np.ndim(got) else got,
                          _predicted_influence(family, T).astype(float),
                          f"family={family!r}, T={T}", hint, atol=0)
    _passed(name, "causal, mlm and bilm, each measured on a small model")


# --- Chapter 5: Two towers, one head ---
# (book/05_two_towers_one_head.ipynb)


def _fused_head_parameters(width, vocab_size):
    import torch

    from .model import FusedHead

    with torch.device("meta"):  # counts shapes only: no memory for a large vocabulary
        head = FusedHead(width, vocab_size)
    return sum(p.numel() for p in head.parameters())


@_exercise(_fused_head_parameters)
def check_fused_head_parameters(fused_head_parameters: Callable) -> None:
    """Check ``fused_head_parameters(width, vocab_size)``: the number of parameters of
    :class:`~twotower.model.FusedHead`, the tied decoder weight not counted (it is the
    embedding)."""
    __tracebackhide__ = True
    name = "check_fused_head_parameters"
    hint = ("Hint: two LayerNorms of width W (a scale and a shift each), one dense "
            "W x W layer with its bias, and the decoder's bias of V; the decoder weight "
            "is the token embedding, counted there, not here.")
    sizes = ((8, 10), (128, 2048), (256, 8192), (768, 30528))
    for width, vocab in sizes:
        got = _call(name, fused_head_parameters, dict(width=width, vocab_size=vocab))
        if np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                        f"number. {hint}")
        _assert_close(name, got, _fused_head_parameters(width, vocab),
                      f"width={width}, vocab_size={vocab}", hint, atol=0, rtol=0)
    _passed(name, f"{len(sizes)} sizes, up to BERT's vocabulary")


def _zero_tower_hook(tower):
    def hook(activation, point):
        activation = activation.clone()
        activation[tower] = 0.0  # tower-leading layout: (K, B, T, D)
        return activation

    return hook


@_exercise(_zero_tower_hook)
def check_zero_tower_hook(zero_tower_hook: Callable) -> None:
    """Check ``zero_tower_hook(tower)``: a hook ``fn(activation, hook_point)`` that,
    attached to ``"tower_out"`` ``(K, B, T, D)``, zeroes the output of one tower."""
    __tracebackhide__ = True
    import torch

    from .config import ModelConfig
    from .model import TwoTowerLM

    name = "check_zero_tower_hook"
    hint = ("Hint: tower activations have the tower as their FIRST axis (K, B, T, D); "
            "return a copy with activation[tower] set to 0 (a hook that returns a "
            "tensor replaces the activation).")
    for family in ("causal", "mlm"):
        cfg = ModelConfig(family=family, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                          vocab_size=64, max_len=12, dropout=0.0)
        torch.manual_seed(5)
        model = TwoTowerLM(cfg).eval()
        ids = torch.randint(5, 64, (3, 12), generator=torch.Generator().manual_seed(6))
        for tower in (0, 1):
            hook = _call(name, zero_tower_hook, dict(tower=tower))
            if not callable(hook):
                raise _Fail(f"✘ {name}: zero_tower_hook({tower}) returned "
                            f"{type(hook).__name__}, expected a function. {hint}")
            with torch.no_grad():
                try:
                    with model.hooks([("tower_out", hook)]):
                        got = model(ids)
                except Exception as error:
                    raise _Fail(f"✘ {name}: your hook raised {type(error).__name__}: "
                                f"{error}. {hint}") from None
                with model.hooks([("tower_out", _zero_tower_hook(tower))]):
                    expected = model(ids)
            _assert_close(name, got.numpy(), expected.numpy(),
                          f"family={family!r}, tower={tower}", hint, atol=1e-5)
    _passed(name, "tower 0 and tower 1, causal and masked LM")
