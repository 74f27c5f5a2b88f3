"""Chapters 3 to 5: every exercise check accepts its reference and rejects broken ones.

``BROKEN`` is also merged into ``tests/test_checks.py``'s table, whose meta-test wants a
broken variant for every ``check_*``. The helpers these chapters add to
``twotower.book.exercises.ch04`` and ``twotower.analysis.plotting`` are tested at the
end.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from twotower.analysis import plotting
from twotower.book.exercises import ch03, ch04, ch05
from twotower.config import ModelConfig
from twotower.models.tower_lm import SingleTowerLM

matplotlib.use("Agg")

# --- chapter 3: broken variants -------------------------------------------------------


def _rank_frequency_with_specials(ids, special_ids=()):
    counts = np.bincount(np.ravel(ids))
    return np.sort(counts[counts > 0])[::-1]


def _rank_frequency_ascending(ids, special_ids=()):
    return ch03.reference_rank_frequency(ids, special_ids)[::-1]


def _rank_frequency_with_unseen_ids(ids, special_ids=()):
    counts = np.bincount(np.ravel(ids))
    counts[[s for s in special_ids if s < counts.size]] = 0
    return np.sort(counts)[::-1]  # zeros of unseen ids kept at the end


def _fertility_with_cls_and_sep(words, tokenizer):
    return np.array([len(tokenizer.encode(word).ids) for word in words])


def _fertility_in_characters(words, tokenizer):
    return np.array([len(word) for word in words])


def _fertility_one_per_word(words, tokenizer):
    return np.ones(len(words), dtype=int)


def _crossing_counts_padding_as_an_article(label_windows, special_ids):
    windows = np.asarray(label_windows)[:, 1:]  # only [CLS] left out
    return windows.min(axis=1) != windows.max(axis=1)


def _crossing_first_against_last(label_windows, special_ids):
    windows = np.asarray(label_windows)
    return windows[:, 1] != windows[:, -1]


def _crossing_count_only(label_windows, special_ids):
    return int(ch03.reference_windows_crossing_articles(label_windows,
                                                        special_ids).sum())


# --- chapter 4: broken variants -------------------------------------------------------


def _mask_the_past(T):
    return np.tril(np.ones((T, T), dtype=bool), k=-1)


def _mask_the_present_too(T):
    return np.triu(np.ones((T, T), dtype=bool))


def _mask_nothing(T):
    return np.zeros((T, T), dtype=bool)


def _selection(ids, special, generator, p):
    is_special = torch.isin(ids, torch.tensor(special.all))
    return (torch.rand(ids.shape, generator=generator) < p) & ~is_special


def _targets(ids, selected):
    return torch.where(selected, ids, torch.full_like(ids, -100))


def _mask_every_selected(ids, special, n_tokens, generator, mlm_probability=0.15):
    selected = _selection(ids, special, generator, mlm_probability)
    return ids.masked_fill(selected, special.mask), _targets(ids, selected)


def _mask_selecting_specials(ids, special, n_tokens, generator, mlm_probability=0.15):
    selected = torch.rand(ids.shape, generator=generator) < mlm_probability
    return ids.masked_fill(selected, special.mask), _targets(ids, selected)


def _mask_with_targets_everywhere(ids, special, n_tokens, generator,
                                  mlm_probability=0.15):
    inputs, _ = ch04.reference_mask_tokens(ids, special, n_tokens, generator,
                                           mlm_probability)
    return inputs, ids.clone()


def _mask_replacing_with_any_id(ids, special, n_tokens, generator,
                                mlm_probability=0.15):
    selected = _selection(ids, special, generator, mlm_probability)
    how = torch.rand(ids.shape, generator=generator)
    inputs = ids.masked_fill(selected & (how < 0.8), special.mask)
    replace = selected & (how >= 0.8) & (how < 0.9)
    random_ids = torch.randint(n_tokens, ids.shape, generator=generator)  # specials too
    return torch.where(replace, random_ids, inputs), _targets(ids, selected)


def _mask_from_the_global_generator(ids, special, n_tokens, generator,
                                    mlm_probability=0.15):
    unrelated = torch.Generator().manual_seed(int(torch.randint(10**6, ())))
    return ch04.reference_mask_tokens(ids, special, n_tokens, unrelated,
                                      mlm_probability)


def _mask_never_keeping(ids, special, n_tokens, generator, mlm_probability=0.15):
    selected = _selection(ids, special, generator, mlm_probability)
    how = torch.rand(ids.shape, generator=generator)
    inputs = ids.masked_fill(selected & (how < 0.9), special.mask)
    random_ids = torch.randint(5, n_tokens, ids.shape, generator=generator)
    return torch.where(selected & (how >= 0.9), random_ids, inputs), \
        _targets(ids, selected)


def _influence_without_the_present(family, T):
    if family == "causal":
        return np.tril(np.ones((T, T), dtype=bool), k=-1)
    return ch04.reference_predicted_influence(family, T)


def _influence_bilm_sees_itself(family, T):
    if family == "bilm":
        return np.ones((T, T), dtype=bool)
    return ch04.reference_predicted_influence(family, T)


def _influence_causal_transposed(family, T):
    if family == "causal":
        return np.triu(np.ones((T, T), dtype=bool))
    return ch04.reference_predicted_influence(family, T)


# --- chapter 5: broken variants -------------------------------------------------------


def _head_with_an_untied_decoder(width, vocab_size):
    return ch05.reference_fused_head_parameters(width, vocab_size) + vocab_size * width


def _head_without_norms(width, vocab_size):
    return width * width + width + vocab_size


def _head_without_decoder_bias(width, vocab_size):
    return width * width + 5 * width


def _zero_along_the_batch(tower):
    def hook(activation, point):
        activation = activation.clone()
        activation[:, tower] = 0.0
        return activation
    return hook


def _zero_the_other_tower(tower):
    return ch05.reference_zero_tower_hook(1 - tower)


def _zero_both_towers(tower):
    def hook(activation, point):
        return torch.zeros_like(activation)
    return hook


def _zero_a_copy_and_return_nothing(tower):
    def hook(activation, point):
        copy = activation.clone()
        copy[tower] = 0.0  # the copy is thrown away: the model never sees it
    return hook


BROKEN = {
    "check_rank_frequency": [_rank_frequency_with_specials, _rank_frequency_ascending,
                             _rank_frequency_with_unseen_ids],
    "check_fertility": [_fertility_with_cls_and_sep, _fertility_in_characters,
                        _fertility_one_per_word],
    "check_windows_crossing_articles": [_crossing_counts_padding_as_an_article,
                                        _crossing_first_against_last,
                                        _crossing_count_only],
    "check_causal_mask": [_mask_the_past, _mask_the_present_too, _mask_nothing],
    "check_mask_tokens": [_mask_every_selected, _mask_selecting_specials,
                          _mask_with_targets_everywhere, _mask_replacing_with_any_id,
                          _mask_from_the_global_generator, _mask_never_keeping],
    "check_predicted_influence": [_influence_without_the_present,
                                  _influence_bilm_sees_itself,
                                  _influence_causal_transposed],
    "check_fused_head_parameters": [_head_with_an_untied_decoder, _head_without_norms,
                                    _head_without_decoder_bias],
    "check_zero_tower_hook": [_zero_along_the_batch, _zero_the_other_tower,
                              _zero_both_towers, _zero_a_copy_and_return_nothing],
}


# --- tests of a check beyond accept/reject (tests/test_checks.py runs those) ------


def test_a_loop_over_windows_passes_the_crossing_check(capsys):
    def windows_crossing_articles(label_windows, special_ids):
        out = []
        for row in label_windows:
            real = [label for label in row if label not in special_ids]
            out.append(len(set(real)) > 1)
        return out

    ch03.check_windows_crossing_articles(windows_crossing_articles)
    assert "passed" in capsys.readouterr().out


def test_a_mask_written_with_its_own_draw_order_passes(capsys):
    def mask_tokens(ids, special, n_tokens, generator, mlm_probability=0.15):
        allowed = torch.tensor([i for i in range(n_tokens) if i not in special.all])
        how = torch.rand(ids.shape, generator=generator)  # one draw: 3 intervals
        pick = allowed[torch.randint(len(allowed), ids.shape, generator=generator)]
        chosen = torch.rand(ids.shape, generator=generator) < mlm_probability
        chosen &= ~torch.isin(ids, torch.tensor(special.all))
        inputs = torch.where(chosen & (how < 0.8), special.mask, ids)
        inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), pick, inputs)
        return inputs, torch.where(chosen, ids, -100)

    ch04.check_mask_tokens(mask_tokens)
    assert "passed" in capsys.readouterr().out


# --- the helpers ----------------------------------------------------------------------

def test_position_influence_is_zero_exactly_where_a_causal_model_cannot_see():
    cfg = ModelConfig(family="causal", n_layers=1, d_model=16, n_heads=2, d_ff=32,
                      vocab_size=40, max_len=7, dropout=0.0)
    model = SingleTowerLM(cfg).eval()
    ids = torch.arange(5, 12)
    influence = ch04.position_influence(model, ids, ids + 10)
    assert influence.shape == (7, 7)
    assert (influence[np.triu_indices(7, k=1)] == 0).all()
    assert (influence[np.tril_indices(7)] > 0).all()


def test_position_influence_reads_a_hooked_stream():
    cfg = ModelConfig(family="bilm", n_layers=1, d_model=16, d_ff=8, vocab_size=40,
                      max_len=6, dropout=0.0)
    model = SingleTowerLM(cfg).eval()

    def backward_stream(ids):
        _, cache = model.run_with_cache(ids, names=["towers.bwd_out"])
        return cache["towers.bwd_out"][0]

    influence = ch04.position_influence(backward_stream, torch.arange(5, 11),
                                        torch.arange(20, 26))
    assert (influence[np.tril_indices(6)] == 0).all()  # sees only j > i
    assert (influence[np.triu_indices(6, k=1)] > 0).all()


def test_zipf_plot_recovers_the_exponent_of_an_exact_power_law():
    frequencies = 1e6 * np.arange(1, 2001, dtype=float) ** -1.2
    rng = np.random.default_rng(0)
    slope = plotting.zipf_plot(rng.permutation(frequencies), fit=(5, 1500))
    assert slope == pytest.approx(-1.2, abs=1e-9)


def test_zipf_plot_refuses_too_few_ranks():
    with pytest.raises(Exception, match="at least 3 ranks"):
        plotting.zipf_plot([5, 3, 0, 0], fit=(1, 10))


def test_position_map_leaves_zeros_blank_on_a_log_scale():
    ax = plotting.position_map(np.tril(np.ones((4, 4))) * 10, log=True,
                               labels=list("abcd"))
    image = ax.get_images()[0].get_array()
    assert image.mask[0, 1] and not image.mask[1, 0]
    assert image[1, 0] == pytest.approx(1.0)
