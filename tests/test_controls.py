"""The three controls of chapter 9 are built as described: split halves partition a
single tower's units, independent towers share no gradient path, the untrained model is
its initialisation; and each control runs end to end from the command line."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from twotower.training import checkpoint as ckpt
from twotower.cli import main
from twotower.config import get_preset
from twotower.experiments.controls import (IndependentTowersLM, SplitSingleTower,
                                           load_control, split_single_tower_readouts,
                                           train_independent, untrained_model)
from twotower.errors import TwotowerError
from twotower.models.tower_lm import SingleTowerLM, TwoTowerLM
from twotower.training.readouts import train_readouts
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches, train


def ids_of(synthetic_data, n=4):
    return torch.as_tensor(synthetic_data.val[:n])


# --- (b) independent towers ---------------------------------------------------------

@pytest.mark.parametrize("family", ["causal", "mlm", "bilm"])
def test_a_loss_on_tower_a_gives_no_gradient_to_tower_b(family, tiny_config,
                                                         synthetic_data):
    model = IndependentTowersLM(tiny_config(family))
    batch = WindowBatches(synthetic_data.train, synthetic_data.objective(family), 4,
                          0).train_batch(0)
    model.tower_losses(batch)[0].backward()
    tower_a, tower_b = model.models
    assert all(p.grad is None or not p.grad.any() for p in tower_b.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in tower_a.parameters())


def test_independent_towers_share_no_parameter(tiny_config):
    model = IndependentTowersLM(tiny_config("causal"))
    a = {p.data_ptr() for p in model.models[0].parameters()}
    b = {p.data_ptr() for p in model.models[1].parameters()}
    assert not a & b
    embeddings = [m.tok_emb.weight for m in model.models]
    assert not torch.equal(*embeddings)


def test_each_independent_tower_trains_exactly_as_if_it_were_alone(
        tiny_config, train_config, synthetic_data):
    cfg = tiny_config("causal")  # no dropout, so no random stream is shared either
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"), 4,
                            0)
    steps = train_config(steps=6, grad_clip=0.05)  # clipping active on every step
    seed_everything(0)
    pair = IndependentTowersLM(cfg)
    alone = SingleTowerLM(cfg)
    alone.load_state_dict(pair.models[0].state_dict())
    train_independent(pair, batches, steps, progress=False)
    train(alone, alone.loss, batches, steps,
          progress=False)
    for (name, p), q in zip(pair.models[0].named_parameters(), alone.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_independent_features_are_each_towers_own_output(tiny_config, synthetic_data):
    model = IndependentTowersLM(tiny_config("mlm")).eval()
    x = ids_of(synthetic_data)
    features = model.features(x)
    assert features.shape == (2, *x.shape, model.cfg.d_model)
    for k in range(2):
        torch.testing.assert_close(features[k], model.models[k].features(x)[0])
    joint = model.head_logits(model.fuse(features))
    torch.testing.assert_close(joint.exp().sum(-1), torch.ones(x.shape))


# --- (a) the split single tower -------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_halves_partition_the_hidden_units(seed, tiny_config):
    single = SingleTowerLM(tiny_config("causal", d_model=16))
    split = SplitSingleTower(single, seed)
    assert split.halves.shape == (2, 8)
    assert sorted(split.halves.flatten().tolist()) == list(range(16))
    assert split.cfg.d_model == 8 and split.n_towers == 2


def test_split_seed_changes_the_halves(tiny_config):
    single = SingleTowerLM(tiny_config("causal"))
    assert not torch.equal(SplitSingleTower(single, 0).halves,
                           SplitSingleTower(single, 1).halves)


def test_split_features_are_the_units_of_each_half_and_fuse_restores_them(
        tiny_config, synthetic_data):
    single = SingleTowerLM(tiny_config("causal")).eval()
    split = SplitSingleTower(single, 3)
    x = ids_of(synthetic_data)
    full = single.features(x)[0]
    halves = split.features(x)
    for k in range(2):
        torch.testing.assert_close(halves[k], full[..., split.halves[k]])
    torch.testing.assert_close(split.fuse(halves), full)
    torch.testing.assert_close(split.head_logits(split.fuse(halves)), single(x))


def test_split_needs_an_even_width(tiny_config):
    single = SingleTowerLM(tiny_config("causal", d_model=18, n_heads=3))
    SplitSingleTower(single)  # 18 is even
    odd = SingleTowerLM(tiny_config("causal", d_model=15, n_heads=3))
    with pytest.raises(TwotowerError, match="odd"):
        SplitSingleTower(odd)


def test_split_readouts_read_half_the_units_and_leave_the_tower_alone(
        tiny_config, train_config, synthetic_data, weights_equal):
    single = SingleTowerLM(tiny_config("causal"))
    before = SingleTowerLM(tiny_config("causal"))
    before.load_state_dict(single.state_dict())
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"), 4,
                            0)
    split, readouts, _ = split_single_tower_readouts(single, batches, train_config(),
                                                     progress=False)
    assert [r.dense.in_features for r in readouts.readouts] == [8, 8]
    assert weights_equal(single, before)


# --- (c) the untrained model ----------------------------------------------------------

def test_untrained_model_is_the_init_of_the_run_of_the_same_seed(tiny_config,
                                                                 weights_equal):
    seed_everything(5)
    pipeline_init = TwoTowerLM(tiny_config("causal"))  # what pipeline.run builds
    assert weights_equal(untrained_model(tiny_config("causal"), 5), pipeline_init)
    assert not weights_equal(untrained_model(tiny_config("causal"), 6), pipeline_init)


def test_untrained_towers_still_equal_their_init_after_readout_training(
        tiny_config, train_config, synthetic_data, weights_equal):
    model = untrained_model(tiny_config("causal"), 0)
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"), 4,
                            0)
    train_readouts(model, batches, train_config(), progress=False)
    assert weights_equal(model, untrained_model(tiny_config("causal"), 0))


# --- end to end through the command line ----------------------------------------------

def fast_args(corpus, out, *extra):
    return ["run", "--preset", "smoke", "--corpus", str(corpus), "--steps", "4",
            "--readout-steps", "3", "--precision", "fp32", "--device", "cpu",
            "--quiet", "--out", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("control, model_class", [
    ("independent", IndependentTowersLM), ("split", SplitSingleTower),
    ("untrained", TwoTowerLM), ("reseeded", TwoTowerLM)])
def test_each_control_runs_from_the_command_line_and_loads_back(
        control, model_class, tiny_corpus, tmp_path):
    out = tmp_path / control
    assert main(fast_args(tiny_corpus, out, "--control", control)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["control"] == control
    assert json.loads((out / "config.json").read_text())["control"] == control
    df = pd.read_csv(out / "preference.csv")
    assert results["scores"]["scored_tokens"] == df["count"].sum()
    loaded = load_control(out)
    assert isinstance(loaded.model, model_class)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    if control == "untrained":
        assert ckpt.latest_checkpoint(out / "joint").name == "step-0000000"
        fresh = untrained_model(loaded.config.model, loaded.config.train.seed)
        assert all(torch.equal(a, b) for a, b in zip(
            fresh.state_dict().values(), loaded.model.state_dict().values()))


@pytest.mark.slow
def test_split_control_reuses_the_baseline_of_a_matching_main_run(tiny_corpus,
                                                                  tmp_path):
    from twotower.experiments import controls
    from twotower.cli import build_parser, config_from_args

    main_run = tmp_path / "main"
    assert main(fast_args(tiny_corpus, main_run, "--baseline")) == 0
    cfg = config_from_args(build_parser().parse_args(
        fast_args(tiny_corpus, tmp_path / "x", "--control", "split")))
    results = controls.run_control(cfg, tmp_path / "split", progress=False,
                                   reuse_from=main_run)
    assert "baseline" in results["model_training"]["reused"]
    assert not (tmp_path / "split" / "baseline").exists()  # nothing trained again
    copy = tmp_path / "copied runs"  # the reused tower is found relative to the run
    for name in ("main", "split"):
        shutil.copytree(tmp_path / name, copy / name)
    loaded = load_control(copy / "split")
    single = SingleTowerLM(loaded.model.single.cfg)
    ckpt.load_weights(ckpt.latest_checkpoint(main_run / "baseline"), single)
    assert all(torch.equal(a, b) for a, b in zip(
        single.state_dict().values(), loaded.model.single.state_dict().values()))
    other = controls.run_control(cfg.with_seed(1), tmp_path / "split1", progress=False,
                                 reuse_from=main_run)  # another seed: trains
    assert "reused" not in other["model_training"]
    assert (tmp_path / "split1" / "baseline").exists()


@pytest.mark.slow
def test_reseeded_control_keeps_the_towers_and_changes_only_the_readouts(tiny_corpus,
                                                                         tmp_path):
    from twotower.experiments import controls
    from twotower.experiments import pipeline
    from twotower.cli import build_parser, config_from_args

    main_run = tmp_path / "main"
    assert main(fast_args(tiny_corpus, main_run)) == 0
    cfg = config_from_args(build_parser().parse_args(
        fast_args(tiny_corpus, tmp_path / "x", "--control", "reseeded")))
    results = controls.run_control(cfg, tmp_path / "reseeded", progress=False,
                                   reuse_from=main_run)
    assert "joint" in results["model_training"]["reused"]
    assert not (tmp_path / "reseeded" / "joint").exists()
    ours, theirs = load_control(tmp_path / "reseeded"), pipeline.load_run(main_run)
    assert all(torch.equal(a, b) for a, b in zip(ours.model.state_dict().values(),
                                                 theirs.model.state_dict().values()))
    assert not torch.equal(ours.readouts.readouts[0].decoder.weight,
                           theirs.readouts.readouts[0].decoder.weight)
    assert not np.array_equal(ours.scores.ll, theirs.scores.ll)
    np.testing.assert_array_equal(ours.scores.target, theirs.scores.target)


def test_an_unknown_control_is_refused(tiny_config):
    from twotower.experiments import controls
    from twotower.config import RunConfig

    with pytest.raises(TwotowerError, match="unknown control"):
        controls.run_control(RunConfig(control="shuffled"), "/nonexistent")


def test_a_run_scored_by_an_older_version_is_rescored_not_retrained(tmp_path):
    from twotower.experiments import pipeline
    from twotower.experiments.store import ensure_scored
    from twotower.training.readouts import TokenScores

    cfg = get_preset("smoke", "mlm")
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, warmup_steps=1,
                                       precision="fp32", device="cpu"),
        readout=dataclasses.replace(cfg.readout, steps=2, warmup_steps=1,
                                    precision="fp32", device="cpu"))
    out = tmp_path / "run"
    pipeline.run(cfg, out, progress=False)
    current = TokenScores.load(out / "scores.npz")
    weights = (out / "joint").stat().st_mtime_ns
    results = json.loads((out / "results.json").read_text())
    for key in ("scoring", "made_from", "file_sha256"):  # what an older version wrote
        del results[key]
    (out / "results.json").write_text(json.dumps(results))
    TokenScores(current.target[:10], current.ll[:, :10],
                current.joint[:10]).save(out / "scores.npz")
    assert not pipeline.scoring_is_current(out)
    ensure_scored(out)
    assert pipeline.scoring_is_current(out)
    again = TokenScores.load(out / "scores.npz")
    np.testing.assert_array_equal(again.ll, current.ll)
    np.testing.assert_array_equal(again.article, current.article)
    assert (out / "joint").stat().st_mtime_ns == weights  # nothing was trained
