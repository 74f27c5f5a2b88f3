"""The training loop and its checkpoints: learning, determinism, resume, failures."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from twotower.training import checkpoint as ckpt
from twotower.config import FAMILIES
from twotower.errors import TwotowerError
from twotower.models.tower_lm import IGNORE, TwoTowerLM
from twotower.training.runtime import seed_everything
from twotower.training.optim import make_optimizer, param_groups
from twotower.training.trainer import WindowBatches, evaluate, train


class Record:
    """Callback that keeps every state it is given."""

    def __init__(self):
        self.steps, self.evals, self.end = [], [], None

    def on_step_end(self, state):
        self.steps.append(dict(state))

    def on_eval(self, state):
        self.evals.append(dict(state))

    def on_train_end(self, state):
        self.end = dict(state)

    @property
    def losses(self):
        return [s["loss"] for s in self.steps]


class Interrupt(Exception):
    pass


class InterruptAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state["step"] == self.step:
            raise Interrupt(f"stopped at {self.step}")


def make_model(cfg, seed):
    seed_everything(seed)
    return TwoTowerLM(cfg)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- learning -------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_model_overfits_one_repeated_batch(family, tiny_config, train_config,
                                                  synthetic_windows, make_objective):
    cfg = tiny_config(family, n_layers=1, d_model=32, d_ff=64 if family != "bilm"
                      else 32)
    model = make_model(cfg, 0)
    windows = synthetic_windows(4, 12, 60, pad=False)
    objective = make_objective(family, mlm_probability=0.3)
    batch = objective.make_batch(windows, torch.Generator().manual_seed(0))
    assert batch.n_targets >= 10
    record = Record()
    train(model, lambda b: model.loss(batch),
          WindowBatches(windows, objective, 4, 0),
          train_config(steps=120, lr=1e-2, warmup_steps=10), callbacks=[record],
          progress=False)
    assert record.losses[0] > 3.5  # about log(64) at the start
    assert record.losses[-1] < 0.5


def test_training_lowers_the_validation_loss(tiny_config, train_config, synthetic_data):
    """Not memorisation only: a repeating pattern in the data is learned."""
    cfg = tiny_config("causal")
    model = make_model(cfg, 0)
    objective = synthetic_data.objective("causal")
    windows = torch.arange(12).repeat(40, 1).numpy() % 7 + 5  # 5 6 7 .. 11 5 6 ..
    windows[:, 0] = 2
    batches = WindowBatches(windows[:32], objective, 8, 0)
    val = WindowBatches(windows[32:], objective, 8, 0)
    before = evaluate(model.loss, model, val.eval_batches(), torch.device("cpu"),
                      None)["val_loss"]
    summary = train(model, model.loss, batches, train_config(steps=40, lr=1e-2),
                    val=val, progress=False)
    assert summary["val_loss"] < 0.5 * before
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]))


# --- determinism ----------------------------------------------------------------------

def run_training(cfg, tcfg, data, init_seed, run_dir=None, callbacks=()):
    """Build a model from ``init_seed`` and train it (batches and masks: tcfg.seed)."""
    model = make_model(cfg, init_seed)
    objective = data.objective(cfg.family)
    record = Record()
    train(model, model.loss, WindowBatches(data.train, objective, 4, tcfg.seed),
          tcfg,
          run_dir=run_dir, callbacks=[record, *callbacks], progress=False)
    return model, record.losses


def test_the_same_seed_gives_bit_identical_weights_and_losses(tiny_config, train_config,
                                                              synthetic_data,
                                                              weights_equal):
    cfg = tiny_config("mlm", dropout=0.1)  # masks, dropout and init all seeded
    tcfg = train_config(steps=6, seed=3)
    a, losses_a = run_training(cfg, tcfg, synthetic_data, 3)
    b, losses_b = run_training(cfg, tcfg, synthetic_data, 3)
    assert losses_a == losses_b
    assert weights_equal(a, b)
    c, losses_c = run_training(cfg, train_config(steps=6, seed=4), synthetic_data, 4)
    assert losses_c != losses_a
    assert not weights_equal(a, c)


@pytest.mark.parametrize("family", ["causal", "mlm", "bilm"])
def test_resuming_after_an_interruption_gives_the_same_weights_as_one_go(
        family, tiny_config, train_config, synthetic_data, tmp_path, weights_equal):
    cfg = tiny_config(family, n_layers=1, dropout=0.2)  # dropout: RNG restore matters
    tcfg = train_config(steps=8, checkpoint_every=3, keep_checkpoints=5)
    whole, losses = run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "whole")

    with pytest.raises(Interrupt):  # dies in step 5, after the checkpoint of step 3
        run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "cut", [InterruptAt(5)])
    assert ckpt.latest_checkpoint(tmp_path / "cut" / "joint").name == "step-0000003"
    torch.rand(100)  # the global RNG moves on in between, as in a new process
    resumed, later_losses = run_training(cfg, tcfg, synthetic_data, 99,
                                         tmp_path / "cut")
    assert later_losses == losses[3:]
    assert weights_equal(whole, resumed)
    logged = {}
    for name in ("whole", "cut"):
        text = (tmp_path / name / "metrics.jsonl").read_text()
        logged[name] = [(r["step"], r["loss"]) for r in map(json.loads, text.splitlines())
                        if "loss" in r]
    assert [step for step, _ in logged["cut"]] == list(range(1, 9))
    assert logged["cut"] == logged["whole"]  # the same lines, not only the same steps


def test_a_checkpoint_with_one_rng_state_from_before_rng_ranks_still_resumes_exactly(
        tiny_config, train_config, synthetic_data, tmp_path, weights_equal):
    cfg = tiny_config("causal", n_layers=1, dropout=0.2)
    tcfg = train_config(steps=6, checkpoint_every=3, keep_checkpoints=5)
    whole, _ = run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "whole")
    with pytest.raises(Interrupt):
        run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "cut", [InterruptAt(4)])
    _tamper_state(tmp_path / "cut" / "joint" / "step-0000003",
                  lambda s: s.update(rng=s.pop("rng_ranks")[0]))  # the older layout
    resumed, _ = run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "cut")
    assert weights_equal(whole, resumed)


def test_a_log_line_after_a_resume_averages_the_same_steps_as_without_one(
        tiny_config, train_config, synthetic_data, tmp_path):
    """log_every 4, checkpoint_every 3: the line of step 4 averages steps 1-4 even when
    the run restarted from the checkpoint of step 3."""
    cfg = tiny_config("causal", n_layers=1)
    tcfg = train_config(steps=8, checkpoint_every=3, log_every=4)
    run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "whole")
    with pytest.raises(Interrupt):
        run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "cut", [InterruptAt(4)])
    run_training(cfg, tcfg, synthetic_data, 0, tmp_path / "cut")
    lines = {name: [(r["step"], r["loss"]) for r in map(json.loads, (
        tmp_path / name / "metrics.jsonl").read_text().splitlines())]
        for name in ("whole", "cut")}
    assert [step for step, _ in lines["whole"]] == [4, 8]
    assert lines["cut"] == lines["whole"]


def test_a_finished_phase_is_not_trained_again(tiny_config, train_config,
                                               synthetic_data, tmp_path, weights_equal):
    cfg = tiny_config("causal")
    tcfg = train_config(steps=4)
    first, _ = run_training(cfg, tcfg, synthetic_data, 0, tmp_path)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    again, losses = run_training(cfg, tcfg, synthetic_data, 5, tmp_path)
    assert losses == []
    assert weights_equal(first, again)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


# --- failures -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(
        bad, tiny_config, train_config, synthetic_data, tmp_path):
    model = make_model(tiny_config("causal"), 0)
    objective = synthetic_data.objective("causal")
    calls = []

    def loss_fn(batch):
        calls.append(1)
        loss = model.loss(batch)
        return loss * bad if len(calls) == 6 else loss  # step 5 (0-based)

    on_disk = {}

    class SnapshotBeforeStep5:
        def on_step_end(self, state):
            if state["step"] == 5:  # the checkpoint of step 4 is written by now
                on_disk.update(snapshot(tmp_path / "joint"))

    with pytest.raises(TwotowerError) as err:
        train(model, loss_fn, WindowBatches(synthetic_data.train, objective, 4, 0),
              train_config(steps=10, checkpoint_every=2), run_dir=tmp_path,
              callbacks=[SnapshotBeforeStep5()], progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert "step 5" in message and "step-0000004" in message
    assert on_disk and snapshot(tmp_path / "joint") == on_disk


@pytest.mark.parametrize("detect_anomaly", [False, True])
def test_a_non_finite_gradient_under_a_finite_loss_stops_before_the_weights_change(
        detect_anomaly, tiny_config, train_config, synthetic_data, tmp_path):
    """sqrt at 0 has an infinite slope: the loss stays finite, the gradient is NaN.
    Without the check AdamW would write NaN into every weight and moment."""
    model = make_model(tiny_config("causal"), 0)
    objective = synthetic_data.objective("causal")
    calls, weights = [], {}

    def loss_fn(batch):
        calls.append(1)
        loss = model.loss(batch)
        if len(calls) == 4:  # step 3 (0-based)
            weights.update({k: v.clone() for k, v in model.state_dict().items()})
            w = model.embed.weight if hasattr(model, "embed") else next(
                model.parameters())
            loss = loss + 0.0 * torch.sqrt(w.sum() - w.sum().detach())
        return loss

    # Anomaly mode also warns with the forward trace of the operation (for the reader).
    trace = pytest.warns(UserWarning, match="SqrtBackward0") if detect_anomaly else \
        contextlib.nullcontext()
    with pytest.raises(TwotowerError) as err, trace:
        train(model, loss_fn, WindowBatches(synthetic_data.train, objective, 4, 0),
              train_config(steps=10, checkpoint_every=2, detect_anomaly=detect_anomaly),
              run_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "\n" not in message
    if detect_anomaly:  # names the operation whose backward made the NaN
        assert "anomaly detection" in message and "SqrtBackward0" in message
    else:
        assert "gradient norm became nan" in message
    assert "step 3" in message and "step-0000002" in message
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_without_any_target_is_skipped_not_fatal(family, tiny_config,
                                                         train_config, synthetic_data,
                                                         tmp_path):
    """A window of [CLS] and padding has no target in any family (and a masked LM's
    short window often has none drawn): such a step leaves the weights alone instead
    of stopping the run with a NaN loss; the log averages the real steps only."""
    windows = synthetic_data.train[:8].copy()
    windows[2:, 1:] = synthetic_data.special.pad  # rows 2-7: [CLS] then padding
    model = make_model(tiny_config(family, n_layers=1), 0)
    objective = synthetic_data.objective(family)
    batches = WindowBatches(windows, objective, 2, 0)
    empty = [s for s in range(6) if batches.train_batch(s).n_targets == 0]
    assert empty and len(empty) < 6  # some steps have targets, some have none
    record = Record()
    summary = train(model, model.loss, batches,
                    train_config(steps=6, log_every=6, checkpoint_every=0),
                    run_dir=tmp_path, callbacks=[record], progress=False)
    for s in empty:
        assert math.isnan(record.steps[s]["loss"])
    real = [r["loss"] for i, r in enumerate(record.steps) if i not in empty]
    assert all(math.isfinite(v) for v in real)
    assert summary["train_loss"] == pytest.approx(sum(real) / len(real))
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_an_empty_loss_is_zero_with_zero_gradients_still_connected():
    from twotower.models.tower_lm import mean_cross_entropy

    weight = torch.randn(3, 5, requires_grad=True)
    logits = torch.randn(0, 3) @ weight
    loss = mean_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    loss.backward()  # connected: DDP's gradient exchange would happen
    assert loss.item() == 0.0 and torch.equal(weight.grad, torch.zeros(3, 5))
    assert torch.isnan(F.cross_entropy(logits, torch.zeros(0, dtype=torch.long)))


def test_a_model_with_nothing_to_train_is_refused(tiny_config, train_config):
    model = TwoTowerLM(tiny_config("causal")).requires_grad_(False)
    with pytest.raises(TwotowerError, match="frozen"):
        make_optimizer(model, train_config(), torch.device("cpu"))


# --- optimiser ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_weight_decay_is_on_weight_matrices_only(family, tiny_config):
    model = TwoTowerLM(tiny_config(family))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    norm_params = {id(p) for m in model.modules() if "LayerNorm" in type(m).__name__
                   for p in m.parameters()}
    for p in no_decay["params"]:
        assert "bias" in names[id(p)] or id(p) in norm_params, names[id(p)]
    for p in decay["params"]:
        assert "bias" not in names[id(p)] and id(p) not in norm_params, names[id(p)]
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert names[id(model.tok_emb.weight)] in {names[id(p)] for p in decay["params"]}


def test_learning_rate_warms_up_linearly_then_decays_to_zero(tiny_config, train_config,
                                                             synthetic_data):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    record = Record()
    tcfg = train_config(steps=10, warmup_steps=4, lr=1e-2)
    train(model, model.loss,
          WindowBatches(synthetic_data.train, synthetic_data.objective("causal"), 4, 0),
          tcfg, callbacks=[record], progress=False)
    # state["lr"] is the rate of the NEXT step; the first step ran at lr / warmup
    lrs = [tcfg.lr / 4] + [s["lr"] for s in record.steps]  # rate of steps 0..10
    assert lrs[0] == pytest.approx(tcfg.lr / 4)
    assert max(lrs) == pytest.approx(tcfg.lr) and lrs[4] == pytest.approx(tcfg.lr)
    up, down = torch.tensor(lrs[:5]).diff(), torch.tensor(lrs[4:]).diff()
    assert (up > 0).all() and torch.allclose(up, up[0].expand_as(up))  # linear up
    assert (down < 0).all() and torch.allclose(down, down[0].expand_as(down))  # down
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # reaches 0 after the last step


def test_evaluate_is_the_token_weighted_mean_over_batches(tiny_config, synthetic_data):
    model = TwoTowerLM(tiny_config("causal")).eval()
    objective = synthetic_data.objective("causal")
    batches = WindowBatches(synthetic_data.val, objective, 3, 0).eval_batches()
    assert len({b.n_targets for b in batches}) > 1  # unequal batches, so weights matter
    result = evaluate(model.loss, model, batches, torch.device("cpu"), None)
    ids = torch.cat([b.input_ids for b in batches])
    targets = torch.cat([b.targets for b in batches])
    with torch.no_grad():
        expected = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(),
                                   ignore_index=IGNORE)
    assert result["val_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert result["val_tokens"] == int((targets != IGNORE).sum())


def test_batches_depend_only_on_seed_and_step(synthetic_data):
    objective = synthetic_data.objective("mlm")
    a = WindowBatches(synthetic_data.train, objective, 4, 0)
    b = WindowBatches(synthetic_data.train, objective, 4, 0)
    for step in (0, 7, 3):
        x, y = a.train_batch(step), b.train_batch(step)
        assert torch.equal(x.input_ids, y.input_ids)
        assert torch.equal(x.targets, y.targets)
    assert not torch.equal(a.train_batch(0).targets, a.train_batch(1).targets)
    assert not torch.equal(a.train_batch(0).input_ids,
                           WindowBatches(synthetic_data.train, objective, 4, 1)
                           .train_batch(0).input_ids)
    first, second = a.eval_batches(), a.eval_batches()
    assert all(torch.equal(p.input_ids, q.input_ids) for p, q in zip(first, second))
    assert sum(len(p.input_ids) for p in first) == len(synthetic_data.train)


# --- checkpoints ----------------------------------------------------------------------

def save_one(directory, model, step=5, keep=2):
    state = {"optimizer": {"lr": 0.1, "moments": [torch.randn(3)]}, "rng": {
        "torch": torch.get_rng_state()}}
    return ckpt.save_checkpoint(directory, step, model, state, {"phase": "joint"},
                                keep=keep), state


def test_checkpoint_round_trip_restores_identical_weights_and_state(tiny_config,
                                                                    tmp_path,
                                                                    weights_equal):
    cfg = tiny_config("mlm")
    model = make_model(cfg, 0)
    path, state = save_one(tmp_path, model)
    assert path == tmp_path / "step-0000005"
    assert ckpt.latest_checkpoint(tmp_path) == path
    other = make_model(cfg, 1)
    assert not weights_equal(model, other)
    ckpt.load_weights(path, other)
    assert weights_equal(model, other)
    loaded = ckpt.load_state(path)
    assert loaded["optimizer"]["lr"] == 0.1
    assert torch.equal(loaded["optimizer"]["moments"][0],
                       state["optimizer"]["moments"][0])
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert ckpt.load_meta(path) == {"phase": "joint", "step": 5}


def test_only_the_newest_checkpoints_are_kept(tiny_config, tmp_path):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    for step in (1, 2, 3, 4):
        save_one(tmp_path, model, step, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000003",
                                                               "step-0000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000004"
    assert not list(tmp_path.glob(".tmp-*"))


class Payload:
    """Would run code when unpickled if unpickling were allowed."""

    loaded = False

    def __reduce__(self):
        return (_mark_loaded, ())


def _mark_loaded():
    Payload.loaded = True
    return "pwned"


def test_a_pickle_payload_in_state_pt_is_refused(tiny_config, tmp_path):
    path, _ = save_one(tmp_path, TwoTowerLM(tiny_config("causal", n_layers=1)))
    torch.save({"optimizer": {}, "extra": Payload()}, path / ckpt.STATE)
    with pytest.raises(TwotowerError) as err:
        ckpt.load_state(path)
    assert "refusing" in str(err.value) and "\n" not in str(err.value)
    assert not Payload.loaded
    with open(path / ckpt.STATE, "rb") as f:  # it really is a payload
        torch.load(f, weights_only=False)
    assert Payload.loaded
    Payload.loaded = False


def test_a_truncated_state_pt_is_refused(tiny_config, tmp_path):
    path, _ = save_one(tmp_path, TwoTowerLM(tiny_config("causal", n_layers=1)))
    data = (path / ckpt.STATE).read_bytes()
    (path / ckpt.STATE).write_bytes(data[:len(data) // 2])
    with pytest.raises(TwotowerError, match="truncated or damaged"):
        ckpt.load_state(path)


@pytest.mark.parametrize("change", [{"d_model": 32}, {"vocab_size": 128},
                                    {"n_layers": 1}, {"n_layers": 3}],
                         ids=["wider", "bigger-vocab", "fewer-layers", "more-layers"])
def test_weights_saved_with_another_config_are_refused(change, tiny_config, tmp_path):
    model = TwoTowerLM(tiny_config("mlm"))
    path, _ = save_one(tmp_path, model)
    other = TwoTowerLM(tiny_config("mlm", **change))
    with pytest.raises(TwotowerError) as err:
        ckpt.load_weights(path, other)
    assert "another config" in str(err.value) and "\n" not in str(err.value)


def test_a_refused_load_leaves_the_model_untouched(tiny_config, tmp_path):
    path, _ = save_one(tmp_path, TwoTowerLM(tiny_config("mlm")))
    other = TwoTowerLM(tiny_config("mlm", vocab_size=128))  # only the embedding differs
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(TwotowerError):
        ckpt.load_weights(path, other)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_weights_file_is_refused(damage, tiny_config, tmp_path):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    path, _ = save_one(tmp_path, model)
    file = path / ckpt.WEIGHTS
    data = file.read_bytes()
    file.write_bytes({"truncate": data[:len(data) // 2],
                      "garbage": b"\x00\xff" * 500, "empty": b""}[damage])
    with pytest.raises(TwotowerError) as err:
        ckpt.load_weights(path, model)
    assert "\n" not in str(err.value)


def test_missing_weights_are_refused(tiny_config, tmp_path):
    with pytest.raises(TwotowerError, match="no weights"):
        ckpt.load_weights(tmp_path, TwoTowerLM(tiny_config("causal", n_layers=1)))


@pytest.mark.parametrize("pointer", ["step-0000009", "", "step-0000004", "../x",
                                     "step-000\x000003"])
def test_a_damaged_latest_pointer_falls_back_to_the_newest_complete_checkpoint(
        pointer, tiny_config, tmp_path):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    for step in (2, 3):
        save_one(tmp_path, model, step, keep=5)
    incomplete = tmp_path / "step-0000004"  # a directory without meta.json
    incomplete.mkdir()
    (incomplete / ckpt.WEIGHTS).write_bytes(b"")
    (tmp_path / ckpt.LATEST).write_text(pointer)
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-0000003"


def test_a_latest_pointer_that_is_not_utf8_falls_back(tiny_config, tmp_path):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    save_one(tmp_path, model, 3)
    (tmp_path / ckpt.LATEST).write_bytes(b"\xff\xfestep-0000003")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step-0000003"


def test_no_checkpoint_at_all_gives_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None


def test_resaving_a_step_replaces_it(tiny_config, tmp_path, weights_equal):
    cfg = tiny_config("causal", n_layers=1)
    save_one(tmp_path, make_model(cfg, 0), 3)
    newer = make_model(cfg, 1)
    save_one(tmp_path, newer, 3)
    loaded = make_model(cfg, 2)
    ckpt.load_weights(tmp_path / "step-0000003", loaded)
    assert weights_equal(newer, loaded)



# --- failures while saving and resuming -----------------------------------------------

def test_a_full_disk_during_a_save_leaves_the_last_good_checkpoint(tiny_config,
                                                                    tmp_path,
                                                                    monkeypatch):
    model = TwoTowerLM(tiny_config("causal", n_layers=1))
    save_one(tmp_path, model, 3)
    before = snapshot(tmp_path)

    def full_disk(obj, f, *args, **kwargs):  # half the file, then the disk is full
        f.write(b"\x00" * 100)  # torch.save is given the open file (its errno survives)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(TwotowerError) as err:
        save_one(tmp_path, model, 4)
    message = str(err.value)
    assert "\n" not in message
    assert "No space left on device" in message and "step-0000003" in message
    assert snapshot(tmp_path) == before  # nothing half-written left, nothing lost
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("dies_at", [1, 2], ids=["setting-the-old-copy-aside",
                                                 "moving-the-new-copy-in"])
def test_a_crash_while_saving_a_step_again_never_loses_that_step(
        dies_at, tiny_config, tmp_path, monkeypatch, weights_equal):
    """Saving a step that is already on disk (a resumed run redoing it) must keep a
    complete copy of the step at every moment."""
    cfg = tiny_config("causal", n_layers=1)
    first, second = make_model(cfg, 0), make_model(cfg, 1)
    save_one(tmp_path, first, 3)
    calls, real_replace = [], ckpt.os.replace

    def dying_replace(src, dst):
        calls.append(src)
        if len(calls) == dies_at:
            raise SystemExit("killed")  # not an OSError: nothing may clean up
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", dying_replace)
    with pytest.raises(SystemExit):
        save_one(tmp_path, second, 3)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    found = ckpt.latest_checkpoint(tmp_path)
    assert found is not None
    loaded = make_model(cfg, 2)
    ckpt.load_weights(found, loaded)
    assert weights_equal(loaded, first)  # the old copy, complete
    save_one(tmp_path, second, 4)  # the next save tidies up
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000004"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def _tamper_state(path: Path, change) -> None:
    state = torch.load(path / ckpt.STATE, weights_only=True)
    change(state)
    torch.save(state, path / ckpt.STATE)


@pytest.mark.parametrize("change, named", [
    (lambda s: s["optimizer"]["param_groups"].pop(), "parameter group"),
    (lambda s: s.pop("scheduler"), "scheduler"),
    (lambda s: s["rng_ranks"][0].update(torch=torch.zeros(3)), "RNG"),
], ids=["optimizer-of-another-model", "no-scheduler", "bad-rng-state"])
def test_resuming_from_a_state_of_another_training_is_refused_untouched(
        change, named, tiny_config, train_config, synthetic_data, tmp_path):
    cfg = tiny_config("causal", n_layers=1)
    tcfg = train_config(steps=6, checkpoint_every=3, keep_checkpoints=5)
    with pytest.raises(Interrupt):
        run_training(cfg, tcfg, synthetic_data, 0, tmp_path, [InterruptAt(4)])
    _tamper_state(tmp_path / "joint" / "step-0000003", change)
    before = snapshot(tmp_path)
    with pytest.raises(TwotowerError) as err:
        run_training(cfg, tcfg, synthetic_data, 0, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "cannot resume" in message
    assert "step-0000003" in message
    assert snapshot(tmp_path) == before


def test_a_checkpoint_past_the_end_of_the_phase_is_refused(tiny_config, train_config,
                                                           synthetic_data, tmp_path):
    cfg = tiny_config("causal", n_layers=1)
    run_training(cfg, train_config(steps=6, checkpoint_every=3), synthetic_data, 0,
                 tmp_path)
    with pytest.raises(TwotowerError, match="step 6 of a 4-step phase"):
        run_training(cfg, train_config(steps=4, checkpoint_every=3), synthetic_data, 0,
                     tmp_path)


@pytest.mark.parametrize("damage", [b'{"phase": "joint", "st', b"", b"\xff\xfe{}"],
                         ids=["truncated", "empty", "not-utf8"])
def test_a_damaged_meta_json_is_refused_in_one_line(damage, tiny_config, tmp_path):
    path, _ = save_one(tmp_path, TwoTowerLM(tiny_config("causal", n_layers=1)))
    (path / ckpt.META).write_bytes(damage)
    with pytest.raises(TwotowerError) as err:
        ckpt.load_meta(path)
    assert "\n" not in str(err.value) and "earlier checkpoint" in str(err.value)
