"""Inputs and targets of each family; BERT masking rates and what it may insert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from twotower.data.objectives import IGNORE, Objective, step_generator
from twotower.data.tokenizer import SpecialIds

# BERT's own ids: specials are not 0..4, so nothing may assume they are.
BERT_SPECIAL = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- causal and biLM ------------------------------------------------------------------

def test_causal_targets_are_the_next_token_and_never_padding(
        make_objective, synthetic_windows, special):
    windows = synthetic_windows(16, 10, 60)
    batch = make_objective("causal").make_batch(windows, gen())
    ids = torch.as_tensor(windows)
    assert torch.equal(batch.input_ids, ids)
    assert (batch.targets[:, -1] == IGNORE).all()
    nxt = ids[:, 1:]
    expected = torch.where(nxt == special.pad, torch.full_like(nxt, IGNORE), nxt)
    assert torch.equal(batch.targets[:, :-1], expected)
    assert (ids == special.pad).any()  # the padding case really occurred


def test_bilm_targets_are_the_token_itself_except_pad_and_cls(make_objective,
                                                              synthetic_windows,
                                                              special):
    windows = synthetic_windows(16, 10, 60)
    batch = make_objective("bilm").make_batch(windows, gen())
    ids = torch.as_tensor(windows)
    assert torch.equal(batch.input_ids, ids)
    no_target = (ids == special.pad) | (ids == special.cls)
    assert (batch.targets[no_target] == IGNORE).all()
    assert torch.equal(batch.targets[~no_target], ids[~no_target])


@pytest.mark.parametrize("family", ["causal", "bilm", "mlm"])
def test_cls_and_pad_are_never_targets(family, make_objective, synthetic_windows,
                                       special):
    batch = make_objective(family, mlm_probability=0.9).make_batch(
        synthetic_windows(64, 12, 60), gen())
    assert not torch.isin(batch.targets, torch.tensor([special.pad, special.cls])).any()
    assert batch.n_targets == int((batch.targets != IGNORE).sum()) > 0


# --- masked LM ------------------------------------------------------------------------

def big_mlm_batch(make_objective, special=None, n_tokens=100, **kw):
    """2000 windows of 32 with padding and literal [UNK]/[MASK]: ~45k eligible spots."""
    special = special or SpecialIds(0, 1, 2, 3, 4)
    objective = make_objective("mlm", n_tokens=n_tokens, special=special, **kw)
    rng = np.random.default_rng(0)
    ordinary = np.setdiff1d(np.arange(n_tokens), special.all)
    windows = rng.choice(ordinary, size=(2000, 32)).astype(np.int64)
    windows[rng.random(windows.shape) < 0.1] = special.sep
    windows[:, 0] = special.cls
    windows[::2, 20:] = special.pad
    windows[1::7, 5] = special.unk
    windows[1::5, 6] = special.mask  # a literal [MASK] in the data is special too
    return objective, windows, objective.make_batch(windows, gen(1))


@pytest.mark.parametrize("special", [SpecialIds(0, 1, 2, 3, 4), BERT_SPECIAL])
def test_mlm_selects_15_percent_of_non_special_positions_split_80_10_10(
        special, make_objective):
    n_tokens = 200 if special is BERT_SPECIAL else 100
    objective, windows, batch = big_mlm_batch(make_objective, special, n_tokens)
    ids = torch.as_tensor(windows)
    is_special = torch.isin(ids, torch.tensor(special.all))
    selected = batch.targets != IGNORE
    eligible = int((~is_special).sum())
    assert eligible > 30_000
    assert selected.sum() / eligible == pytest.approx(0.15, abs=0.01)
    assert not (selected & is_special).any()
    assert torch.equal(batch.targets[selected], ids[selected])
    assert torch.equal(batch.input_ids[~selected], ids[~selected])  # untouched
    chosen_in, chosen_orig = batch.input_ids[selected], ids[selected]
    n = chosen_in.numel()
    masked = chosen_in == special.mask
    kept = chosen_in == chosen_orig
    random = ~masked & ~kept
    share_kept_by_chance = 0.1 / len(objective.allowed_replacements())
    assert masked.sum() / n == pytest.approx(0.8, abs=0.02)
    assert random.sum() / n == pytest.approx(0.1 - share_kept_by_chance, abs=0.015)
    assert kept.sum() / n == pytest.approx(0.1 + share_kept_by_chance, abs=0.015)


@pytest.mark.parametrize("special", [SpecialIds(0, 1, 2, 3, 4), BERT_SPECIAL])
def test_mlm_random_replacements_are_never_special_or_beyond_the_tokenizer(
        special, make_objective):
    n_tokens = 200 if special is BERT_SPECIAL else 100  # the model's V may be larger
    objective, windows, batch = big_mlm_batch(make_objective, special, n_tokens,
                                              mlm_probability=0.9)
    ids = torch.as_tensor(windows)
    replaced = (batch.input_ids != ids) & (batch.input_ids != special.mask)
    assert replaced.sum() > 3000
    new = batch.input_ids[replaced]
    assert not torch.isin(new, torch.tensor(special.all)).any()
    assert (new >= 0).all() and (new < n_tokens).all()
    # and they are spread over the whole allowed vocabulary
    assert len(torch.unique(new)) == n_tokens - 5
    allowed = objective.allowed_replacements()
    assert len(allowed) == n_tokens - 5
    assert not torch.isin(allowed, torch.tensor(special.all)).any()


def test_mlm_special_tokens_stay_in_place(make_objective):
    special = SpecialIds(0, 1, 2, 3, 4)
    _, windows, batch = big_mlm_batch(make_objective, special, mlm_probability=0.9)
    ids = torch.as_tensor(windows)
    is_special = torch.isin(ids, torch.tensor(special.all))
    assert torch.equal(batch.input_ids[is_special], ids[is_special])


@pytest.mark.parametrize("p", [0.05, 0.3])
def test_mlm_probability_sets_the_selection_rate(p, make_objective):
    _, windows, batch = big_mlm_batch(make_objective, mlm_probability=p)
    ids = torch.as_tensor(windows)
    eligible = ~torch.isin(ids, torch.tensor([0, 1, 2, 3, 4]))
    rate = float((batch.targets != IGNORE).sum() / eligible.sum())
    assert rate == pytest.approx(p, abs=0.01)


def test_mlm_masks_depend_only_on_seed_and_step(make_objective, synthetic_windows):
    objective = make_objective("mlm")
    windows = synthetic_windows(64, 16, 60)
    a = objective.make_batch(windows, step_generator(3, 10))
    b = objective.make_batch(windows, step_generator(3, 10))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    for other in (step_generator(3, 11), step_generator(4, 10),
                  step_generator(3, 10, 1)):
        c = objective.make_batch(windows, other)
        assert not torch.equal(a.targets, c.targets)


@settings(max_examples=40, deadline=None)
@given(windows=arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(2, 12)),
                      elements=st.integers(0, 59)),
       seed=st.integers(0, 2**31 - 1),
       p=st.floats(0.0, 1.0))
def test_mlm_only_ever_changes_selected_non_special_positions(windows, seed, p):
    special = SpecialIds(0, 1, 2, 3, 4)
    objective = Objective("mlm", special.all, special.pad, special.cls, special.mask,
                          n_tokens=60, mlm_probability=p)
    batch = objective.make_batch(windows, gen(seed))
    ids = torch.as_tensor(windows)
    selected = batch.targets != IGNORE
    is_special = torch.isin(ids, torch.tensor(special.all))
    assert batch.input_ids.shape == batch.targets.shape == ids.shape
    assert batch.input_ids.dtype == batch.targets.dtype == torch.int64
    assert not (selected & is_special).any()
    assert torch.equal(batch.targets[selected], ids[selected])
    assert torch.equal(batch.input_ids[~selected], ids[~selected])
    changed = batch.input_ids[selected]
    assert ((changed == special.mask) | ~torch.isin(changed, torch.tensor(special.all))
            ).all()
    assert (batch.input_ids < 60).all()
