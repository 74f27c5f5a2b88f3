"""Several seeds of one model as one computation: stacked weights under ``vmap``.

Introduced in chapter 2 (*A language with a planted division*), whose runs are too
small to keep a processor busy one at a time.

The towers of one model are already stacked (:mod:`twotower.models.towers`); here whole
models are. :func:`train_stacked` takes S models of one configuration (each
initialised by its own seed) and one batch stream per seed, stacks every parameter
along a new leading axis (:func:`torch.func.stack_module_state`) and runs the S
forward and backward passes as one batched computation (:func:`torch.vmap` over
:func:`torch.func.functional_call`). Each seed keeps its own gradient (the losses are
summed, and no parameter is shared), its own gradient-norm clipping and its own AdamW
state (AdamW is elementwise), so the result is each seed's separate run up to
floating-point rounding; the tests check it. Dropout would draw other masks under
``vmap`` than in a separate run, so models with dropout are refused.

The trained weights and each seed's optimizer state are written back as an ordinary
final checkpoint of each seed's run (:func:`save_each`), which
:func:`twotower.training.trainer.train` then finds and resumes from: every later phase
runs as for a separately trained seed.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from twotower.config import TrainConfig, config_to_dict
from twotower.errors import require
from twotower.models.tower_lm import IGNORE
from twotower.training import checkpoint as ckpt
from twotower.training.metrics_log import MetricsLog
from twotower.training.optim import adamw, make_optimizer, make_schedule, param_groups
from twotower.training.runtime import resolve_device
from twotower.training.trainer import WindowBatches


def _next_token_loss(base: nn.Module):
    """Per-model mean cross-entropy over positions with a target, vmap-able (no
    data-dependent shapes: ignored positions are skipped by ``ignore_index``)."""
    def loss(params, buffers, input_ids, targets):
        logits = torch.func.functional_call(base, (params, buffers), (input_ids,))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE)
    return loss


def train_stacked(models: Sequence[nn.Module], batches: Sequence[WindowBatches],
                  cfg: TrainConfig, *, run_dirs: Sequence[Path] | None = None,
                  phase: str = "joint", progress: bool = False) -> dict:
    """Train ``models`` (one per seed, same configuration) on their own ``batches``
    for ``cfg.steps`` steps as one stacked computation; the weights are written back
    into ``models``. With ``run_dirs``, each model's training loss goes to its own
    ``metrics.jsonl`` every ``cfg.log_every`` steps, as
    :func:`twotower.training.trainer.train` writes it.

    Returns:
        ``{"seconds", "tokens_per_s", "train_loss" (per model), "optimizers"}``: the
        last holds one AdamW per model whose state is that model's slice, ready for
        :func:`save_each`.
    """
    require(len(models) == len(batches) and len(models) > 0,
            "train_stacked needs one batch stream per model")
    require(all(m.cfg.dropout == 0 for m in models), "stacked training needs "
            "dropout 0: vmap would draw other dropout masks than separate runs")
    device = resolve_device(cfg.device)
    for m in models:
        m.to(device).train()
    params, buffers = torch.func.stack_module_state(list(models))
    opt = adamw(_stacked_groups(models[0], params, cfg), cfg, device)
    sched = make_schedule(opt, cfg)
    loss_all = torch.vmap(_next_token_loss(copy.deepcopy(models[0]).to("meta")),
                          randomness="different")
    S, started = len(models), time.perf_counter()
    logs = [MetricsLog(Path(d) / "metrics.jsonl", phase, 0) for d in run_dirs or ()]
    window = torch.zeros(S, dtype=torch.float64, device=device)
    bar = tqdm(total=cfg.steps, desc="stacked", disable=not progress)
    with contextlib.closing(bar):
        for step in range(cfg.steps):
            stack = [b.train_batch(step) for b in batches]
            inputs = torch.stack([b.input_ids for b in stack]).to(device)
            targets = torch.stack([b.targets for b in stack]).to(device)
            with sdpa_kernel(SDPBackend.MATH):  # attention as matmuls: batched by vmap
                loss = loss_all(params, buffers, inputs, targets)  # (S,)
            _stacked_step(loss, params, opt, cfg)
            sched.step()
            window += loss.detach()
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                means = _log_window(logs, window, done, cfg, sched)
    _write_back(models, params)
    seconds = time.perf_counter() - started
    windows = batches[0].windows.shape[1]
    return {"seconds": seconds, "train_loss": means,
            "tokens_per_s": S * cfg.steps * batches[0].batch_size * windows / seconds,
            "optimizers": _per_model(models, opt, params, cfg, device)}


def _stacked_groups(model: nn.Module, params: dict, cfg: TrainConfig) -> list[dict]:
    """The parameter groups of one model (:func:`twotower.training.optim.param_groups`)
    over the stacked tensors: each gets the optimizer settings of its per-model
    parameter."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [{**{k: v for k, v in g.items() if k != "params"},
             "params": [params[names[id(p)]] for p in g["params"]]}
            for g in param_groups(model, cfg.weight_decay)]


