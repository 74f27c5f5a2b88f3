"""Every exercise check accepts its reference and rejects a broken variant.

The checks live one module per chapter in ``twotower.book.exercises`` (``ch01`` ...
``ch14``); chapter 1's broken variants are here, each other chapter's in its
``tests/test_checks_ch*.py``, whose ``BROKEN`` tables are merged below.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import traceback

import numpy as np
import pytest

from twotower.book import exercises
from twotower.book.exercises import ch01


# --- broken variants: one list per check; a new check_* needs an entry here -----------

def _pref_zero_for_rare(logp_a, logp_b, targets, vocab_size, min_count=5):
    counts = np.bincount(targets, minlength=vocab_size)
    sums = np.bincount(targets, weights=logp_a - logp_b, minlength=vocab_size)
    return sums / np.maximum(counts, 1)  # rare and unseen tokens read as 0, not NaN


def _pref_strict_count(logp_a, logp_b, targets, vocab_size, min_count=5):
    pref = ch01.reference_token_preference(logp_a, logp_b, targets, vocab_size,
                                           min_count)
    counts = np.bincount(targets, minlength=vocab_size)
    pref[counts == min_count] = np.nan  # `>` where `>=` is meant
    return pref


def _pref_sign_flipped(logp_a, logp_b, targets, vocab_size, min_count=5):
    return -ch01.reference_token_preference(logp_a, logp_b, targets, vocab_size,
                                            min_count)


def _centred_with_nan_mean(pref):
    return pref - np.mean(pref)  # NaN everywhere as soon as one token is NaN


def _centred_nan_to_zero(pref):
    return np.nan_to_num(pref - np.nanmean(pref))


def _centred_by_median(pref):
    return pref - np.nanmedian(pref)


def _split_half_on_all_positions(logp_a, logp_b, targets, half, vocab_size,
                                 min_count=5):
    pref = ch01.reference_token_preference(logp_a, logp_b, targets, vocab_size,
                                           min_count)
    finite = np.isfinite(pref)
    return float(np.corrcoef(pref[finite], pref[finite])[0, 1])  # always 1


def _split_half_array(logp_a, logp_b, targets, half, vocab_size, min_count=5):
    r = ch01.reference_split_half_correlation(logp_a, logp_b, targets, half,
                                              vocab_size, min_count)
    return np.array([r, r])


BROKEN = {
    "check_token_preference": [_pref_zero_for_rare, _pref_strict_count,
                               _pref_sign_flipped],
    "check_centred_preference": [_centred_with_nan_mean, _centred_nan_to_zero,
                                 _centred_by_median],
    "check_split_half_correlation": [_split_half_on_all_positions, _split_half_array],
}

from test_checks_ch2 import BROKEN as _BROKEN_CH2  # noqa: E402 (chapter 2's variants)

BROKEN.update(_BROKEN_CH2)
from test_checks_ch03_05 import BROKEN as _BROKEN_CH3_5  # noqa: E402 (chapters 3-5)

BROKEN.update(_BROKEN_CH3_5)
from test_checks_ch06_08 import BROKEN as _BROKEN_CH6_8  # noqa: E402 (chapters 6-8)

BROKEN.update(_BROKEN_CH6_8)
from test_checks_ch09_11 import BROKEN as _BROKEN_CH9_11  # noqa: E402 (chapters 9-11)

BROKEN.update(_BROKEN_CH9_11)
from test_checks_ch12_14 import BROKEN as _BROKEN_CH12_14  # noqa: E402 (chapters 12-14)

BROKEN.update(_BROKEN_CH12_14)

CHAPTERS = [importlib.import_module(f"{exercises.__name__}.{module.name}")
            for module in pkgutil.iter_modules(exercises.__path__)
            if module.name.startswith("ch")]
CHECKS = {name: function for chapter in CHAPTERS
          for name, function in inspect.getmembers(chapter, callable)
          if name.startswith("check_") and function.__module__ == chapter.__name__}


def test_every_check_has_a_reference_and_a_broken_variant():
    assert CHECKS, "no chapter module of twotower.book.exercises defines a check_*"
    for name, check in CHECKS.items():
        assert callable(getattr(check, "reference", None)), \
            f"{name} has no reference; decorate it with @exercise(reference, hint=...)"
    missing = sorted(set(CHECKS) - set(BROKEN))
    assert not missing, f"add broken variants to BROKEN for: {', '.join(missing)}"


def test_every_check_is_importable_from_the_package_under_its_name():
    assert len(CHAPTERS) == 14
    for name, check in CHECKS.items():
        assert getattr(exercises, name, None) is check, \
            f"re-export {name} in twotower/book/exercises/__init__.py"


def test_a_check_shows_the_reader_its_argument_and_docstring(capsys):
    check = ch01.check_token_preference
    assert str(inspect.signature(check)) == \
        "(token_preference: 'Callable', *, strict: 'bool' = False) -> 'Callable'"
    assert check.__doc__.startswith("Check ``token_preference(")
    check(token_preference=ch01.reference_token_preference)  # by name, as signed
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_accepts_its_reference_and_prints_a_pass_line(name, capsys):
    reference = CHECKS[name].reference
    assert CHECKS[name](reference) is reference
    assert capsys.readouterr().out.startswith(f"✔ {name} passed")


def test_a_passing_check_hands_back_the_readers_own_function(capsys):
    def token_preference(*args, **kwargs):  # the reader's, not the reference object
        return ch01.reference_token_preference(*args, **kwargs)

    assert ch01.check_token_preference(token_preference) is token_preference


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_a_skipped_exercise_hands_back_the_reference_and_says_so(name, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert CHECKS[name](stub) is CHECKS[name].reference  # the chapter goes on
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"✘ {name}") and "NotImplementedError" in out[0]
    reference = CHECKS[name].reference
    assert out[1].endswith(f"{reference.__module__}.{reference.__qualname__}")


@pytest.mark.parametrize("name, broken", [(name, BROKEN[name][0]) for name in
                                          sorted(BROKEN)], ids=lambda v: str(v)[:40])
def test_a_wrong_answer_is_shown_and_replaced_by_the_reference(name, broken, capsys):
    assert CHECKS[name](broken) is CHECKS[name].reference
    assert capsys.readouterr().out.startswith(f"✘ {name}")


@pytest.mark.parametrize("name, broken", [(name, broken) for name in sorted(BROKEN)
                                          for broken in BROKEN[name]],
                         ids=lambda value: getattr(value, "__name__", value))
def test_check_rejects_a_broken_variant_with_a_one_paragraph_hint(name, broken):
    with pytest.raises(AssertionError) as failure:
        CHECKS[name](broken, strict=True)
    message = str(failure.value)
    assert message.startswith(f"✘ {name}")
    assert "Traceback" not in message and "\n" not in message
    assert failure.value.__cause__ is None
    frames = traceback.extract_tb(failure.value.__traceback__)
    assert [frame.name for frame in frames[1:]] == ["check"]  # the one hidden frame


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_says_the_stub_is_not_written_yet(name):
    def stub(*args, **kwargs):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="NotImplementedError"):
        CHECKS[name](stub, strict=True)


def test_check_reports_a_crash_of_the_readers_code_in_one_line():
    def crashes(logp_a, logp_b, targets, vocab_size, min_count=5):
        return logp_a[vocab_size * 10**6]

    with pytest.raises(AssertionError, match="raised IndexError") as failure:
        ch01.check_token_preference(crashes, strict=True)
    assert failure.value.__suppress_context__


def test_check_refuses_a_value_where_a_function_is_expected():
    with pytest.raises(AssertionError, match="expected a function"):
        ch01.check_centred_preference(np.zeros(3), strict=True)


def test_alternate_halves_balances_every_token():
    targets = np.array([3, 1, 3, 3, 1, 2, 1, 1])
    half = ch01.alternate_halves(targets)
    assert half.tolist() == [0, 0, 1, 0, 1, 0, 0, 1]
    for token in np.unique(targets):
        counts = np.bincount(half[targets == token], minlength=2)
        assert abs(counts[0] - counts[1]) <= 1


def test_toy_scores_plant_a_preference_that_the_reference_recovers():
    toy = ch01.toy_scores(100_000, vocab_size=50, seed=3, gap=0.5, zipf=0.0)
    pref = ch01.reference_token_preference(toy.logp_a, toy.logp_b, toy.targets,
                                           50)
    assert np.corrcoef(pref, toy.true_pref)[0, 1] > 0.8
    assert abs(np.nanmean(pref) - 0.5) < 0.2
