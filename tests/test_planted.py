"""The chapter 2 experiment runs end to end on a tiny config and reuses what it saved."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from twotower.experiments.planted import PLANTED_PRESETS, PlantedRunConfig, run_planted, summarise

from planted_configs import tiny_planted


def _tiny() -> PlantedRunConfig:
    return tiny_planted(dict(steps=20, eval_every=10, log_every=5), dict(steps=10),
                        n_train=64, n_val=32, min_count=3)


@pytest.mark.slow
def test_run_planted_trains_reads_out_and_then_reuses_the_run(tmp_path):
    cfg = _tiny()
    run = run_planted(cfg, seed=0, runs_dir=tmp_path, device="cpu", progress=False)
    assert run.scores.ll.shape[0] == 2 and run.init_scores is not None
    assert (run.run_dir / "scores.npz").exists()
    assert (run.run_dir / "init_scores.npz").exists()
    metrics = run.metrics()
    assert metrics["step"].max() == cfg.joint.steps
    assert metrics["val_loss"].notna().any()
    oracle = run.oracle_losses()
    assert set(oracle.index) == {"local", "topic"} and (oracle > 0).all()

    again = run_planted(cfg, seed=0, runs_dir=tmp_path, device="cpu", progress=False)
    assert again.run_dir == run.run_dir
    assert np.array_equal(again.scores.ll, run.scores.ll)

    table = summarise(run, n_boot=50, n_perm=50)
    assert list(table.index) == ["trained", "untrained"]
    for column in ("|r|", "ci_low", "ci_high", "p", "null_95", "balanced",
                   "separation", "loss tower A local", "loss joint head topic"):
        assert column in table.columns
    assert ((table["|r|"] >= 0) & (table["|r|"] <= 1)).all()


def test_a_changed_config_gets_its_own_run_directory():
    small = PLANTED_PRESETS["small"]
    longer = dataclasses.replace(small, joint=dataclasses.replace(small.joint,
                                                                  steps=1))
    assert small.key() != longer.key()
    assert small.key() == PlantedRunConfig().key()
    assert PLANTED_PRESETS["smoke"].key() != small.key()
