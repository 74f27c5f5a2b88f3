"""Seeds trained as one stacked computation end where separate runs end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from twotower.errors import TwotowerError
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.objectives import Objective
from twotower.experiments.planted import (PlantedRunConfig, _windows, run_directory, run_planted,
                              run_planted_seeds)
from twotower.training.stacked import train_stacked
from twotower.data.synthetic import CLS_ID, SPECIAL_IDS, PlantedLanguage
from twotower.training.trainer import WindowBatches, train

from planted_configs import tiny_planted

SEEDS = (0, 1, 2)


def _tiny(steps: int = 12) -> PlantedRunConfig:
    return tiny_planted(dict(steps=steps, log_every=5, eval_every=0, warmup_steps=3),
                        dict(steps=6), n_train=64, n_val=32, min_count=3)


def _setup(cfg):
    language = PlantedLanguage(cfg.language)
    objective = Objective("causal", SPECIAL_IDS, pad_id=0, cls_id=CLS_ID, mask_id=4,
                          n_tokens=language.vocab_size)
    batches = [WindowBatches(_windows(cfg, language, s)[0], objective,
                             cfg.joint.batch_size, s) for s in SEEDS]

    def model(seed):
        torch.manual_seed(seed)
        return TwoTowerLM(cfg.resolved_model(language.vocab_size))
    return model, batches


def test_stacked_seeds_end_where_separate_runs_end():
    cfg = _tiny()
    model, batches = _setup(cfg)
    separate = []
    for seed, b in zip(SEEDS, batches):
        m = model(seed)
        train(m, m.loss, b, cfg.joint, progress=False)
        separate.append(m)
    stacked = [model(s) for s in SEEDS]
    out = train_stacked(stacked, batches, cfg.joint)
    for a, b in zip(separate, stacked):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=2e-5), name
    # and the seeds did not collapse into one
    assert not torch.allclose(stacked[0].tok_emb.weight, stacked[1].tok_emb.weight)
    assert len(out["train_loss"]) == len(SEEDS) and out["tokens_per_s"] > 0
    opt, sched = out["optimizers"][1]  # seed 1's own slice of the AdamW state
    assert all(opt.state[p]["exp_avg"].abs().sum() > 0 for p in stacked[1].parameters())
    assert sched.last_epoch == cfg.joint.steps


def test_models_with_dropout_are_refused():
    cfg = _tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.1))
    model, batches = _setup(cfg)
    with pytest.raises(TwotowerError, match="dropout"):
        train_stacked([model(s) for s in SEEDS], batches, cfg.joint)


@pytest.mark.slow
def test_planted_seeds_stacked_score_as_separate_runs(tmp_path, monkeypatch):
    cfg = _tiny()
    together = run_planted_seeds(cfg, SEEDS, tmp_path / "stacked", device="cpu",
                                 control=False, progress=False)
    for seed, run in zip(SEEDS, together):
        alone = run_planted(cfg, seed, tmp_path / "alone", device="cpu", control=False,
                            progress=False)
        assert np.allclose(run.scores.ll, alone.scores.ll, atol=1e-4)
        assert np.array_equal(run.scores.target, alone.scores.target)
        metrics = run.metrics()
        assert metrics["step"].max() == cfg.joint.steps and metrics["loss"].notna().any()
    def refuse(*args, **kwargs):
        raise AssertionError("finished seeds were trained again")
    monkeypatch.setattr("twotower.training.stacked.train_stacked", refuse)
    monkeypatch.setattr("twotower.experiments.planted.train", refuse)
    again = run_planted_seeds(cfg, SEEDS, tmp_path / "stacked", device="cpu",
                              control=False, progress=False)
    assert [r.run_dir for r in again] == [run_directory(cfg, s, tmp_path / "stacked")
                                          for s in SEEDS]


def test_the_benchmark_times_both_ways_and_compares_their_weights():
    from twotower.experiments.bench import stacked_seeds

    figures = stacked_seeds(2, 3, "smoke")
    assert figures["separate_s"] > 0 and figures["stacked_s"] > 0
    assert figures["speedup"] == figures["separate_s"] / figures["stacked_s"]
    assert figures["max_abs_diff"] < 1e-4
