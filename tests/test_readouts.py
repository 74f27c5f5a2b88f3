"""Phases 2 and 3: frozen towers, one readout per tower, paired fp32 scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.training import trainer as training
from twotower.config import FAMILIES
from twotower.models.tower_lm import IGNORE, TwoTowerLM
from twotower.analysis.preference import token_preference
from twotower.training.readouts import (TokenScores, TowerReadouts, loss_summary,
                               score_readouts, train_readouts)
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches


def setup(family, tiny_config, synthetic_data, seed=0):
    seed_everything(seed)
    model = TwoTowerLM(tiny_config(family)).eval()
    readouts = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size)
    objective = synthetic_data.objective(family)
    batches = WindowBatches(synthetic_data.val, objective, 4, 0).eval_batches()
    return model, readouts, batches


def score(model, readouts, batches):
    return score_readouts(model, readouts, batches, device="cpu", precision="fp32")


def perturb_tower(model: TwoTowerLM, tower: int, seed: int = 0) -> None:
    """Add noise to every weight that belongs to ``tower`` alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")
            stacked = parts[0] == "tower_in" or parts[:2] == ["towers", "blocks"]
            if stacked:
                p[tower] += 0.5 * torch.randn(p[tower].shape, generator=g)
            elif parts[:2] in (["towers", "fwd"], ["towers", "bwd"]) and \
                    parts[2] == str(tower):
                p += 0.5 * torch.randn(p.shape, generator=g)


# --- paired scoring -------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_scores_are_fp32_log_probabilities_of_the_true_token_on_shared_positions(
        family, tiny_config, synthetic_data):
    model, readouts, batches = setup(family, tiny_config, synthetic_data)
    scores = score(model, readouts, batches)
    n = sum(b.n_targets for b in batches)
    assert scores.ll.shape == (2, n)
    assert scores.target.shape == scores.joint.shape == (n,)
    assert scores.ll.dtype == scores.joint.dtype == np.float32
    assert (scores.ll <= 0).all() and (scores.joint <= 0).all()
    ids = torch.cat([b.input_ids for b in batches])
    targets = torch.cat([b.targets for b in batches])
    keep = targets != IGNORE
    with torch.no_grad():
        features = model.features(ids)
        joint = model(ids).log_softmax(-1)[keep].gather(1, targets[keep][:, None])[:, 0]
        for k, readout in enumerate(readouts.readouts):
            ll = readout(features[k][keep]).log_softmax(-1)
            expected = ll.gather(1, targets[keep][:, None])[:, 0]
            np.testing.assert_allclose(scores.ll[k], expected.numpy(), rtol=1e-5,
                                       atol=1e-5)
    np.testing.assert_array_equal(scores.target, targets[keep].numpy())
    np.testing.assert_allclose(scores.joint, joint.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_readout_reads_its_own_tower_only(family, tiny_config, synthetic_data):
    """Changing tower B moves readout B's scores and never readout A's (the authors
    normalised both towers together before slicing: bug 2 of the audit)."""
    model, readouts, batches = setup(family, tiny_config, synthetic_data)
    before = score(model, readouts, batches)
    perturb_tower(model, 1)
    after = score(model, readouts, batches)
    np.testing.assert_array_equal(before.target, after.target)
    np.testing.assert_allclose(after.ll_a, before.ll_a, rtol=1e-6, atol=1e-6)
    assert np.abs(after.ll_b - before.ll_b).max() > 1e-3
    assert np.abs(after.joint - before.joint).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_swapping_towers_and_readouts_swaps_scores_and_flips_pref(
        family, tiny_config, synthetic_data, swapped_tower_state):
    model, readouts, batches = setup(family, tiny_config, synthetic_data)
    scores = score(model, readouts, batches)
    swapped = TwoTowerLM(model.cfg).eval()
    swapped.load_state_dict(swapped_tower_state(model))
    swapped_readouts = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size)
    swapped_readouts.readouts[0].load_state_dict(readouts.readouts[1].state_dict())
    swapped_readouts.readouts[1].load_state_dict(readouts.readouts[0].state_dict())
    flipped = score(swapped, swapped_readouts, batches)
    np.testing.assert_array_equal(flipped.target, scores.target)
    np.testing.assert_allclose(flipped.ll_a, scores.ll_b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flipped.ll_b, scores.ll_a, rtol=1e-5, atol=1e-5)
    V = model.cfg.vocab_size
    pref = token_preference(scores, V, min_count=1)["pref"]
    pref_flipped = token_preference(flipped, V, min_count=1)["pref"]
    assert pref.notna().sum() > 5 and pref.abs().max() > 1e-3
    np.testing.assert_allclose(pref_flipped.to_numpy(), -pref.to_numpy(), rtol=1e-4,
                               atol=1e-5)


