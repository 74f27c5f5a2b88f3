"""CUDA tests (marker ``gpu``): skipped without a GPU; run by ``python -m twotower
gpucheck``, which puts their outcome into its report.

Mixed precision against fp32, the fused optimiser, ``torch.compile``, resume on the GPU,
and a checkpoint written on the GPU read back on the CPU.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from twotower.training import checkpoint as ckpt
from twotower.config import FAMILIES
from twotower.models.tower_lm import TwoTowerLM
from twotower.training.runtime import autocast, seed_everything
from twotower.training.optim import make_optimizer
from twotower.training.trainer import WindowBatches, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

CUDA = torch.device("cuda")


def _model(cfg, seed=0):
    seed_everything(seed)
    return TwoTowerLM(cfg).to(CUDA)


def _batch(synthetic_data, family, n=8):
    objective = synthetic_data.objective(family)
    return WindowBatches(synthetic_data.train, objective, n, 0).train_batch(0).to(CUDA)


def _loss_and_grads(model, batch, dtype, scaler=None):
    model.zero_grad(set_to_none=True)
    with autocast(CUDA, dtype):
        loss = model.loss(batch)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters()
                       if p.grad is not None])
    return float(loss.detach()), grads


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_mixed_precision_agrees_with_fp32(family, dtype, tiny_config, synthetic_data):
    """Forward and backward in bf16, and in fp16 through the grad scaler, give the fp32
    loss within 2% and a gradient pointing the same way (cosine > 0.99)."""
    cfg = tiny_config(family, d_model=64, d_ff=128 if family != "bilm" else 64,
                      vocab_size=synthetic_data.vocab_size)
    model = _model(cfg)
    batch = _batch(synthetic_data, family)
    ref_loss, ref_grad = _loss_and_grads(model, batch, None)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loss, grad = _loss_and_grads(model, batch, dtype, scaler)
    assert math.isfinite(loss)
    assert loss == pytest.approx(ref_loss, rel=0.02)
    cosine = float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))
    assert cosine > 0.99


def test_the_optimizer_is_fused_on_cuda_and_training_learns(tiny_config, train_config,
                                                            synthetic_data):
    cfg = tiny_config("causal", vocab_size=synthetic_data.vocab_size)
    model = _model(cfg)
    tcfg = train_config(steps=30, device="cuda", precision="auto", log_every=30)
    opt, _ = make_optimizer(model, tcfg, CUDA)
    assert opt.defaults["fused"]
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("causal"),
                            8, 0)
    first = float(model.loss(batches.train_batch(0).to(CUDA)))
    summary = train(model, model.loss, batches, tcfg, progress=False)
    assert summary["train_loss"] < first


def test_compile_gives_the_eager_loss(tiny_config, synthetic_data):
    cfg = tiny_config("causal", vocab_size=synthetic_data.vocab_size)
    model = _model(cfg)
    batch = _batch(synthetic_data, "causal")
    with autocast(CUDA, torch.bfloat16):
        eager = float(model.loss(batch))
        compiled = float(torch.compile(model.loss)(batch))
    assert compiled == pytest.approx(eager, rel=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_on_the_gpu_is_bit_identical_to_an_uninterrupted_run(
        family, tiny_config, train_config, synthetic_data, tmp_path, monkeypatch):
    """6 steps straight against 3 steps, a restart from the checkpoint, 3 more: the same
    weights bit for bit (deterministic kernels asked for)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        cfg = tiny_config(family, vocab_size=synthetic_data.vocab_size)
        batches = WindowBatches(synthetic_data.train, synthetic_data.objective(family),
                                8, 0)
        tcfg = train_config(steps=6, device="cuda", precision="auto",
                            checkpoint_every=3, log_every=3)
        straight = _model(cfg)
        train(straight, straight.loss, batches, tcfg, run_dir=tmp_path / "a",
              progress=False)
        kept = sorted((tmp_path / "a" / "joint").glob("step-*"))
        assert [p.name for p in kept] == ["step-0000003", "step-0000006"]
        shutil.copytree(kept[0], tmp_path / "b" / "joint" / kept[0].name)
        resumed = _model(cfg, seed=1)  # other initial weights: all must come from disk
        summary = train(resumed, resumed.loss, batches, tcfg,
                        run_dir=tmp_path / "b", progress=False)
        assert summary["resumed_from"] == 3
        for (name, a), b in zip(straight.state_dict().items(),
                                resumed.state_dict().values()):
            assert torch.equal(a, b), name
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_checkpoint_written_on_the_gpu_loads_on_the_cpu(tiny_config, train_config,
                                                          synthetic_data, tmp_path):
    cfg = tiny_config("mlm", vocab_size=synthetic_data.vocab_size)
    model = _model(cfg)
    batches = WindowBatches(synthetic_data.train, synthetic_data.objective("mlm"), 8, 0)
    train(model, model.loss, batches, train_config(
        steps=4, device="cuda", precision="auto", checkpoint_every=4), run_dir=tmp_path,
        progress=False)
    on_cpu = TwoTowerLM(cfg)
    ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "joint"), on_cpu)
    for (name, a), b in zip(model.state_dict().items(), on_cpu.state_dict().values()):
        assert b.device.type == "cpu" and torch.equal(a.cpu(), b), name
