"""A run that keeps its checkpoints (twotower.experiments.history, chapter 12)."""

from __future__ import annotations

import pytest
import torch

from twotower.training import checkpoint as ckpt
from twotower.experiments import pipeline
from twotower.cli import build_parser, config_from_args
from twotower.errors import TwotowerError
from twotower.experiments.history import (
    checkpoint_steps,
    ensure_checkpoint_run,
    initial_model,
    load_checkpoint_model,
    weight_difference,
)
from twotower.models.tower_lm import TwoTowerLM


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
    # step 0 is the untrained model, and initial_model rebuilds it without training
    fresh = initial_model(pipeline.load_run(tmp_path / "main").config)
    first = load_checkpoint_model(run_dir, 0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                 fresh.state_dict().values()))
    assert not torch.equal(first.tok_emb.weight, last.tok_emb.weight)
    middle = load_checkpoint_model(run_dir, 4)
    assert not torch.equal(middle.tok_emb.weight, last.tok_emb.weight)
    # a second call trains nothing
    stamp = (run_dir / "joint" / "step-0000006" / ckpt.WEIGHTS).stat().st_mtime_ns
    ensure_checkpoint_run(run_dir, cfg, n_checkpoints=3, progress=False)
    weights = run_dir / "joint" / "step-0000006" / ckpt.WEIGHTS
    assert weights.stat().st_mtime_ns == stamp


def test_weight_difference_is_the_largest_change_of_any_weight(tiny_config):
    torch.manual_seed(0)
    a = TwoTowerLM(tiny_config("causal"))
    b = TwoTowerLM(tiny_config("causal"))
    b.load_state_dict(a.state_dict())
    assert weight_difference(a, b) == 0.0
    with torch.no_grad():
        b.tok_emb.weight[3, 1] += 0.5
        b.tok_emb.weight[4, 0] -= 0.25
    assert weight_difference(a, b) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(TwotowerError):
        weight_difference(a, TwoTowerLM(tiny_config("causal", n_layers=3)))