def test_token_scores_survive_a_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    scores = TokenScores(rng.integers(0, 50, 30).astype(np.int32),
                         -rng.random((2, 30)).astype(np.float32),
                         -rng.random(30).astype(np.float32))
    scores.save(tmp_path / "scores.npz")
    loaded = TokenScores.load(tmp_path / "scores.npz")
    for name in ("target", "ll", "joint"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(scores, name))
        assert getattr(loaded, name).dtype == getattr(scores, name).dtype


def test_loss_summary_reports_mean_negative_log_probability_and_perplexity():
    probs = np.array([[0.5, 0.25, 0.5], [1.0, 1.0, 0.5]], np.float32)
    scores = TokenScores(np.array([1, 2, 3], np.int32), np.log(probs),
                         np.log(np.array([0.5, 0.5, 0.5], np.float32)))
    summary = loss_summary(scores)
    assert summary["scored_tokens"] == 3
    assert summary["joint_loss"] == pytest.approx(np.log(2))
    assert summary["joint_ppl"] == pytest.approx(2.0)
    assert summary["readout_a_loss"] == pytest.approx(-np.log([0.5, 0.25, 0.5]).mean())
    assert summary["readout_b_ppl"] == pytest.approx(np.exp(np.log(2) / 3))


# --- training the readouts on frozen towers -------------------------------------------

