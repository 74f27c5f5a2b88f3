"""Chapter 2's exercise checks accept their reference and reject broken variants.

``BROKEN`` is also merged into ``tests/test_checks.py``'s table, whose meta-test wants a
broken variant for every ``check_*``.
"""

from __future__ import annotations

import numpy as np
import pytest

from twotower.book.exercises import ch02
from twotower.data.synthetic import (PlantedLanguage, PlantedLanguageConfig,
                                     conditional_entropies)

# --- broken variants ------------------------------------------------------------------


def _joint_entropy(condition, target):
    pair = condition * (target.max() + 1) + target
    p = np.bincount(pair)
    p = p[p > 0] / target.size
    return float(-(p * np.log(p)).sum())  # H(condition, target): forgot - H(condition)


def _entropy_in_bits(condition, target):
    return ch02.reference_conditional_entropy(condition, target) / np.log(2)


def _entropy_swapped(condition, target):
    return ch02.reference_conditional_entropy(target, condition)  # H(condition|target)


def _split_with_special_tokens(pref, labels):
    keep = np.isfinite(pref)
    return float(abs(np.corrcoef(pref[keep], labels[keep] == "local")[0, 1]))


def _split_signed(pref, labels):
    keep = np.isfinite(pref) & (labels != "special")
    return float(np.corrcoef(pref[keep], labels[keep] == "local")[0, 1])


def _split_nan_as_zero(pref, labels):
    return ch02.reference_split_correlation(np.nan_to_num(pref), labels)


def _p_one_sided(pref, is_local, n_perm=2000, seed=0):
    rng = np.random.default_rng(seed)
    observed = np.corrcoef(pref, is_local)[0, 1]
    null = np.array([np.corrcoef(pref, rng.permutation(is_local))[0, 1]
                     for _ in range(n_perm)])
    return float((1 + (null >= observed).sum()) / (1 + n_perm))


def _p_without_the_observed_labelling(pref, is_local, n_perm=2000, seed=0):
    rng = np.random.default_rng(seed)
    observed = abs(np.corrcoef(pref, is_local)[0, 1])
    null = np.array([abs(np.corrcoef(pref, rng.permutation(is_local))[0, 1])
                     for _ in range(n_perm)])
    return float((null >= observed).mean())  # 0 for a strong effect


def _p_of_the_correlation_itself(pref, is_local, n_perm=2000, seed=0):
    return float(1 - abs(np.corrcoef(pref, is_local)[0, 1]))


BROKEN = {
    "check_conditional_entropy": [_joint_entropy, _entropy_in_bits, _entropy_swapped],
    "check_split_correlation": [_split_with_special_tokens, _split_signed,
                                _split_nan_as_zero],
    "check_permutation_p_value": [_p_one_sided, _p_without_the_observed_labelling,
                                  _p_of_the_correlation_itself],
}


# --- tests of a check beyond accept/reject (tests/test_checks.py runs those) ------


def test_a_plain_loop_solution_passes_the_permutation_check(capsys):
    def permutation_p_value(pref, is_local, n_perm=2000, seed=0):
        rng = np.random.default_rng(seed)
        observed = abs(np.corrcoef(pref, is_local)[0, 1])
        hits = sum(abs(np.corrcoef(pref, rng.permutation(is_local))[0, 1]) >= observed
                   for _ in range(n_perm))
        return (1 + hits) / (1 + n_perm)

    ch02.check_permutation_p_value(permutation_p_value)
    assert "passed" in capsys.readouterr().out


def test_conditional_entropy_reference_matches_the_package(capsys):
    language = PlantedLanguage(PlantedLanguageConfig(window=32))
    sample = language.sample(500, seed=0)
    local = sample.process[:, 1:] == 1
    h = ch02.reference_conditional_entropy(sample.windows[:, :-1][local],
                                           sample.windows[:, 1:][local])
    expected = conditional_entropies(sample, language.vocab_size)
    assert h == pytest.approx(expected.loc["local", "H(x | previous token)"])
