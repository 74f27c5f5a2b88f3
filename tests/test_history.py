"""A run that keeps its checkpoints (twotower.history, chapter 12)."""

from __future__ import annotations

import pytest
import torch

from twotower import checkpoint as ckpt
from twotower import pipeline
from twotower.cli import build_parser, config_from_args
from twotower.history import (
    checkpoint_steps,
    ensure_checkpoint_run,
    load_checkpoint_model,
)
from twotower.model import TwoTowerLM
from twotower.runtime import seed_everything


@pytest.mark.slow
def test_checkpoint_run_keeps_init_and_every_checkpoint_and_ends_at_the_main_run(
        tiny_corpus, tmp_path):
    args = ["run", "--preset", "smoke", "--corpus", str(tiny_corpus), "--steps", "6",
            "--readout-steps", "2", "--precision", "fp32", "--device", "cpu",
            "--quiet", "--out", str(tmp_path / "main")]
    cfg = config_from_args(build_parser().parse_args(args))
    pipeline.run(cfg, tmp_path / "main", progress=False)
    run_dir = ensure_checkpoint_run(tmp_path / "ckpts", cfg, n_checkpoints=3,
                                    progress=False)
    assert checkpoint_steps(run_dir) == [0, 2, 4, 6]
    main = TwoTowerLM(pipeline.load_run(tmp_path / "main").config.model)
    ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "main" / "joint"), main)
    last = load_checkpoint_model(run_dir, 6)
    for a, b in zip(last.state_dict().values(), main.state_dict().values()):
        assert torch.equal(a, b)  # same data, seed and schedule: the same model
    seed_everything(cfg.train.seed)
    fresh = TwoTowerLM(last.cfg)
    first = load_checkpoint_model(run_dir, 0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 fresh.state_dict().values()))
    middle = load_checkpoint_model(run_dir, 4)
    assert not torch.equal(middle.tok_emb.weight, last.tok_emb.weight)
    # a second call trains nothing
    stamp = (run_dir / "joint" / "step-0000006" / ckpt.WEIGHTS).stat().st_mtime_ns
    ensure_checkpoint_run(run_dir, cfg, n_checkpoints=3, progress=False)
    weights = run_dir / "joint" / "step-0000006" / ckpt.WEIGHTS
    assert weights.stat().st_mtime_ns == stamp
