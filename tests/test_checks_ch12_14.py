"""Chapters 12 to 14: each exercise check accepts its reference and rejects broken ones.

``BROKEN`` is also merged into ``tests/test_checks.py``'s table, whose meta-test wants a
broken variant for every ``check_*``.
"""

from __future__ import annotations

import numpy as np

from twotower.analysis.lape import language_entropy
from twotower.book.exercises import ch12
from twotower.experiments.plasticity import steps_to_reach

# --- chapter 12 -----------------------------------------------------------------------


def _rare_by_median(counts):
    seen = counts > 0
    return seen & (counts <= np.median(counts[seen]))  # ties pile up in one half


def _rare_including_unseen(counts):
    order = np.lexsort((-np.arange(counts.size), counts))
    rare = np.zeros(counts.size, dtype=bool)
    rare[order[: counts.size // 2]] = True  # unseen types count as the rarest
    return rare


def _rare_ties_by_low_id(counts):
    ids = np.flatnonzero(counts > 0)
    order = ids[np.lexsort((ids, counts[ids]))]
    rare = np.zeros(counts.size, dtype=bool)
    rare[order[: ids.size // 2]] = True
    return rare


def _effdim_standardised(acts, variance_share=0.95):
    z = (acts - acts.mean(0)) / acts.std(0)  # PCA of correlations, not covariances
    s = np.linalg.svd(z, compute_uv=False) ** 2
    k = int(np.searchsorted(np.cumsum(s) / s.sum(), variance_share - 1e-9) + 1)
    return k / acts.shape[1]


def _effdim_uncentred(acts, variance_share=0.95):
    s = np.linalg.svd(acts, compute_uv=False) ** 2
    k = int(np.searchsorted(np.cumsum(s) / s.sum(), variance_share - 1e-9) + 1)
    return k / acts.shape[1]


def _effdim_count_not_share(acts, variance_share=0.95):
    return ch12.reference_effective_dimensionality(acts, variance_share) * acts.shape[1]


# --- chapter 13 -----------------------------------------------------------------------


def _prob_at_least_zero(acts, lang, n_languages):
    return np.stack([(acts[lang == k] >= 0).mean(0) for k in range(n_languages)], -1)


def _prob_padding_as_language_0(acts, lang, n_languages):
    lang = np.where(lang < 0, 0, lang)
    return np.stack([(acts[lang == k] > 0).mean(0) for k in range(n_languages)], -1)


def _prob_over_all_tokens(acts, lang, n_languages):
    return np.stack([((acts > 0) & (lang == k)[:, None, None]).mean(0)
                     for k in range(n_languages)], -1)


def _entropy_unnormalised(act_prob):
    p = np.where(act_prob > 0, act_prob, 1.0)
    return -np.sum(act_prob * np.log(p), axis=-1)


def _entropy_base2(act_prob):
    return language_entropy(act_prob) / np.log(2)


def _entropy_dead_is_zero(act_prob):
    out = language_entropy(act_prob)
    return np.where(act_prob.sum(-1) == 0, 0.0, out)


# --- chapter 14 -----------------------------------------------------------------------


def _loss_per_char_no_end(token_losses, sentences):
    return (sum(float(np.sum(x)) for x in token_losses)
            / sum(len(s) for s in sentences))


def _loss_per_char_mean_of_ratios(token_losses, sentences):
    return float(np.mean([np.sum(x) / (len(s) + 1)
                          for x, s in zip(token_losses, sentences)]))


def _loss_per_token(token_losses, sentences):
    return float(np.mean(np.concatenate(token_losses)))


def _steps_first_point_below(curve, level):
    for step, value in curve:
        if value <= level:
            return float(step)  # no interpolation
    return float("nan")


def _steps_never_nan(curve, level):
    got = steps_to_reach(curve, level)
    return float(curve[-1][0]) if np.isnan(got) else got


BROKEN = {
    "check_rare_half": [_rare_by_median, _rare_including_unseen, _rare_ties_by_low_id],
    "check_effective_dimensionality": [_effdim_standardised, _effdim_uncentred,
                                       _effdim_count_not_share],
    "check_activation_probability": [_prob_at_least_zero, _prob_padding_as_language_0,
                                     _prob_over_all_tokens],
    "check_lape_entropy": [_entropy_unnormalised, _entropy_base2,
                           _entropy_dead_is_zero],
    "check_loss_per_char": [_loss_per_char_no_end, _loss_per_char_mean_of_ratios,
                            _loss_per_token],
    "check_steps_to_reach": [_steps_first_point_below, _steps_never_nan],
}
