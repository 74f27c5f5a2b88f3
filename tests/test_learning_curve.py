"""The learning curve reads the very weights a run passed through, and its trend can
come out up, flat or down."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from safetensors.torch import load_file

from twotower.experiments import learning_curve as lc
from twotower.analysis.across_seeds import SeedStability
from twotower.cli import main
from twotower.config import read_run_config
from twotower.models.tower_lm import TwoTowerLM
from twotower.experiments.pipeline import start_run
from twotower.training.runtime import seed_everything
from twotower.training.trainer import train


def _args(corpus, out, *extra):
    return ["run", "--preset", "smoke", "--corpus", str(corpus), "--steps", "10",
            "--readout-steps", "3", "--precision", "fp32", "--device", "cpu",
            "--quiet", "--out", str(out), *extra]


def _weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.slow
def test_a_snapshot_is_the_step_the_full_run_passed_through(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    assert main(_args(tiny_corpus, run)) == 0
    snaps = lc.ensure_snapshots(run, [3, 7])
    assert set(snaps) == {3, 7} and all(p.parent.parent == run / "curve"
                                        for p in snaps.values())
    # the same config trained in full, keeping every checkpoint on the way
    cfg = read_run_config(run)
    every = dataclasses.replace(cfg.train, checkpoint_every=1, keep_checkpoints=20)
    cfg, _, batches, _ = start_run(cfg, tmp_path / "full")
    seed_everything(cfg.train.seed)
    model = TwoTowerLM(cfg.model)
    train(model, model.loss, batches, every, run_dir=tmp_path / "full",
          progress=False)
    for step, path in snaps.items():
        full = _weights(tmp_path / "full" / "joint" / f"step-{step:07d}")
        snap = _weights(path)
        assert all(np.array_equal(full[k].numpy(), snap[k].numpy()) for k in full)
    final = _weights(tmp_path / "full" / "joint" / "step-0000010")
    ours = _weights(run / "joint" / "step-0000010")
    assert all(np.array_equal(final[k].numpy(), ours[k].numpy()) for k in final)


@pytest.mark.slow
def test_the_curve_makes_each_point_once_and_reuses_the_run_and_its_control(
        tiny_corpus, tmp_path, monkeypatch):
    # run folders named as the run cache names them (RunSpec): the curve finds the
    # untrained control of a main run beside it
    run = tmp_path / "smoke-causal-seed0"
    untrained = tmp_path / "smoke-causal-seed0-untrained"
    assert main(_args(tiny_corpus, run)) == 0
    assert main(_args(tiny_corpus, untrained, "--control", "untrained")) == 0
    independent = tmp_path / "smoke-causal-seed0-independent"
    assert main(_args(tiny_corpus, independent, "--control", "independent")) == 0
    assert lc.pending_flops([run]) > 0
    points = lc.ensure_curve([run])
    assert sorted(points) == [0, 1, 3, 10]
    assert points[0][0].path == untrained and points[10][0].path == run
    for step in (1, 3):
        results = points[step][0].results
        assert results["curve_step"] == step and results["train_tokens_seen"] > 0
    assert lc.pending_flops([run]) == 0
    solo = lc.ensure_curve([independent])
    assert solo[0][0].path == independent / "curve" / "step-0000000"
    assert solo[3][0].config.control == "independent"

    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was trained again")
    for name in ("train_readouts", "train", "train_independent"):
        monkeypatch.setattr(f"twotower.experiments.learning_curve.{name}", refuse)
    again = lc.ensure_curve([run])
    assert [p[0].path for p in again.values()] == [p[0].path for p in points.values()]
    assert lc.ensure_curve([run], untrained=0)[0] == []  # step 0 for no run at all
    assert len(lc.ensure_curve([run], untrained=0)[3]) == 1


# --- the trend, on stabilities whose answer is known --------------------------------


def _stability(label, value, noise):
    """SeedStability whose pair (i, j) holds value + noise[i] + noise[j]."""
    n = len(noise)
    matrix = value + noise[:, None] + noise[None, :]
    np.fill_diagonal(matrix, np.nan)
    i, j = np.triu_indices(n, 1)
    return SeedStability(label, tuple(range(n)), matrix, np.ones(n),
                         float(matrix[i, j].mean()), np.nan, np.nan, np.nan, np.nan, 50)


def _found(slopes: dict[str, float], seed=0):
    rng = np.random.default_rng(seed)
    tokens = {0: 0, 1: 10_000, 3: 30_000, 10: 100_000}
    found = {}
    for label, slope in slopes.items():
        for step, n in tokens.items():
            value = 0.1 + slope * (np.log10(n) if n else 3.0)
            found[label, step] = _stability(label, value, rng.normal(0, 0.02, 5))
    return found, tokens


@pytest.mark.parametrize("slope,direction", [(0.3, "up"), (0.0, "flat"),
                                             (-0.3, "down")])
def test_the_trend_recovers_a_planted_slope(slope, direction):
    found, tokens = _found({"x": slope})
    trend = lc.fit_trend(found, "x", tokens, 1e7)
    assert trend.direction == direction
    assert trend.low <= slope <= trend.high or abs(trend.slope - slope) < 0.05
    assert trend.n_points == 3 and trend.n_seeds == 5
    assert trend.at == pytest.approx(0.1 + slope * 7, abs=0.1)  # the extrapolation


def test_a_difference_of_trends_adds_both_uncertainties():
    found, tokens = _found({"x": 0.3, "y": 0.1})
    x, y = (lc.fit_trend(found, k, tokens, 1e7) for k in ("x", "y"))
    d = lc.fit_trend(found, "x", tokens, 1e7, minus="y")
    assert d.slope == pytest.approx(x.slope - y.slope)
    assert d.high - d.low > max(x.high - x.low, y.high - y.low)
    assert d.direction == "up" and d.label == "x minus y"
    table = lc.trend_table([x, y, d], reached=100_000)
    assert "extrapolated at 1e+07 tokens" in table.columns


def test_a_trend_needs_two_points_after_training_began():
    found, tokens = _found({"x": 0.1})
    found = {k: v for k, v in found.items() if k[1] in (0, 10)}
    with pytest.raises(Exception, match="2 points"):
        lc.fit_trend(found, "x", tokens, 1e7)


def test_the_difference_along_the_curve_is_the_difference_of_the_curves():
    found, tokens = _found({"x": 0.3, "y": 0.1})
    diff = lc.difference_table(found, "x", "y", tokens)
    assert list(diff["step"]) == sorted(tokens)
    for row in diff.itertuples():
        assert row._4 == pytest.approx(found["x", row.step].mean -
                                       found["y", row.step].mean)
    assert set(diff["condition"]) == {"x minus y"}