def test_readout_training_leaves_the_frozen_model_bit_identical_and_out_of_the_optimizer(  # noqa: E501
        tiny_config, train_config, synthetic_data, monkeypatch):
    seed_everything(0)
    model = TwoTowerLM(tiny_config("mlm", dropout=0.1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = []

    def recording(module, cfg, device):
        opt, sched = make_optimizer(module, cfg, device)
        optimizers.append(opt)
        return opt, sched

    make_optimizer = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", recording)
    objective = synthetic_data.objective("mlm")
    # a large learning rate and weight decay would move anything in the optimiser
    readouts, summary = train_readouts(
        model, WindowBatches(synthetic_data.train, objective, 4, 0),
        train_config(steps=5, lr=0.05, weight_decay=0.5), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training  # dropout off: the towers' features are fixed
    (opt,) = optimizers
    optimised = {id(p) for group in opt.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in readouts.parameters()}
    assert not optimised & {id(p) for p in model.parameters()}
    fresh = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size)
    assert summary["steps"] == 5 and not readouts.training
    assert not torch.equal(fresh.readouts[0].dense.weight,
                           readouts.readouts[0].dense.weight)


def test_readout_training_lowers_both_readouts_losses(tiny_config, train_config,
                                                     synthetic_data):
    seed_everything(0)
    model = TwoTowerLM(tiny_config("causal"))
    objective = synthetic_data.objective("causal")
    windows = np.arange(12)[None, :].repeat(40, 0) % 7 + 5  # 5 6 .. 11 5 6: learnable
    windows[:, 0] = synthetic_data.special.cls
    batches = WindowBatches(windows[:8], objective, 4, 0).eval_batches()
    untrained = TowerReadouts(model.cfg.d_model, model.cfg.vocab_size)
    before = loss_summary(score(model, untrained, batches))
    readouts, _ = train_readouts(model, WindowBatches(windows[8:], objective, 8, 0),
                                 train_config(steps=30, lr=1e-2), progress=False)
    after = loss_summary(score(model, readouts, batches))
    for name in ("readout_a_loss", "readout_b_loss"):
        assert after[name] < 0.5 * before[name], name


def test_readouts_start_from_a_seed_of_their_own(tiny_config, train_config,
                                                 synthetic_data):
    """Readout initialisation depends on the readout seed only, not on whatever the
    global RNG went through before; and the two readouts differ from each other."""
    objective = synthetic_data.objective("causal")
    seed_everything(0)
    model = TwoTowerLM(tiny_config("causal"))
    results = []
    for scramble in (1, 1000):
        torch.rand(scramble)  # another global RNG state before each call
        readouts, _ = train_readouts(model, WindowBatches(synthetic_data.train,
                                                          objective, 4, 0),
                                     train_config(steps=2), progress=False)
        results.append(readouts)
    a, b = results
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.readouts[0].dense.weight, a.readouts[1].dense.weight)


def test_readout_validation_loss_is_a_per_token_loss_like_the_scores(
        tiny_config, train_config, synthetic_data):
    seed_everything(0)
    model = TwoTowerLM(tiny_config("causal"))
    objective = synthetic_data.objective("causal")
    val = WindowBatches(synthetic_data.val, objective, 4, 0)
    tcfg = train_config(steps=2, eval_batches=2)
    readouts, summary = train_readouts(
        model, WindowBatches(synthetic_data.train, objective, 4, 0), tcfg, val=val,
        progress=False)
    scored = loss_summary(score(model, readouts, val.eval_batches(tcfg.eval_batches)))
    per_readout = (scored["readout_a_loss"] + scored["readout_b_loss"]) / 2
    assert summary["val_loss"] == pytest.approx(per_readout, rel=1e-4)


# --- what a run scores ----------------------------------------------------------------

def test_mlm_scoring_masks_every_eligible_position_once_and_only_with_mask(
        synthetic_data, special):
    objective = synthetic_data.objective("mlm")
    batches = WindowBatches(synthetic_data.val, objective, 4, 0).score_batches()
    windows = torch.as_tensor(synthetic_data.val)
    eligible = ~torch.isin(windows, torch.tensor(special.all))
    times = torch.zeros_like(windows)
    for batch in batches:
        rows = batch.window
        selected = batch.targets != IGNORE
        assert (batch.input_ids[selected] == special.mask).all()  # no 10% / 10%
        assert torch.equal(batch.input_ids[~selected], windows[rows][~selected])
        assert torch.equal(batch.targets[selected], windows[rows][selected])
        times[rows] += selected.long()
    assert (times[eligible] == 1).all() and (times[~eligible] == 0).all()
    n_passes = round(1 / objective.mlm_probability)
    assert len(batches) == n_passes * -(-len(windows) // 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_run_of_one_text_is_scored_on_the_same_positions_and_masks(
        family, synthetic_data):
    objective = synthetic_data.objective(family)
    one, other = (WindowBatches(synthetic_data.val, objective, 4, seed).score_batches()
                  for seed in (0, 7))  # the run's seed must not matter
    assert len(one) == len(other)
    for a, b in zip(one, other):
        assert torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.targets, b.targets) and torch.equal(a.window, b.window)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_scored_position_knows_its_window(family, tiny_config, synthetic_data):
    model, readouts, _ = setup(family, tiny_config, synthetic_data)
    batches = WindowBatches(synthetic_data.val, synthetic_data.objective(family), 3,
                            0).score_batches()
    scores = score(model, readouts, batches)
    expected = torch.cat([b.window[:, None].expand_as(b.targets)[b.targets != IGNORE]
                          for b in batches])
    assert np.array_equal(scores.window, expected.numpy())
    assert set(scores.window) == set(range(len(synthetic_data.val)))
    keep = scores.window % 2 == 0
    part = scores.subset(keep)
    assert np.array_equal(part.ll, scores.ll[:, keep]) and part.article is None


def test_scores_are_fp32_even_when_training_used_bf16(tiny_config, synthetic_data,
                                                      tmp_path):
    from types import SimpleNamespace

    from twotower.config import RunConfig, TrainConfig
    from twotower.experiments.pipeline import score_and_save

    model, readouts, _ = setup("causal", tiny_config, synthetic_data)
    batches = WindowBatches(synthetic_data.val, synthetic_data.objective("causal"), 4,
                            0).score_batches()
    cfg = RunConfig(model=model.cfg, min_count=1,
                    train=TrainConfig(precision="bf16", device="cpu"))
    data = SimpleNamespace(tokenizer=SimpleNamespace(id_to_token=str,
                                                     get_vocab_size=lambda: 60),
                           val_article=np.arange(len(synthetic_data.val)) // 3)
    score_and_save(tmp_path, cfg, data, model, readouts, batches)
    saved = TokenScores.load(tmp_path / "scores.npz")
    exact = score(model, readouts, batches)  # fp32, no autocast
    np.testing.assert_array_equal(saved.ll, exact.ll)
    np.testing.assert_array_equal(saved.article, saved.window // 3)
