"""Chapters 6 to 8: every exercise check accepts its reference and rejects broken ones.

``BROKEN`` is also merged into ``tests/test_checks.py``'s table, whose meta-test wants a
broken variant for every ``check_*``.
"""

from __future__ import annotations

import numpy as np
import torch

from twotower.analysis.preference import half_assignment, preference_array
from twotower.book.exercises import ch06, ch07, ch08
from twotower.models.flops import forward_flops_per_token, train_flops_per_token
from twotower.training.readouts import freeze

# --- chapter 6: broken variants -------------------------------------------------------


def _lr_warmup_from_zero(step, peak_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return peak_lr * step / warmup_steps  # starts at 0: step 0 would not train
    return ch06.reference_learning_rate(step, peak_lr, warmup_steps, total_steps)


def _lr_decay_over_all_steps(step, peak_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return ch06.reference_learning_rate(step, peak_lr, warmup_steps, total_steps)
    return peak_lr * (1 - step / total_steps)


def _lr_one_step_late(step, peak_lr, warmup_steps, total_steps):
    return ch06.reference_learning_rate(min(step + 1, total_steps), peak_lr,
                                        warmup_steps, total_steps)


def _flops_forward_only(cfg, n_towers):
    return forward_flops_per_token(cfg, n_towers)


def _flops_without_attention_scores(cfg, n_towers):
    return train_flops_per_token(cfg, n_towers) - \
        3 * n_towers * cfg.n_layers * 4 * cfg.max_len * cfg.d_model


def _flops_head_of_one_tower_width(cfg, n_towers):
    W, D, V = n_towers * cfg.d_model, cfg.d_model, cfg.vocab_size
    return train_flops_per_token(cfg, n_towers) - 3 * (2 * W * W + 2 * W * V) + \
        3 * (2 * D * D + 2 * D * V)


# --- chapter 7: broken variants -------------------------------------------------------


def _optimizer_like_the_authors(model, readout, lr, weight_decay):
    # the towers only run under no_grad, but stay in the optimiser (bug 3)
    params = list(model.parameters()) + list(readout.parameters())
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _optimizer_holding_frozen_params(model, readout, lr, weight_decay):
    freeze(model)
    params = list(model.parameters()) + list(readout.parameters())
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _optimizer_with_dropout_on(model, readout, lr, weight_decay):
    model.requires_grad_(False)  # frozen, but never switched to eval()
    return torch.optim.AdamW(readout.parameters(), lr=lr, weight_decay=weight_decay)


def _optimizer_freezing_the_readout_too(model, readout, lr, weight_decay):
    freeze(model)
    freeze(readout)
    return torch.optim.AdamW(readout.parameters(), lr=lr, weight_decay=weight_decay)


def _paired_difference_unpaired_error(ll_a, ll_b):
    n = ll_a.size
    return (ll_a - ll_b).mean(), np.sqrt(ll_a.var(ddof=1) / n + ll_b.var(ddof=1) / n)


def _paired_difference_population_std(ll_a, ll_b):
    d = ll_a - ll_b
    return d.mean(), d.std() / np.sqrt(d.size)


def _paired_difference_b_minus_a(ll_a, ll_b):
    mean, se = ch07.reference_paired_difference(ll_a, ll_b)
    return -mean, se


# --- chapter 8: broken variants -------------------------------------------------------


def _table_with_population_std(target, ll_a, ll_b, vocab_size, min_count=5):
    count, pref, se = ch08.reference_preference_table(target, ll_a, ll_b, vocab_size,
                                                      min_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, pref, se * np.sqrt((count - 1) / count)


def _table_rare_as_zero(target, ll_a, ll_b, vocab_size, min_count=5):
    count, pref, se = ch08.reference_preference_table(target, ll_a, ll_b, vocab_size, 1)
    rare = count < min_count
    return count, np.where(rare, 0.0, pref), np.where(rare, 0.0, se)


def _table_std_not_error(target, ll_a, ll_b, vocab_size, min_count=5):
    count, pref, se = ch08.reference_preference_table(target, ll_a, ll_b, vocab_size,
                                                      min_count)
    return count, pref, se * np.sqrt(count)


def _split_half_without_spearman_brown(target, ll_a, ll_b, vocab_size, min_count=5,
                                       seed=0):
    r, _ = ch08.reference_split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count,
                                             seed)
    return r, r


def _split_half_min_count_on_all_data(target, ll_a, ll_b, vocab_size, min_count=5,
                                      seed=0):
    half = half_assignment(target, seed)
    enough = np.isfinite(preference_array(target, ll_a, ll_b, vocab_size, min_count))
    prefs = [preference_array(target[half == h], ll_a[half == h], ll_b[half == h],
                              vocab_size, 1) for h in (0, 1)]
    keep = enough & np.isfinite(prefs[0]) & np.isfinite(prefs[1])
    r = float(np.corrcoef(prefs[0][keep], prefs[1][keep])[0, 1])
    return r, 2 * r / (1 + r)


def _split_half_alternating_halves(target, ll_a, ll_b, vocab_size, min_count=5,
                                   seed=0):
    half = half_assignment(target, None)  # the seed is ignored
    prefs = [preference_array(target[half == h], ll_a[half == h], ll_b[half == h],
                              vocab_size, min_count) for h in (0, 1)]
    keep = np.isfinite(prefs[0]) & np.isfinite(prefs[1])
    r = float(np.corrcoef(prefs[0][keep], prefs[1][keep])[0, 1])
    return r, 2 * r / (1 + r)


BROKEN = {
    "check_learning_rate": [_lr_warmup_from_zero, _lr_decay_over_all_steps,
                            _lr_one_step_late],
    "check_train_flops_per_token": [_flops_forward_only,
                                    _flops_without_attention_scores,
                                    _flops_head_of_one_tower_width],
    "check_readout_optimizer": [_optimizer_like_the_authors,
                                _optimizer_holding_frozen_params,
                                _optimizer_with_dropout_on,
                                _optimizer_freezing_the_readout_too],
    "check_paired_difference": [_paired_difference_unpaired_error,
                                _paired_difference_population_std,
                                _paired_difference_b_minus_a],
    "check_preference_table": [_table_with_population_std, _table_rare_as_zero,
                               _table_std_not_error],
    "check_split_half_ceiling": [_split_half_without_spearman_brown,
                                 _split_half_min_count_on_all_data,
                                 _split_half_alternating_halves],
}


# --- tests of a check beyond accept/reject (tests/test_checks.py runs those) ------


def test_learning_rate_written_by_hand_passes(capsys):
    def learning_rate(step, peak_lr, warmup_steps, total_steps):
        if step < warmup_steps:
            start = 1 / warmup_steps
            return peak_lr * (start + (1 - start) * step / warmup_steps)
        return peak_lr * (total_steps - step) / (total_steps - warmup_steps)

    ch06.check_learning_rate(learning_rate)
    assert "passed" in capsys.readouterr().out


def test_flops_written_by_hand_pass(capsys):
    def flops(cfg, n_towers):
        K, D, F, V, T = n_towers, cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.max_len
        W = K * D
        layer = 2 * D * 3 * D + 2 * D * D + 2 * 2 * D * F + 2 * 2 * T * D
        return 3 * (2 * W * W + K * cfg.n_layers * layer + 2 * W * W + 2 * W * V)

    ch06.check_train_flops_per_token(flops)
    assert "passed" in capsys.readouterr().out


def test_numpy_solutions_of_chapters_7_and_8_pass(capsys):
    def paired_difference(ll_a, ll_b):
        d = ll_a - ll_b
        return d.mean(), d.std(ddof=1) / np.sqrt(d.size)

    def preference_table(target, ll_a, ll_b, vocab_size, min_count=5):
        d = ll_a - ll_b
        count = np.bincount(target, minlength=vocab_size)
        total = np.bincount(target, weights=d, minlength=vocab_size)
        square = np.bincount(target, weights=d**2, minlength=vocab_size)
        pref, se = np.full(vocab_size, np.nan), np.full(vocab_size, np.nan)
        ok = count >= min_count
        pref[ok] = total[ok] / count[ok]
        var = (square[ok] - count[ok] * pref[ok] ** 2) / (count[ok] - 1)
        se[ok] = np.sqrt(var / count[ok])
        return count, pref, se

    def split_half_ceiling(target, ll_a, ll_b, vocab_size, min_count=5, seed=0):
        half = half_assignment(target, seed)
        prefs = [preference_table(target[half == h], ll_a[half == h], ll_b[half == h],
                                  vocab_size, min_count)[1] for h in (0, 1)]
        keep = np.isfinite(prefs[0]) & np.isfinite(prefs[1])
        r = np.corrcoef(prefs[0][keep], prefs[1][keep])[0, 1]
        return r, 2 * r / (1 + r)

    ch07.check_paired_difference(paired_difference)
    ch08.check_preference_table(preference_table)
    ch08.check_split_half_ceiling(split_half_ceiling)
    assert capsys.readouterr().out.count("passed") == 3