def _stacked_step(loss: torch.Tensor, params: dict, opt, cfg: TrainConfig) -> None:
    """Backward of every model's loss, each model's gradient clipped to its own norm,
    then one AdamW step."""
    opt.zero_grad(set_to_none=True)
    loss.sum().backward()
    grads = [p.grad for p in params.values()]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0)
    coef = (cfg.grad_clip / (norms.sqrt() + 1e-6)).clamp(max=1.0)  # per model
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
    opt.step()


def _log_window(logs: Sequence[MetricsLog], window: torch.Tensor, done: int,
                cfg: TrainConfig, sched) -> list[float]:
    """Each model's mean loss since the last log line, written to its log; the window
    starts again."""
    means = (window / (cfg.log_every if done % cfg.log_every == 0 else
                       done % cfg.log_every)).tolist()
    for log, mean in zip(logs, means):
        log.write({"step": done, "loss": mean, "lr": sched.get_last_lr()[0]})
    window.zero_()
    return means


def _write_back(models: Sequence[nn.Module], params: dict) -> None:
    """Each model's slice of the stacked weights, copied into the model."""
    with torch.no_grad():
        for k, m in enumerate(models):
            for name, p in m.named_parameters():
                p.copy_(params[name][k])


def _per_model(models, stacked_opt, params, cfg, device) -> list:
    """One AdamW (and schedule at the end) per model, holding its slice of the
    stacked optimizer's state."""
    out = []
    for k, m in enumerate(models):
        opt, sched = make_optimizer(m, cfg, device)
        with warnings.catch_warnings():  # the schedule is moved to where it ended
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            for _ in range(cfg.steps):
                sched.step()
        for name, p in m.named_parameters():
            state = stacked_opt.state.get(params[name])
            if state:
                opt.state[p] = {"step": state["step"].clone(),
                                "exp_avg": state["exp_avg"][k].clone(),
                                "exp_avg_sq": state["exp_avg_sq"][k].clone()}
        out.append((opt, sched))
    return out


def save_each(models: Sequence[nn.Module], optimizers: Sequence, cfg: TrainConfig,
              run_dirs: Sequence[Path], phase: str = "joint",
              meta: dict | None = None) -> None:
    """Write each model's final checkpoint into ``run_dir/phase`` as
    :func:`twotower.training.trainer.train` would have (weights, optimizer, schedule),
    so a later ``train`` of that phase finds it finished."""
    for model, (opt, sched), run_dir in zip(models, optimizers, run_dirs):
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
                 "rng_ranks": [{"torch": torch.get_rng_state()}],
                 "log_window": {"loss_sum": 0.0, "steps": 0}}
        ckpt.save_checkpoint(Path(run_dir) / phase, cfg.steps, model, state,
                             {"phase": phase, "train_config": config_to_dict(cfg),
                              "stacked": len(models), **(meta or {})},
                             keep=cfg.keep_checkpoints)
