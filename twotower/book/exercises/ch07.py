"""Exercise checks of chapter 7 (*Reading each tower alone*).

Introduced in chapter 7 (*Reading each tower alone*): an optimiser that trains a
readout and leaves the frozen model bit-identical, and the paired difference of two
readouts' log-likelihoods with its standard error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from twotower.analysis.preference import token_preference
from twotower.book.exercises.framework import Attempt, exercise
from twotower.config import ModelConfig, TrainConfig
from twotower.data.scores import TokenScores
from twotower.models.tower_lm import TwoTowerLM
from twotower.training.optim import make_optimizer
from twotower.training.readouts import Readout, freeze

# --- an optimiser of the readout only -------------------------------------------------


def reference_readout_optimizer(model, readout, lr, weight_decay):
    """Reference of :func:`check_readout_optimizer`: the package's
    :func:`~twotower.training.readouts.freeze` and
    :func:`~twotower.training.optim.make_optimizer`."""
    freeze(model)
    cfg = TrainConfig(steps=10, warmup_steps=1, lr=lr, weight_decay=weight_decay)
    optimizer, _ = make_optimizer(readout, cfg, torch.device("cpu"))
    return optimizer


def _state_bytes(module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _setup_problem(optimizer, model, readout) -> str:
    """What is wrong with the frozen model and the optimiser ("" if nothing)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        return f"returned {type(optimizer).__name__}, expected a torch.optim optimiser"
    if any(p.requires_grad for p in model.parameters()):
        return "the model still has parameters with requires_grad=True"
    if model.training:
        return "the model is still in training mode, so dropout keeps changing its " \
               "features"
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if held & {id(p) for p in model.parameters()}:
        return "the optimiser holds frozen model parameters"
    if held != {id(p) for p in readout.parameters()}:
        return "the optimiser must hold every parameter of the readout and nothing else"
    if not all(p.requires_grad for p in readout.parameters()):
        return "the readout was frozen too; only the model must be"
    return ""


def _train_readout(model, readout, optimizer, tower: int) -> None:
    """Three steps of readout training, with stale gradients left on the model."""
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


@exercise(reference_readout_optimizer, hint=(
    "Hint: model.requires_grad_(False) and model.eval() (or "
    "twotower.training.readouts.freeze), then torch.optim.AdamW over "
    "readout.parameters() ONLY: a frozen parameter left in the optimiser is still "
    "shrunk by weight decay whenever it holds a gradient tensor, even one of zeros "
    "(the authors' bug 3)."))
def check_readout_optimizer(attempt: Attempt) -> str:
    """Check ``readout_optimizer(model, readout, lr, weight_decay)``: freezes ``model``
    (no gradient, dropout off) and returns an optimiser of the readout's parameters
    only, so that training the readout leaves the model bit-identical."""
    for family, tower in (("causal", 0), ("mlm", 1)):
        cfg = ModelConfig(family=family, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                          vocab_size=40, max_len=8, dropout=0.1)
        torch.manual_seed(7)
        model, readout = TwoTowerLM(cfg), Readout(16, 40)
        before, readout_before = _state_bytes(model), _state_bytes(readout)
        optimizer = attempt.call(model=model, readout=readout, lr=1e-2,
                                 weight_decay=0.1)
        case = f"family={family!r}"
        problem = _setup_problem(optimizer, model, readout)
        if problem:
            attempt.fail(f"{problem} ({case}).")
        _train_readout(model, readout, optimizer, tower)
        moved = [key for key, value in model.state_dict().items()
                 if not torch.equal(value, before[key])]
        if moved:
            attempt.fail(f"training the readout changed the frozen model ({moved[0]} "
                         f"and {len(moved) - 1} more; {case}).")
        trained = readout.state_dict()
        if all(torch.equal(trained[k], v) for k, v in readout_before.items()):
            attempt.fail(f"three optimiser steps left the readout unchanged ({case}).")
    return "frozen model bit-identical after 3 steps with weight decay"


# --- paired difference ----------------------------------------------------------------


def reference_paired_difference(ll_a, ll_b):
    """Reference of :func:`check_paired_difference`: ``(pref, pref_se)`` of
    :func:`~twotower.analysis.preference.token_preference`, all positions one token."""
    ll = np.stack([np.asarray(ll_a, dtype=np.float64),
                   np.asarray(ll_b, dtype=np.float64)])
    one_token = TokenScores(np.zeros(ll.shape[1], dtype=np.int32), ll, ll[0])
    row = token_preference(one_token, vocab_size=1, min_count=1).iloc[0]
    return float(row["pref"]), float(row["pref_se"])


def _paired_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(30)
    cases = []
    for n, shared, gap in ((5, 1.0, 0.3), (400, 2.0, -0.1), (20_000, 3.0, 0.02)):
        difficulty = rng.gamma(2.0, shared, n)  # shared by both readouts
        cases.append(dict(ll_a=-difficulty + gap + rng.normal(0, 0.5, n),
                          ll_b=-difficulty + rng.normal(0, 0.5, n)))
    return cases


@exercise(reference_paired_difference, hint=(
    "Hint: take the differences d = ll_a - ll_b position by position; return "
    "(d.mean(), d.std(ddof=1) / sqrt(n)). Treating the two columns as independent "
    "samples ignores that both readouts scored the same positions."))
def check_paired_difference(attempt: Attempt) -> str:
    """Check ``paired_difference(ll_a, ll_b)``: the mean over positions of
    ``ll_a - ll_b`` and its standard error, as :func:`token_preference` computes them
    for one token (all positions taken as one token)."""
    return attempt.compare(
        _paired_cases(),
        lambda c: f"{c['ll_a'].size} positions; expected (mean, standard_error)",
        "cases, standard error of paired differences", atol=1e-9, rtol=1e-6)
