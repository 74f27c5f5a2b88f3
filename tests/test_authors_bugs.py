"""Bugs of the authors' code (PAPER.md section 1.4) that no other test file covered.

The bug audit of chapter 11 (``twotower.scorecard.BUG_AUDIT``) names these tests next to
the older ones in test_towers.py, test_readouts.py, test_objectives.py, test_data.py and
test_preference.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import torch

from twotower.config import PRESETS, get_preset
from twotower.model import IGNORE, TwoTowerLM, count_parameters
from twotower.pipeline import make_objective
from twotower.training import WindowBatches


def test_the_mask_rate_of_the_run_config_reaches_the_objective(special,
                                                                synthetic_windows):
    """Bug 6: the authors read the mask rate from the wrong config key."""
    cfg = get_preset("smoke", "mlm")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                             mlm_probability=0.4))
    data = SimpleNamespace(special=special,
                           tokenizer=SimpleNamespace(get_vocab_size=lambda: 60))
    objective = make_objective(cfg, data)
    assert objective.mlm_probability == 0.4
    windows = synthetic_windows(400, 32, 60, pad=False)
    batch = WindowBatches(windows, objective, 400, 0).train_batch(0)
    eligible = ~torch.isin(torch.as_tensor(windows), torch.tensor(special.all))
    share = (batch.targets != IGNORE).sum() / eligible.sum()
    assert abs(float(share) - 0.4) < 0.02


def test_the_joint_loss_runs_the_head_once_and_only_where_there_is_a_target(
        tiny_config, synthetic_data):
    """Bug 7: the authors' GPT variant also computed (and discarded) full-vocabulary
    losses of each tower in phase 1."""
    model = TwoTowerLM(tiny_config("mlm"))
    batch = WindowBatches(synthetic_data.train, synthetic_data.objective("mlm"), 8,
                          0).train_batch(0)
    rows = []
    handle = model.head.register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        model.loss(batch.input_ids, batch.targets)
    finally:
        handle.remove()
    assert rows == [int((batch.targets != IGNORE).sum())]
    assert rows[0] < batch.input_ids.numel() / 3  # 15% of the positions


def test_every_preset_is_built_offline_without_huggingface_transformers(no_network):
    """Bug 7: the authors' GPT variant downloaded GPT-2 only to read its config and
    needed a hand patch of the transformers source; nothing here imports it."""
    for by_family in PRESETS.values():
        for cfg in by_family.values():
            assert count_parameters(cfg.model, 2) > 0  # built on the meta device
    model = TwoTowerLM(get_preset("smoke", "causal").model)
    assert model(torch.zeros(1, 8, dtype=torch.long)).shape[-1] == model.cfg.vocab_size
    code = ("import sys, twotower.pipeline, twotower.controls, twotower.hooks; "
            "sys.exit('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
