"""A planted division reaches the towers through gradients only, and the power table
tells a planted division from none."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from twotower.experiments import power
from twotower.config import config_to_dict
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.objectives import Batch
from twotower.experiments.planted import (PLANTED_PRESETS, PlantedRunConfig, owners, routed_loss,
                              run_directory)
from twotower.data.synthetic import PlantedLanguage

from planted_configs import tiny_planted


def _tiny(division: float = 0.0, steps: int = 60) -> PlantedRunConfig:
    return tiny_planted(dict(steps=steps, log_every=10, eval_every=0),
                        dict(steps=30), n_train=256, n_val=64, min_count=3,
                        division=division)


def _model_and_batch(cfg, only: str | None = None, seed: int = 0):
    language = PlantedLanguage(cfg.language)
    torch.manual_seed(seed)
    model = TwoTowerLM(cfg.resolved_model(language.vocab_size)).eval()
    windows = torch.as_tensor(language.sample(4, seed=seed).windows)
    targets = windows[:, 1:].clone()
    if only is not None:  # keep only the targets of one process
        keep = torch.as_tensor(language.labels[targets.numpy()] == only)
        targets[~keep] = -100
    return language, model, Batch(windows[:, :-1], targets)


def test_routing_changes_no_prediction_only_gradients():
    cfg = _tiny()
    language, model, batch = _model_and_batch(cfg)
    owner = owners(language, seed=0)
    plain = model.loss(batch)
    for strength in (0.0, 0.5, 1.0):
        assert torch.allclose(routed_loss(model, batch, owner, strength), plain)


@pytest.mark.parametrize("seed", [0, 1])
def test_fully_routed_local_targets_train_only_the_tower_that_owns_them(seed):
    cfg = _tiny()
    language, model, batch = _model_and_batch(cfg, only="local", seed=seed)
    owner = owners(language, seed)
    mine = seed % 2  # local ids go to tower seed % 2
    assert int(owner[language.local_ids[0]]) == mine
    assert int(owner[language.topic_ids[0]]) == 1 - mine
    qkv = model.towers.blocks[0].qkv.weight  # (2, D, 3D): one slice per tower
    grad, = torch.autograd.grad(routed_loss(model, batch, owner, 1.0), [qkv])
    assert grad[mine].abs().sum() > 0
    assert grad[1 - mine].abs().sum() == 0
    grad, = torch.autograd.grad(routed_loss(model, batch, owner, 0.0), [qkv])
    assert grad[1 - mine].abs().sum() > 0  # unrouted, both towers learn


def test_a_config_without_division_keeps_the_folder_it_had_before():
    for cfg in PLANTED_PRESETS.values():
        fields = config_to_dict(cfg)
        fields.pop("division")
        old = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        assert cfg.key() == old
        assert dataclasses.replace(cfg, division=0.3).key() != old


def test_the_power_config_has_the_presets_architecture():
    cfg = power.power_config("small", 0.3)
    from twotower.config import get_preset
    real = get_preset("small", "causal")
    for field in ("n_layers", "d_model", "n_heads", "d_ff", "dropout"):
        assert getattr(cfg.model, field) == getattr(real.model, field)
    assert cfg.joint.batch_size == real.train.batch_size and cfg.division == 0.3
    assert cfg.joint.steps == round(real.train.steps * power.TOKEN_SHARE)


@pytest.mark.slow
def test_the_power_table_tells_a_planted_division_from_none(tmp_path, monkeypatch):
    monkeypatch.setattr(power, "power_config",
                        lambda preset, strength: _tiny(strength))
    strengths = {"none": 0.0, "strong": 0.5}
    assert power.pending_flops("smoke", strengths, [0, 1, 2], tmp_path) > 0
    runs = power.ensure_power_runs(tmp_path, "smoke", strengths, seeds=[0, 1, 2],
                                   device="cpu")
    assert power.pending_flops("smoke", strengths, [0, 1, 2], tmp_path) == 0
    assert run_directory(_tiny(0.5), 2, tmp_path).exists()
    table = power.power_table(runs, centred=False, n_perm=100)
    assert list(table.index) == ["none", "strong"]
    assert table.loc["strong", "gap"] > table.loc["none", "gap"] + 0.1
    assert (table["|gap|"] >= table["gap"].abs() - 1e-12).all()
    assert table["planted |r|"].between(0, 1).all()
    assert table["detected"].dtype == bool and (table["seeds"] == 3).all()
    assert np.isfinite(table.loc["strong", ["mean r_x", "low", "high"]]).all()
    found = power.smallest_detected(table)
    assert found in (None, "strong")
    assert found == ("strong" if table.loc["strong", "detected"] else None)
