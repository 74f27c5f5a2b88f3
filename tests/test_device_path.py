"""What makes training fast on a GPU, tested on the CPU: no host wait per step, the
cross-entropy without a full fp32 copy of the logits, target positions found before a
batch moves, and the GPU check's report (``python -m twotower gpucheck``)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from twotower.errors import TwotowerError
from twotower.models import tower_lm as model_module
from twotower.models.tower_lm import (IGNORE, TwoTowerLM, mean_cross_entropy,
                                      select_targets)
from twotower.training import optim
from twotower.training.faults import StepGuard
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches, train


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_chunked_cross_entropy_is_autocasts_fp32_loss_and_gradient(dtype,
                                                                      monkeypatch):
    """Several chunks (a tiny chunk size): the loss equals F.cross_entropy on the fp32
    copy to fp32 rounding, and the gradient equals its gradient rounded to ``dtype``."""
    monkeypatch.setattr(model_module, "CE_CHUNK_BYTES", 4 * 50 * 7)  # 7 rows a chunk
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 50, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, 50, (40,), generator=g)
    loss = mean_cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss * 3.0, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.float(), targets)
    (ref_grad,) = torch.autograd.grad(ref * 3.0, ref_logits)
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)


def test_the_chunked_cross_entropy_keeps_no_fp32_copy_of_the_logits():
    """What the backward pass keeps: the half-precision logits and one fp32 number
    per row, never an (N, V) fp32 tensor."""
    logits = torch.randn(64, 1000).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 1000, (64,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append((t.dtype, tuple(t.shape))) or t, lambda t: t):
        mean_cross_entropy(logits, targets)
        F.cross_entropy(logits.float(), targets)  # the old way, for contrast
    ours, old = saved[:3], saved[3:]
    assert (torch.float32, (64, 1000)) not in ours
    assert (torch.float32, (64, 1000)) in old


@pytest.mark.parametrize("family", ["causal", "mlm", "bilm"])
def test_target_positions_found_before_moving_select_what_the_mask_selects(
        family, synthetic_data, tiny_config):
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective(family), 8, 0)
    cpu = batches.train_batch(3)
    moved = cpu.to(torch.device("cpu"))
    keep = cpu.targets != IGNORE
    assert moved.positions is not None and moved.n_targets == int(keep.sum())
    hidden = torch.randn(*cpu.targets.shape, 5)
    rows, target = select_targets(hidden, moved.targets, moved.positions)
    assert torch.equal(rows, hidden[keep]) and torch.equal(target, cpu.targets[keep])
    seed_everything(0)
    model = TwoTowerLM(tiny_config(family, vocab_size=synthetic_data.vocab_size))
    assert torch.equal(model.loss(moved),
                       model.cross_entropy(cpu.input_ids, cpu.targets))
    assert cpu.rows(slice(0, 2)).positions is None  # rows are found again on the move


def test_an_all_false_padding_mask_changes_nothing(tiny_config, synthetic_data):
    """On a GPU the mask is always passed (asking whether any padding is there would
    make the host wait); without padding it gives what no mask gives."""
    seed_everything(0)
    model = TwoTowerLM(tiny_config("mlm", vocab_size=synthetic_data.vocab_size)).eval()
    x = torch.randn(2, 3, 12, model.cfg.d_model)
    torch.testing.assert_close(model.towers(x, torch.zeros(3, 12, dtype=torch.bool)),
                               model.towers(x, None))


def _deferred(monkeypatch):
    """Train as on a GPU: fused AdamW (it runs on the CPU too), checks on the device."""
    monkeypatch.setattr(optim, "fused_optimizer", lambda device: True)


@pytest.mark.parametrize("fault", ["loss", "gradient norm"])
def test_on_the_gpu_path_a_fault_is_reported_later_but_the_weights_stop_at_once(
        fault, monkeypatch, tiny_config, train_config, synthetic_data):
    """The fault at step 3 is raised at the next log line (step 8) naming step 3, and
    the weights are still those of before step 3: fused AdamW skipped every step from
    then on (the flag latches)."""
    _deferred(monkeypatch)
    seed_everything(0)
    model = TwoTowerLM(tiny_config("causal", vocab_size=synthetic_data.vocab_size))
    calls, before = [], {}

    def loss_fn(batch):
        calls.append(1)
        loss = model.loss(batch)
        if len(calls) == 4:  # step 3
            before.update({k: v.clone() for k, v in model.state_dict().items()})
            if fault == "loss":
                return loss * float("nan")
            w = next(model.parameters())
            return loss + 0.0 * torch.sqrt(w.sum() - w.sum().detach())
        return loss

    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"),
                            4, 0)
    with pytest.raises(TwotowerError) as err:
        train(model, loss_fn, batches, train_config(steps=10, log_every=8),
              progress=False)
    assert len(calls) == 8  # it ran on to the log line
    assert f"{fault} became nan at step 3" in str(err.value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _host_reads(monkeypatch) -> list:
    """Count every read of a tensor's value by the host (what makes it wait for a GPU)."""
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            reads.append(_name)
            return _original(self, *args)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_on_the_gpu_path_a_step_reads_nothing_back(monkeypatch, tiny_config,
                                                   train_config, synthetic_data):
    """Host reads of 4 steps and of 12 steps (one log line each) are the same: none of
    them happens per step. (The causal family: on the CPU the other families still ask
    whether a window holds padding, which on a GPU they do not; see the test above.)"""
    _deferred(monkeypatch)
    counts = []
    for steps in (4, 12):
        seed_everything(0)
        model = TwoTowerLM(tiny_config("causal", vocab_size=synthetic_data.vocab_size))
        batches = WindowBatches(synthetic_data.train,
                                synthetic_data.objective("causal"), 4, 0)
        with monkeypatch.context() as m:
            reads = _host_reads(m)
            train(model, model.loss, batches,
                  train_config(steps=steps, log_every=steps), progress=False)
        counts.append(len(reads))
    assert counts[0] == counts[1]


