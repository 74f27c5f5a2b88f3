"""Checks for the book's exercises (ARENA style).

Introduced in chapter 1 (*Is language divisible?*).

An exercise in a chapter is a stub cell, a hidden solution, and a check cell::

    twotower.book.exercises.check_token_preference(token_preference)

Every ``check_*`` calls the reader's function on several inputs, compares the result
with a reference implementation, and prints one line ``✔ check_... passed: ...``. On a
mismatch it raises :class:`AssertionError` whose message says what differed and gives a
hint; it never lets a traceback from inside NumPy or torch through.

Adding a check (for the authors of later chapters): write the reference as a private
function, decorate the check with ``@_exercise(reference)``, compare with the helpers
``_compare`` (or, for an unusual result, ``_call``, ``_assert_close`` and ``_passed``),
put it under its chapter's header below, and add a broken variant to ``tests/test_checks.py`` (a test fails for any
check without one).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from twotower.analysis.preference import half_assignment, preference_array, split_half
from twotower.training.readouts import TokenScores

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


def _compare(name: str, function: Callable, reference: Callable,
             cases: list[dict[str, Any]], describe: Callable[[dict], str], hint: str,
             summary: str, *, scalar: bool = False, atol: float = 1e-6,
             rtol: float = 1e-5) -> None:
    """The body of most checks: call the reader's ``function`` on every case, compare
    with ``reference`` (``describe(case)`` says which case differed), then print
    ``✔ ... passed: <number of cases> <summary>``. ``scalar``: one number expected."""
    __tracebackhide__ = True
    for case in cases:
        got = _call(name, function, case)
        if scalar and np.ndim(got) != 0:
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                        f"number. {hint}")
        _assert_close(name, got, reference(**case), describe(case), hint, atol=atol,
                      rtol=rtol)
    _passed(name, f"{len(cases)} {summary}")


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
    _compare(name, token_preference, _token_preference, cases, lambda c:
             f"vocab_size={c['vocab_size']}, min_count={c['min_count']}", hint,
             "cases, rare tokens are NaN")


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
    _compare(name, centred_preference, _centred_preference, cases, lambda c:
             f"{int(np.isnan(c['pref']).sum())} NaN of {c['pref'].size}", hint,
             "cases, NaN kept")


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
    _compare(name, split_half_correlation, _split_half_correlation, cases,
             lambda c: "toy scores", hint, "toy runs", scalar=True)


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
    _compare(name, conditional_entropy, _conditional_entropy, cases,
             lambda c: f"{c['target'].size} pairs", hint,
             "cases, a deterministic successor has entropy 0", scalar=True, atol=1e-9)


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
    _compare(name, split_correlation, _split_correlation, cases, lambda c:
             f"{int(np.isnan(c['pref']).sum())} NaN, 5 special tokens", hint,
             "cases, sign ignored, special tokens and NaN left out", scalar=True)


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
    _compare(name, rank_frequency, _rank_frequency, cases, lambda c:
             f"ids of shape {c['ids'].shape}, special ids {c['special_ids']}", hint,
             "cases, special ids and unseen ids left out", atol=0)


_FERTILITY_TEXT = (
    "the european lobster is a species of clawed lobster from the eastern atlantic "
    "ocean . it is closely related to the american lobster . lobsters are blue in life "
    "and become red on cooking . the female carries the eggs for up to a year . "
)


def _tiny_tokenizer():
    from twotower.data.tokenizer import train_wordpiece

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
            "word's pieces (encode adds [CLS] and [SEP] unless told not to); return "
            "one count per word, in order (encode_batch does all words at once).")
    tokenizer = _tiny_tokenizer()
    cases = [dict(words=["the", "lobster", "lobsters", "Cooking", "eggs"],
                  tokenizer=tokenizer),
             dict(words=["homarus", "gammarus", "ζ", "carapace", "a", "hard-shelled"],
                  tokenizer=tokenizer),
             dict(words=_FERTILITY_TEXT.split()[:30], tokenizer=tokenizer)]
    _compare(name, fertility, _fertility, cases, lambda c: f"words {c['words'][:4]}...",
             hint, "word lists, unknown and split words included", atol=0)


def _windows_crossing_articles(label_windows, special_ids):
    windows = np.asarray(label_windows, dtype=np.int64)
    real = ~np.isin(windows, np.asarray(special_ids, dtype=np.int64))
    big = np.iinfo(np.int64).max
    lowest = np.where(real, windows, big).min(axis=1)
    highest = np.where(real, windows, -big).max(axis=1)
    return real.any(axis=1) & (highest > lowest)


def _crossing_cases() -> list[dict[str, Any]]:
    from twotower.data.windows import TokenStream, make_windows
    from twotower.data.tokenizer import SpecialIds

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
        packed = np.c_[np.full(len(packed), special.cls), packed]
        cases.append(dict(label_windows=packed, special_ids=special.all))
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
            "labels are not all equal (compare the row's min and max over real "
            "tokens).")
    cases = _crossing_cases()
    _compare(name, windows_crossing_articles, _windows_crossing_articles, cases,
             lambda c: f"{len(c['label_windows'])} windows", hint,
             "window sets, ours and naively packed ones", atol=0)


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

    from twotower.models.layers import attention_by_hand

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
    from twotower.data.objectives import Objective

    objective = Objective(family="mlm", special_ids=special.all, pad_id=special.pad,
                          cls_id=special.cls, mask_id=special.mask, n_tokens=n_tokens,
                          mlm_probability=mlm_probability)
    batch = objective.make_batch(ids.numpy(), generator)
    return batch.input_ids, batch.targets


def masking_shares(ids, inputs, targets, special) -> dict[str, float]:
    """The shares that define BERT's masking, read off one masked batch.

    Introduced in chapter 4 (*Three kinds of tower*).

    Args:
        ids: ``(B, T)`` original token ids.
        inputs: ``(B, T)`` ids the model is shown.
        targets: ``(B, T)`` ids to predict, -100 where there is nothing to predict.
        special: the tokenizer's :class:`~twotower.data.tokenizer.SpecialIds`.

    Returns:
        ``selected``: share of the non-special positions that have a target; and, as
        shares of the selected positions, ``[MASK]`` (shown as ``[MASK]``), ``random``
        (shown as another token) and ``kept`` (shown unchanged).
    """
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
    :class:`~twotower.data.objectives.Objective` within 5 standard errors, and the rules
    (specials never selected, targets = original tokens, nothing else changed,
    replacements never special) are checked exactly.
    """
    __tracebackhide__ = True
    import torch

    from twotower.data.tokenizer import SpecialIds

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
        again = _call(name, mask_tokens, {
            **case, "ids": ids.clone(), "generator": torch.Generator().manual_seed(1)})
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
        mine = masking_shares(ids, inputs, targets, special)
        theirs = masking_shares(ids, *reference, special)
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

    from twotower.config import ModelConfig
    from twotower.models.tower_lm import SingleTowerLM

    cfg = ModelConfig(family=family, n_layers=2, d_model=16, n_heads=2,
                      d_ff=8 if family == "bilm" else 32, vocab_size=64, max_len=T,
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
    hint = ("Hint: row i is the output position, column j the changed input. The "
            "causal prediction at i (of token i+1) reads tokens 0..i; the masked LM "
            "reads every position (the [MASK] in the input hides the target); the "
            "biLM's forward stream reads j < i and its backward stream j > i, never i "
            "itself.")
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

    from twotower.models.tower_lm import FusedHead

    with torch.device("meta"):  # counts shapes only: no memory for a large vocabulary
        head = FusedHead(width, vocab_size)
    return sum(p.numel() for p in head.parameters())


@_exercise(_fused_head_parameters)
def check_fused_head_parameters(fused_head_parameters: Callable) -> None:
    """Check ``fused_head_parameters(width, vocab_size)``: the number of parameters of
    :class:`~twotower.models.tower_lm.FusedHead`, the tied decoder weight not counted (it is the
    embedding)."""
    __tracebackhide__ = True
    name = "check_fused_head_parameters"
    hint = ("Hint: two LayerNorms of width W (a scale and a shift each), one dense "
            "W x W layer with its bias, and the decoder's bias of V; the decoder "
            "weight is the token embedding, counted there, not here.")
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

    from twotower.config import ModelConfig
    from twotower.models.tower_lm import TwoTowerLM

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


# --- Chapter 6: Training on a GPU (or not) ---
# (book/06_training.ipynb)


def _learning_rate(step, peak_lr, warmup_steps, total_steps):
    return _schedule(peak_lr, warmup_steps, total_steps)[step]


@functools.lru_cache(maxsize=8)
def _schedule(peak_lr, warmup_steps, total_steps) -> tuple[float, ...]:
    from twotower.config import TrainConfig
    from twotower.book.display import learning_rates

    cfg = TrainConfig(steps=total_steps, warmup_steps=warmup_steps, lr=peak_lr)
    return tuple(learning_rates(cfg))  # make_optimizer's schedule, step by step


@_exercise(_learning_rate)
def check_learning_rate(learning_rate: Callable) -> None:
    """Check ``learning_rate(step, peak_lr, warmup_steps, total_steps)``: the learning
    rate of optimiser step ``step`` (0-based) under the schedule of
    :func:`twotower.training.trainer.make_optimizer`."""
    __tracebackhide__ = True
    name = "check_learning_rate"
    hint = ("Hint: during warm-up (step < warmup_steps) the rate climbs linearly from "
            "peak_lr / warmup_steps at step 0 to peak_lr at step warmup_steps; then it "
            "falls linearly to 0 at step total_steps.")
    schedules = ((1e-3, 100, 600), (2e-3, 10, 120), (0.5, 1, 10), (3e-4, 40, 50))
    cases = 0
    for peak, warmup, total in schedules:
        for step in sorted({0, 1, warmup // 2, warmup - 1, warmup, warmup + 1,
                            (warmup + total) // 2, total - 1, total}):
            got = _call(name, learning_rate, dict(step=step, peak_lr=peak,
                                                  warmup_steps=warmup,
                                                  total_steps=total))
            if np.ndim(got) != 0:
                raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                            f"number. {hint}")
            _assert_close(name, got, _learning_rate(step, peak, warmup, total),
                          f"step={step}, peak_lr={peak}, warmup_steps={warmup}, "
                          f"total_steps={total}", hint, atol=1e-12, rtol=1e-6)
            cases += 1
    _passed(name, f"{cases} steps of {len(schedules)} schedules, warm-up and decay")


def _train_flops_per_token(cfg, n_towers):
    from twotower.models.flops import train_flops_per_token

    return train_flops_per_token(cfg, n_towers)


@_exercise(_train_flops_per_token)
def check_train_flops_per_token(train_flops_per_token: Callable) -> None:
    """Check ``train_flops_per_token(cfg, n_towers)`` for transformer towers against
    :func:`twotower.models.flops.train_flops_per_token` (every position has a target)."""
    __tracebackhide__ = True
    from twotower.config import PRESETS, ModelConfig

    name = "check_train_flops_per_token"
    hint = ("Hint: forward FLOPs per token = 2 W^2 (the K projections W -> D) + "
            "K * n_layers * (2*D*3D + 2*D*D + 2*2*D*F + 2*2*T*D) + 2 W^2 + 2 W V (head "
            "dense and decoder), with W = K * D; training is 3 x forward.")
    configs = [ModelConfig(family="causal", n_layers=1, d_model=8, n_heads=2, d_ff=16,
                           vocab_size=50, max_len=4)]
    configs += [PRESETS[preset][family].model for preset in ("smoke", "small",
                                                             "paper_base")
                for family in ("causal", "mlm")]
    for cfg in configs:
        for n_towers in (1, 2):
            got = _call(name, train_flops_per_token, dict(cfg=cfg, n_towers=n_towers))
            if np.ndim(got) != 0:
                raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected one "
                            f"number. {hint}")
            _assert_close(name, got, _train_flops_per_token(cfg, n_towers),
                          f"n_layers={cfg.n_layers}, d_model={cfg.d_model}, d_ff="
                          f"{cfg.d_ff}, vocab_size={cfg.vocab_size}, max_len="
                          f"{cfg.max_len}, n_towers={n_towers}", hint, atol=0,
                          rtol=1e-9)
    _passed(name, f"{len(configs)} configs, one and two towers")


# --- Chapter 7: Reading each tower alone ---
# (book/07_reading_each_tower_alone.ipynb)


def _readout_optimizer(model, readout, lr, weight_decay):
    import torch

    from twotower.config import TrainConfig
    from twotower.training.readouts import freeze
    from twotower.training.trainer import make_optimizer

    freeze(model)
    cfg = TrainConfig(steps=10, warmup_steps=1, lr=lr, weight_decay=weight_decay)
    optimizer, _ = make_optimizer(readout, cfg, torch.device("cpu"))
    return optimizer


def _state_bytes(module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@_exercise(_readout_optimizer)
def check_readout_optimizer(readout_optimizer: Callable) -> None:
    """Check ``readout_optimizer(model, readout, lr, weight_decay)``: freezes ``model``
    (no gradient, dropout off) and returns an optimiser of the readout's parameters
    only, so that training the readout leaves the model bit-identical."""
    __tracebackhide__ = True
    import torch
    import torch.nn.functional as F

    from twotower.config import ModelConfig
    from twotower.models.tower_lm import TwoTowerLM
    from twotower.training.readouts import Readout

    name = "check_readout_optimizer"
    hint = ("Hint: model.requires_grad_(False) and model.eval() (or "
            "twotower.training.readouts.freeze), then torch.optim.AdamW over "
            "readout.parameters() ONLY: a frozen parameter left in the optimiser is "
            "still shrunk by weight decay whenever it holds a gradient tensor, even "
            "one of zeros (the authors' bug 3).")
    for family, tower in (("causal", 0), ("mlm", 1)):
        cfg = ModelConfig(family=family, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                          vocab_size=40, max_len=8, dropout=0.1)
        torch.manual_seed(7)
        model, readout = TwoTowerLM(cfg), Readout(16, 40)
        before, readout_before = _state_bytes(model), _state_bytes(readout)
        optimizer = _call(name, readout_optimizer, dict(model=model, readout=readout,
                                                        lr=1e-2, weight_decay=0.1))
        case = f"family={family!r}"
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise _Fail(f"✘ {name}: returned {type(optimizer).__name__}, expected a "
                        f"torch.optim optimiser ({case}). {hint}")
        if any(p.requires_grad for p in model.parameters()):
            raise _Fail(f"✘ {name}: the model still has parameters with "
                        f"requires_grad=True ({case}). {hint}")
        if model.training:
            raise _Fail(f"✘ {name}: the model is still in training mode, so dropout "
                        f"keeps changing its features ({case}). {hint}")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if held & {id(p) for p in model.parameters()}:
            raise _Fail(f"✘ {name}: the optimiser holds frozen model parameters "
                        f"({case}). {hint}")
        if held != {id(p) for p in readout.parameters()}:
            raise _Fail(f"✘ {name}: the optimiser must hold every parameter of the "
                        f"readout and nothing else ({case}). {hint}")
        if not all(p.requires_grad for p in readout.parameters()):
            raise _Fail(f"✘ {name}: the readout was frozen too; only the model must "
                        f"be ({case}). {hint}")
        ids = torch.randint(5, 40, (4, 8), generator=torch.Generator().manual_seed(8))
        for p in model.parameters():  # stale gradients, as a training loop leaves them
            p.grad = torch.zeros_like(p)
        for _ in range(3):
            with torch.no_grad():
                features = model.features(ids)[tower]  # (B, T, D)
            loss = F.cross_entropy(readout(features).flatten(0, 1), ids.flatten())
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
        moved = [key for key, value in model.state_dict().items()
                 if not torch.equal(value, before[key])]
        if moved:
            raise _Fail(f"✘ {name}: training the readout changed the frozen model "
                        f"({moved[0]} and {len(moved) - 1} more; {case}). {hint}")
        trained = readout.state_dict()
        if all(torch.equal(trained[k], v) for k, v in readout_before.items()):
            raise _Fail(f"✘ {name}: three optimiser steps left the readout unchanged "
                        f"({case}). {hint}")
    _passed(name, "frozen model bit-identical after 3 steps with weight decay")


def _paired_difference(ll_a, ll_b):
    from twotower.analysis.preference import token_preference

    ll = np.stack([np.asarray(ll_a, dtype=np.float64),
                   np.asarray(ll_b, dtype=np.float64)])
    one_token = TokenScores(np.zeros(ll.shape[1], dtype=np.int32), ll, ll[0])
    row = token_preference(one_token, vocab_size=1, min_count=1).iloc[0]
    return float(row["pref"]), float(row["pref_se"])


@_exercise(_paired_difference)
def check_paired_difference(paired_difference: Callable) -> None:
    """Check ``paired_difference(ll_a, ll_b)``: the mean over positions of
    ``ll_a - ll_b`` and its standard error, as :func:`token_preference` computes them
    for one token (all positions taken as one token)."""
    __tracebackhide__ = True
    name = "check_paired_difference"
    hint = ("Hint: take the differences d = ll_a - ll_b position by position; return "
            "(d.mean(), d.std(ddof=1) / sqrt(n)). Treating the two columns as "
            "independent samples ignores that both readouts scored the same positions.")
    rng = np.random.default_rng(30)
    cases = []
    for n, shared, gap in ((5, 1.0, 0.3), (400, 2.0, -0.1), (20_000, 3.0, 0.02)):
        difficulty = rng.gamma(2.0, shared, n)  # shared by both readouts
        cases.append(dict(ll_a=-difficulty + gap + rng.normal(0, 0.5, n),
                          ll_b=-difficulty + rng.normal(0, 0.5, n)))
    _compare(name, paired_difference, _paired_difference, cases,
             lambda c: f"{c['ll_a'].size} positions; expected (mean, standard_error)",
             hint, "cases, standard error of paired differences", atol=1e-9, rtol=1e-6)


# --- Chapter 8: The emerging preference ---
# (book/08_emerging_preference.ipynb)


def _preference_table(target, ll_a, ll_b, vocab_size, min_count=5):
    from twotower.analysis.preference import token_preference

    ll = np.stack([np.asarray(ll_a, dtype=np.float64),
                   np.asarray(ll_b, dtype=np.float64)])
    df = token_preference(TokenScores(np.asarray(target), ll, ll[0]), vocab_size,
                          min_count)
    count = np.zeros(vocab_size, dtype=np.int64)
    pref, pref_se = np.full(vocab_size, np.nan), np.full(vocab_size, np.nan)
    count[df.index] = df["count"].to_numpy()
    pref[df.index] = df["pref"].to_numpy()
    pref_se[df.index] = df["pref_se"].to_numpy()
    return count, pref, pref_se


def _scored_cases(seed: int, sizes) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    cases = []
    for n, vocab, min_count in sizes:
        toy = toy_scores(n, vocab, seed=int(rng.integers(1000)), gap=0.1, noise=1.0)
        cases.append(dict(target=toy.targets, ll_a=toy.logp_a, ll_b=toy.logp_b,
                          vocab_size=vocab + 3, min_count=min_count))  # 3 never seen
    return cases


@_exercise(_preference_table)
def check_preference_table(preference_table: Callable) -> None:
    """Check ``preference_table(target, ll_a, ll_b, vocab_size, min_count)``:
    ``(count, pref, pref_se)``, three ``(vocab_size,)`` arrays, against
    :func:`twotower.analysis.preference.token_preference`."""
    __tracebackhide__ = True
    name = "check_preference_table"
    hint = ("Hint: with d = ll_a - ll_b per position, bincount gives n(v), the sum of "
            "d and the sum of d**2 per token; pref = mean of d, pref_se = sample "
            "standard deviation (ddof=1) / sqrt(n). pref and pref_se are NaN below "
            "min_count; count is 0 for unseen tokens.")
    cases = _scored_cases(31, ((60, 8, 2), (3000, 150, 5), (20_000, 400, 10)))
    for case in cases:
        got = _call(name, preference_table, case)
        if not isinstance(got, tuple) or len(got) != 3:
            raise _Fail(f"✘ {name}: expected a tuple (count, pref, pref_se), got "
                        f"{type(got).__name__}. {hint}")
        expected = _preference_table(**case)
        where = f"vocab_size={case['vocab_size']}, min_count={case['min_count']}"
        for label, value, reference in zip(("count", "pref", "pref_se"), got, expected):
            _assert_close(name, value, reference, f"{label}, {where}", hint,
                          atol=1e-9, rtol=1e-6)
    _passed(name, f"{len(cases)} cases: counts, preferences, standard errors")


def _split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count=5, seed=0):
    ll = np.stack([np.asarray(ll_a, dtype=np.float64),
                   np.asarray(ll_b, dtype=np.float64)])
    result = split_half(TokenScores(np.asarray(target), ll, ll[0]), vocab_size,
                        min_count, half=half_assignment(np.asarray(target), seed))
    return result.r, result.ceiling


@_exercise(_split_half_ceiling)
def check_split_half_ceiling(split_half_ceiling: Callable) -> None:
    """Check ``split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count, seed)``:
    ``(r, ceiling)`` as :func:`twotower.analysis.preference.split_half` computes them, with the
    halves of :func:`twotower.analysis.preference.half_assignment`."""
    __tracebackhide__ = True
    name = "check_split_half_ceiling"
    hint = ("Hint: half = half_assignment(target, seed); compute pref on the positions "
            "of each half (min_count applies within each half), correlate over the "
            "tokens finite in both, and return (r, 2 r / (1 + r)): Spearman-Brown "
            "steps the half-length reliability up to the full data.")
    cases = _scored_cases(32, ((4000, 100, 4), (20_000, 300, 6), (50_000, 500, 10)))
    for seed, case in enumerate(cases):
        case = dict(case, seed=seed)
        got = _call(name, split_half_ceiling, case)
        if np.shape(got) != (2,):
            raise _Fail(f"✘ {name}: returned shape {np.shape(got)}, expected two "
                        f"numbers (r, ceiling). {hint}")
        _assert_close(name, got, _split_half_ceiling(**case),
                      f"vocab_size={case['vocab_size']}, min_count={case['min_count']}"
                      f", seed={seed}", hint, atol=1e-9, rtol=1e-6)
    _passed(name, f"{len(cases)} toy runs, r and its Spearman-Brown ceiling")


# --- Chapter 12: Rare-token neurons in each tower ---
# (book/12_rare_token_neurons.ipynb)


def _rare_half(counts):
    from twotower.analysis.rare_neurons import frequency_halves

    return frequency_halves(counts) == 0


def _counts_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(120)
    cases = [dict(counts=np.array([0, 5, 1, 1, 9, 3, 0, 2]))]
    for vocab in (40, 301, 2000):
        counts = np.minimum(rng.zipf(1.4, vocab), 500)  # many ties at 1 and 2
        counts[rng.random(vocab) < 0.2] = 0  # types never seen
        cases.append(dict(counts=counts))
    return cases


@_exercise(_rare_half)
def check_rare_half(rare_half: Callable) -> None:
    """Check ``rare_half(counts)``: True for the rarest half of the seen token types.

    Types with count 0 are in neither half; the seen types are ranked by count, ties
    broken so that the higher id counts as rarer, and the ``floor(n / 2)`` first are
    rare.
    """
    __tracebackhide__ = True
    name = "check_rare_half"
    hint = ("Hint: keep the ids with count > 0, sort them by (count, -id) with "
            "np.lexsort((-ids, counts[ids])), and mark the first len(ids) // 2 as rare; "
            "a count threshold (median) would put too many tied types in one half.")
    cases = _counts_cases()
    _compare(name, rare_half, _rare_half, cases,
             lambda c: f"{int((c['counts'] > 0).sum())} seen types", hint,
             "count vectors, ties and unseen types included", atol=0)


def _effective_dimensionality(acts, variance_share=0.95):
    from twotower.analysis.neuron_stats import coactivation

    return coactivation(acts, variance_share).effective_dimensionality


@_exercise(_effective_dimensionality)
def check_effective_dimensionality(effective_dimensionality: Callable) -> None:
    """Check ``effective_dimensionality(acts, variance_share=0.95)``: principal
    components of the centred (N, G) activations needed for ``variance_share`` of the
    variance, divided by G."""
    __tracebackhide__ = True
    name = "check_effective_dimensionality"
    hint = ("Hint: centre each column, take the squared singular values "
            "(np.linalg.svd(..., compute_uv=False) ** 2), find the first k whose "
            "cumulative share reaches variance_share, and return k / G; do not scale "
            "the columns to unit variance.")
    rng = np.random.default_rng(121)
    shared = rng.standard_normal((300, 2))
    cases = [dict(acts=shared @ rng.standard_normal((2, 10)) + 0.05
                  * rng.standard_normal((300, 10)), variance_share=0.95),
             dict(acts=rng.standard_normal((500, 8)) * np.linspace(0.2, 5, 8) + 3.0,
                  variance_share=0.95),
             dict(acts=rng.standard_normal((200, 16)), variance_share=0.5),
             dict(acts=rng.standard_normal((400, 6)) + 50.0, variance_share=0.95)]
    _compare(name, effective_dimensionality, _effective_dimensionality, cases,
             lambda c: f"acts {c['acts'].shape}, share {c['variance_share']}", hint,
             "groups: shared, scaled and independent neurons", atol=1e-9)


# --- Chapter 13: One language per tower? ---
# (book/13_one_language_per_tower.ipynb)


def _activation_probability(acts, lang, n_languages):
    from twotower.analysis.lape import activation_probability

    return activation_probability(acts, lang, n_languages)


@_exercise(_activation_probability)
def check_activation_probability(activation_probability: Callable) -> None:
    """Check ``activation_probability(acts, lang, n_languages)``: for (N, L, M)
    activations and (N,) language ids (negative = skip), the (L, M, K) share of each
    language's tokens on which each neuron is > 0."""
    __tracebackhide__ = True
    name = "check_activation_probability"
    hint = ("Hint: for each language k, take the rows with lang == k (rows with a "
            "negative id belong to no language), compare with > 0 (strictly) and "
            "average over those rows; stack the K results on the last axis.")
    rng = np.random.default_rng(130)
    cases = []
    for n, layers, neurons, k in ((50, 1, 4, 2), (300, 3, 16, 3), (400, 2, 8, 2)):
        acts = rng.standard_normal((n, layers, neurons))
        acts[rng.random(acts.shape) < 0.1] = 0.0  # exactly zero is not active
        cases.append(dict(acts=acts, lang=rng.integers(-1, k, n), n_languages=k))
    _compare(name, activation_probability, _activation_probability, cases,
             lambda c: f"acts {c['acts'].shape}, {c['n_languages']} languages", hint,
             "cases, padding skipped, zero counts as off")


def _lape_entropy(act_prob):
    from twotower.analysis.lape import language_entropy

    return language_entropy(act_prob)


@_exercise(_lape_entropy)
def check_lape_entropy(lape_entropy: Callable) -> None:
    """Check ``lape_entropy(act_prob)``: (L, M, K) -> (L, M) natural-log entropy of
    each neuron's activation probabilities normalised over languages; a neuron that
    never fires gets ``log K``."""
    __tracebackhide__ = True
    name = "check_lape_entropy"
    hint = ("Hint: divide by the sum over the language axis, use 0 log 0 = 0, natural "
            "log; a neuron with all probabilities 0 has no preference: give it the "
            "uniform distribution (entropy log K).")
    rng = np.random.default_rng(131)
    cases = []
    for shape in ((1, 3, 2), (2, 20, 3), (4, 10, 2)):
        p = rng.uniform(size=shape) * (rng.random(shape) > 0.2)
        p[0, 0] = 0.0  # a dead neuron
        cases.append(dict(act_prob=p))
    _compare(name, lape_entropy, _lape_entropy, cases,
             lambda c: f"act_prob {c['act_prob'].shape}", hint,
             "cases, one-language and dead neurons included")


# --- Chapter 14: The tokenizer matters ---
# (book/14_the_tokenizer_matters.ipynb)


def _loss_per_char(token_losses, sentences):
    total = sum(float(np.sum(losses)) for losses in token_losses)
    return total / sum(len(sentence) + 1 for sentence in sentences)


@_exercise(_loss_per_char)
def check_loss_per_char(loss_per_char: Callable) -> None:
    """Check ``loss_per_char(token_losses, sentences)``: all token losses summed, over
    all characters, each sentence counting one extra character for its end."""
    __tracebackhide__ = True
    name = "check_loss_per_char"
    hint = ("Hint: sum every token's loss of every sentence (the end-of-sentence token "
            "included), and divide by the sum of len(sentence) + 1; do not average "
            "per sentence first.")
    rng = np.random.default_rng(140)
    cases = []
    for n in (1, 5, 40):
        sentences = ["x" * int(rng.integers(3, 60)) for _ in range(n)]
        cases.append(dict(token_losses=[rng.gamma(2.0, 1.5, int(rng.integers(2, 20)))
                                        for _ in range(n)], sentences=sentences))
    _compare(name, loss_per_char, _loss_per_char, cases,
             lambda c: f"{len(c['sentences'])} sentences", hint, "cases")


def _steps_to_reach(curve, level):
    from twotower.experiments.plasticity import steps_to_reach

    return steps_to_reach(curve, level)


@_exercise(_steps_to_reach)
def check_steps_to_reach(steps_to_reach: Callable) -> None:
    """Check ``steps_to_reach(curve, level)``: the first step at which a falling
    curve of ``(step, loss)`` points reaches ``level``, interpolated linearly between
    the two points around it; 0 if it starts there, NaN if it never gets there."""
    __tracebackhide__ = True
    name = "check_steps_to_reach"
    hint = ("Hint: walk through consecutive points (s0, v0), (s1, v1); at the first "
            "pair with v0 > level >= v1 return s0 + (v0 - level) / (v0 - v1) * (s1 - "
            "s0); return 0.0 if the first value is already <= level, NaN if none is.")
    curve = [(0, 3.0), (10, 2.0), (20, 1.5), (40, 1.4)]
    cases = [dict(curve=curve, level=level) for level in (2.5, 1.5, 1.45, 3.5, 1.0)]
    cases.append(dict(curve=[(0, 2.0), (5, 2.2), (10, 1.0)], level=1.6))
    _compare(name, steps_to_reach, _steps_to_reach, cases,
             lambda c: f"level {c['level']}", hint,
             "levels, never reached and already reached included", atol=1e-9)


# --- Chapter 9: Is the preference stable? ---
# (book/09_is_the_preference_stable.ipynb)


def _aligned_correlation(pref_a, pref_b):
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


@_exercise(_aligned_correlation)
def check_aligned_correlation(aligned_correlation: Callable) -> None:
    """Check ``aligned_correlation(pref_a, pref_b)``: ``(r, flipped)``, the Pearson r
    over tokens finite in both runs after flipping run b's sign if r < 0."""
    __tracebackhide__ = True
    name = "check_aligned_correlation"
    hint = ("Hint: keep the tokens where both prefs are finite, take Pearson r there, "
            "and if it is negative flip run b (tower labels are arbitrary): return "
            "(abs(r), r < 0).")
    cases = _stability_cases(91)
    for case in cases:
        got = _call(name, aligned_correlation, case)
        if not isinstance(got, tuple) or len(got) != 2:
            raise _Fail(f"✘ {name}: expected a tuple (r, flipped), got "
                        f"{type(got).__name__}. {hint}")
        r, flipped = _aligned_correlation(**case)
        where = f"{case['pref_a'].size} tokens"
        _assert_close(name, got[0], r, where, hint, atol=1e-9)
        if bool(got[1]) != flipped:
            raise _Fail(f"✘ {name}: flipped is {bool(got[1])}, expected {flipped} "
                        f"({where}). {hint}")
    _passed(name, f"{len(cases)} pairs of runs, NaN tokens and swapped labels included")


def _disattenuated_correlation(a0, a1, b0, b1):
    from twotower.analysis.stability import disattenuated

    return float(disattenuated(*(np.asarray(h, np.float64) for h in (a0, a1, b0, b1))))


@_exercise(_disattenuated_correlation)
def check_disattenuated_correlation(disattenuated_correlation: Callable) -> None:
    """Check ``disattenuated_correlation(a0, a1, b0, b1)``: the correlation of two
    runs' noise-free preferences from their half preferences on the same tokens."""
    __tracebackhide__ = True
    name = "check_disattenuated_correlation"
    hint = ("Hint: cross = (r(a0, b1) + r(a1, b0)) / 2 pairs halves of different "
            "text; divide it by sqrt(r(a0, a1) * r(b0, b1)), the two runs' own "
            "split-half correlations; NaN when either of those is not positive.")
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
    _compare(name, disattenuated_correlation, _disattenuated_correlation, cases,
             lambda c: f"{c['a0'].size} tokens", hint, "cases, an unreliable run "
             "included")


# --- Chapter 10: Syntax or semantics? ---
# (book/10_syntax_or_semantics.ipynb)


def _cohens_d(x, y):
    from twotower.analysis.syntax import effect_size

    return effect_size(x, y)["cohens_d"]


@_exercise(_cohens_d)
def check_cohens_d(cohens_d: Callable) -> None:
    """Check ``cohens_d(x, y)``: (mean x - mean y) / pooled standard deviation."""
    __tracebackhide__ = True
    name = "check_cohens_d"
    hint = ("Hint: pooled sd = sqrt(((n_x - 1) var_x + (n_y - 1) var_y) / (n_x + n_y - "
            "2)) with var of ddof=1 in each group; d = (mean x - mean y) / pooled sd.")
    rng = np.random.default_rng(101)
    cases = [dict(x=np.array([1.0, 2.0, 3.0]), y=np.array([0.0, 1.0]))]
    cases += [dict(x=rng.normal(0.5, 1, n), y=rng.normal(0, 2, m))
              for n, m in ((5, 40), (30, 8), (200, 300))]
    _compare(name, cohens_d, _cohens_d, cases,
             lambda c: f"{c['x'].size} and {c['y'].size} values", hint,
             "pairs of samples of unequal sizes and spreads")


def _stratified_difference(values, is_function, bins):
    from twotower.analysis.syntax import class_difference

    return float(class_difference(values, is_function, bins))


@_exercise(_stratified_difference)
def check_stratified_difference(stratified_difference: Callable) -> None:
    """Check ``stratified_difference(values, is_function, bins)``: the within-bin
    difference of means, averaged over bins with weights n_f n_c / (n_f + n_c)."""
    __tracebackhide__ = True
    name = "check_stratified_difference"
    hint = ("Hint: for each bin holding both classes take mean(function) - "
            "mean(content) and the weight n_f * n_c / (n_f + n_c); skip bins with "
            "only one class; return sum(weight * difference) / sum(weight).")
    rng = np.random.default_rng(102)
    cases = []
    for n, n_bins in ((12, 2), (300, 5), (2000, 8)):
        bins = rng.integers(0, n_bins, n)
        is_function = rng.random(n) < (0.1 + 0.8 * bins / n_bins)
        values = 0.3 * bins + 0.2 * is_function + rng.normal(size=n)
        is_function[bins == 0] = False  # one bin without function words
        cases.append(dict(values=values, is_function=is_function, bins=bins))
    _compare(name, stratified_difference, _stratified_difference, cases,
             lambda c: f"{c['values'].size} tokens in {c['bins'].max() + 1} bins", hint,
             "tables, a bin without function words included")


# --- Chapter 11: Replication scorecard ---
# (book/11_replication_scorecard.ipynb)


def _verdict(low, bar=0.0):
    from twotower.experiments.scorecard import FAILS, HOLDS, NOT_MEASURED

    if not np.isfinite(low):
        return NOT_MEASURED
    return HOLDS if low > bar else FAILS


@_exercise(_verdict)
def check_verdict(verdict: Callable) -> None:
    """Check ``verdict(low, bar=0.0)``: the scorecard's rule for an interval whose
    lower end is ``low``."""
    __tracebackhide__ = True
    name = "check_verdict"
    hint = ("Hint: NaN (nothing measured) -> 'not measured at this scale'; a lower end "
            "strictly above the bar -> 'holds'; anything else -> 'does not hold'.")
    cases = [dict(low=low, bar=bar) for low, bar in
             ((0.2, 0.0), (-0.1, 0.0), (0.0, 0.0), (float("nan"), 0.0), (0.1, 0.15),
              (0.2, 0.15))]
    for case in cases:
        got = _call(name, verdict, case)
        if got != _verdict(**case):
            raise _Fail(f"✘ {name}: got {got!r}, expected {_verdict(**case)!r} for "
                        f"low={case['low']}, bar={case['bar']}. {hint}")
    _passed(name, f"{len(cases)} intervals, the edge and NaN included")


def _holm(p_values, alpha=0.05):
    from twotower.experiments.scorecard import holm

    return holm(p_values, alpha)


@_exercise(_holm)
def check_holm(holm: Callable) -> None:
    """Check ``holm(p_values, alpha)``: which hypotheses Holm's step-down procedure
    rejects, as booleans in the order of ``p_values``."""
    __tracebackhide__ = True
    name = "check_holm"
    hint = ("Hint: sort the p-values; the i-th smallest (i = 0, 1, ...) is rejected if "
            "p <= alpha / (m - i) AND every smaller one was rejected: stop at the first "
            "failure. Return the decisions in the original order.")
    cases = [dict(p_values=np.array(p), alpha=a) for p, a in (
        ([0.01, 0.04, 0.03, 0.005], 0.05), ([0.001, 0.2, 0.011, 0.012], 0.05),
        ([0.5, 0.001], 0.05), ([0.04, 0.01, 0.02], 0.05), ([0.009], 0.01),
        ([0.014, 0.03, 0.04], 0.05),
        ([0.03, 0.03, 0.03], 0.1))]
    _compare(name, holm, _holm, cases,
             lambda c: f"p = {c['p_values'].tolist()}, alpha = {c['alpha']}", hint,
             "families of tests")