def test_deferred_checks_train_like_immediate_ones(monkeypatch, tiny_config,
                                                   train_config, synthetic_data):
    """The same fused optimiser, checks deferred or not: bit-identical weights."""
    results = []
    for deferred in (False, True):
        monkeypatch.setattr(optim, "fused_optimizer", lambda device: True)
        if not deferred:
            monkeypatch.setattr(StepGuard, "deferred", False, raising=False)
            original = StepGuard.__init__

            def init(self, *args, _original=original):
                _original(self, *args)
                self.deferred = False
            monkeypatch.setattr(StepGuard, "__init__", init)
        seed_everything(0)
        model = TwoTowerLM(tiny_config("causal", vocab_size=synthetic_data.vocab_size))
        batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"),
                                4, 0)
        summary = train(model, model.loss, batches,
                        train_config(steps=6, log_every=3), progress=False)
        results.append((summary["train_loss"], model.state_dict()))
        monkeypatch.undo()
    assert results[0][0] == results[1][0]
    for k, v in results[0][1].items():
        assert torch.equal(v, results[1][1][k]), k


@pytest.mark.slow
def test_the_gpu_check_writes_its_report_on_a_cpu_too(tmp_path):
    """Every part runs (tiny sizes): the CUDA tests are reported as skipped, the bench
    rows carry speed, MFU and memory, the pipeline its perplexities."""
    from twotower.cli import main

    assert main(["gpucheck", "--out", str(tmp_path), "--quick", "--device", "cpu",
                 "--steps", "2", "--pipeline-steps", "12"]) == 0
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    assert report["environment"]["device"] == "cpu"
    assert report["environment"]["measured_fp32_flops"] > 0
    tests = report["tests"]
    assert tests["passed"] == 0 and tests["failure"] == tests["error"] == 0
    assert tests["skipped"] == len(tests["cases"]) >= 10
    bench = report["bench"]
    assert [row["plain_ce"] for row in bench] == [False, True]
    for row in bench:
        assert row["tokens_per_s"] > 0 and row["peak_memory_mib"] > 0
        assert 0 < row["mfu_measured_peak"]
    pipeline = report["pipeline"]
    assert pipeline["steps"] == 12 and pipeline["scores"]["joint_ppl"] > 1
    assert report["seconds"] > 0


def test_weights_that_are_views_of_one_buffer_are_saved_and_loaded(tmp_path):
    """cuDNN keeps an LSTM's weights as views of one flat buffer on a GPU; such a
    module is saved and loaded back like any other (safetensors' save_model refused)."""
    from torch import nn

    from twotower.training import checkpoint as ckpt

    class Flat(nn.Module):
        def __init__(self, values):
            super().__init__()
            self.a = nn.Parameter(values[:4])  # views of one storage
            self.b = nn.Parameter(values[4:])

    saved = Flat(torch.arange(10.0))
    path = ckpt.save_checkpoint(tmp_path, 1, saved, {}, {})
    loaded = Flat(torch.zeros(10))
    ckpt.load_weights(path, loaded)
    assert torch.equal(loaded.a, saved.a) and torch.equal(loaded.b, saved.b)
