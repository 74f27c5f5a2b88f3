"""One training loop for every phase: joint model (phase 1) and readouts (phases 2/3).

Introduced in chapter 6 (*Training on a GPU (or not)*).

AdamW (betas 0.9/0.98, weight decay only on weight matrices), linear warm-up then linear
decay to 0 (``torch.optim.lr_scheduler``), gradient clipping, autocast (bf16 on CPU),
optional ``torch.compile``, a ``tqdm`` progress bar, callbacks, a JSON-lines metrics log,
validation loss and perplexity, atomic checkpoints and exact resume: the batch and masks
of step ``s`` depend only on ``(seed, s)``, and the RNG state is saved, so a resumed run
takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from twotower import atomic
from twotower.training import checkpoint as ckpt
from twotower.training import distributed as dist_
from twotower.config import TrainConfig, config_to_dict
from twotower.data.windows import batch_windows, iter_batches
from twotower.errors import TwotowerError
from twotower.data.objectives import Batch, Objective, step_generator
from twotower.training.runtime import autocast, resolve_device, resolve_precision, sum_dtype

LossFn = Callable[[Batch], torch.Tensor]


SCORE_SEED = 0  # the masks of every scored MLM batch, whatever the run's seed


@dataclass(frozen=True)
class WindowBatches:
    """Training and evaluation batches of one objective over a window array.

    Args:
        windows: ``(N, T)`` token windows.
        objective: turns windows into inputs and targets.
        batch_size: windows per optimiser step.
        seed: batch order and masks.
    """

    windows: np.ndarray
    objective: Objective
    batch_size: int
    seed: int

    def train_batch(self, step: int) -> Batch:
        """The batch of optimiser step ``step`` (the same on every call)."""
        rows = batch_windows(self.windows, step, self.batch_size, self.seed)
        return self.objective.make_batch(rows, step_generator(self.seed, step))

    def eval_batches(self, limit: int = 0, batch_size: int | None = None) -> list[Batch]:
        """Batches over the windows in order, with fixed masks (``limit`` 0 = all)."""
        out = []
        for i, rows in enumerate(iter_batches(self.windows, batch_size or self.batch_size)):
            if limit and i >= limit:
                break
            out.append(self.objective.make_batch(rows, step_generator(self.seed, i, 1)))
        return out

    def score_batches(self, limit: int = 0) -> list[Batch]:
        """What a run scores: the first ``limit`` batches of windows in order (0 =
        all), every target position once (:meth:`Objective.scoring_batches`).

        The masks come from :data:`SCORE_SEED`, never from the run's seed, so that
        every run of one text is scored on the same positions with the same masks.
        """
        out = []
        size = self.batch_size
        for i, rows in enumerate(iter_batches(self.windows, size)):
            if limit and i >= limit:
                break
            out += self.objective.scoring_batches(
                rows, i * size, step_generator(SCORE_SEED, i, 2))
        return out


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: never on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        is_norm = "norm" in name.split(".")[-2] if "." in name else False
        (no_decay if p.ndim < 2 or name.endswith("bias") or is_norm else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def fused_optimizer(device: torch.device) -> bool:
    """Fused AdamW on CUDA (one kernel; it can skip a step on the GPU's own word, see
    :class:`StepGuard`); foreach AdamW elsewhere."""
    return device.type == "cuda"


def make_optimizer(module: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW (:func:`fused_optimizer`) and its warm-up/decay schedule."""
    groups = param_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise TwotowerError("nothing to train: every parameter is frozen")
    opt = adamw(groups, cfg, device)
    return opt, make_schedule(opt, cfg)


def adamw(groups: list[dict], cfg: TrainConfig, device: torch.device):
    """AdamW over parameter ``groups`` with ``cfg``'s settings (:func:`fused_optimizer`)."""
    fused = fused_optimizer(device)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None,
                             foreach=None if fused else True)


def make_schedule(opt, cfg: TrainConfig):
    """Linear warm-up from ~0 over ``cfg.warmup_steps``, then linear decay to 0."""
    warmup = max(1, min(cfg.warmup_steps, cfg.steps - 1))
    return torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 1.0 / warmup, 1.0, total_iters=warmup),
        torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0,
                                          total_iters=max(1, cfg.steps - warmup)),
    ], milestones=[warmup])


def evaluate(loss_fn: LossFn, module: nn.Module, batches: Sequence[Batch],
             device: torch.device, dtype: torch.dtype | None) -> dict:
    """Token-weighted mean loss and perplexity over ``batches``."""
    was_training = module.training
    module.eval()
    total, count = torch.zeros((), dtype=sum_dtype(device), device=device), 0
    with torch.no_grad(), autocast(device, dtype):
        for batch in batches:
            batch = batch.to(device)
            n = batch.n_targets  # known on the host: no wait
            if n:
                total += loss_fn(batch).to(total.dtype) * n
                count += n
    module.train(was_training)
    loss = float(total) / max(count, 1)  # the one wait for the device
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_tokens": count}


class MetricsLog:
    """Append-only JSON lines, one per logged step; resuming drops lines past the step."""

    def __init__(self, path: Path | None, phase: str, resume_step: int):
        self.path, self.phase = path, phase
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if rec.get("phase") != phase or rec.get("step", 0) <= resume_step:
                    kept.append(line)
        atomic.write_text(path, "".join(l + "\n" for l in kept))

    def write(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"phase": self.phase, **record}) + "\n")


class _LossModule(nn.Module):
    """Lets DistributedDataParallel wrap "module + loss function" as one forward."""

    def __init__(self, module: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_fn(Batch(input_ids, targets, positions=positions))


def _call(callbacks: Iterable, name: str, state: dict) -> None:
    for cb in callbacks:
        fn = getattr(cb, name, None)
        if fn is not None:
            fn(state)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numerical_fault(what: str, step: int, seed: int, phase: str,
                     ckpt_dir: Path | None) -> TwotowerError:
    """The one-line error of a NaN/inf: where, which batch, what is still good."""
    good = (ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None) or "none yet"
    return TwotowerError(f"{what} at step {step} (batch {step} of seed {seed}) in phase "
                         f"{phase}; last good checkpoint: {good}; lower --lr or rerun "
                         "with --detect-anomaly")


def _resume(last: Path, module: nn.Module, opt, sched, scaler, steps: int,
            world: dist_.Dist) -> tuple[int, float, int]:
    """Load checkpoint ``last`` into the model, optimizer, schedule, scaler and RNGs.

    Each process takes back its own random state when the checkpoint was written by
    as many processes (so dropout continues exactly), else rank 0's.

    Returns:
        The number of steps the checkpoint had done, and the sum and number of the
        training losses since the last line of ``metrics.jsonl`` (so that the next line
        averages the same steps as in a run that was never interrupted).

    Raises:
        TwotowerError: when the checkpoint is unreadable or does not belong to this
            training (another model, optimizer or schedule); nothing on disk is changed.
    """
    ckpt.load_weights(last, module)
    state, meta = ckpt.load_state(last), ckpt.load_meta(last)
    try:
        step = int(meta["step"])
        if not 0 <= step <= steps:
            raise ValueError(f"it is at step {step} of a {steps}-step phase")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        # "rng": one state, as checkpoints written before rng_ranks hold it
        ranks = state["rng_ranks"] if "rng_ranks" in state else [state["rng"]]
        _set_rng_state(ranks[world.rank] if len(ranks) == world.world else ranks[0])
        window = state.get("log_window", {"loss_sum": 0.0, "steps": 0})
        loss_sum, window_steps = float(window["loss_sum"]), int(window["steps"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        detail = f"no {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise TwotowerError(f"cannot resume from {last} ({detail[:160]}); it was not "
                            "written by this run's config: use a new --out directory, or "
                            "delete that checkpoint to resume from an earlier one"
                            ) from None
    return step, loss_sum, window_steps


class StepGuard:
    """Stops a run at a non-finite loss or gradient norm, before the weights change.

    On the CPU each step is checked at once: reading a number there costs nothing, and
    a fault raises before the optimiser moves. On a GPU, reading a number makes the
    host wait for the device every step, so the checks stay on the device: the first
    bad step is recorded there, and fused AdamW is told through its ``found_inf``
    tensor to skip its update from that step on (the flag latches), so the weights stay
    those of the last good step. The fault is raised at the next :meth:`check` (a log
    line, an evaluation, a checkpoint, the end), naming the step where it happened.
    With fp16's grad scaler, non-finite gradients are the scaler's business (it skips
    those steps by design); a non-finite loss is still a fault.
    """

    def __init__(self, opt, scaler, device: torch.device, seed: int, phase: str,
                 ckpt_dir: Path | None):
        self.opt, self.scaler = opt, scaler
        self.deferred = bool(opt.defaults.get("fused")) and not scaler.is_enabled()
        self.where = (seed, phase, ckpt_dir)
        # first bad step, what went bad (0 loss, 1 gradient norm) and its value
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.kind = torch.zeros((), dtype=torch.long, device=device)
        self.value = torch.zeros((), dtype=torch.float32, device=device)

    def _fault(self, step: int, kind: int, value: float) -> TwotowerError:
        what = "loss" if kind == 0 else "gradient norm"
        return _numerical_fault(f"{what} became {value}", step, *self.where)

    def _at_once(self, step: int, kind: int, values: Sequence[torch.Tensor]) -> None:
        for value in values:
            if not math.isfinite(v := float(value)):
                raise self._fault(step, kind, v)

    def loss(self, step: int, value: torch.Tensor) -> None:
        """After the forward pass: the step's (global mean) loss."""
        if not self.deferred:
            return self._at_once(step, 0, [value])
        self._note(step, ~torch.isfinite(value), 0, value)

    def norms(self, step: int, norms: Sequence[torch.Tensor]) -> None:
        """After clipping: each group's gradient norm; then arms the optimiser."""
        if self.scaler.is_enabled():
            return
        if not self.deferred:
            return self._at_once(step, 1, norms)
        total = torch.stack([n.float() for n in norms])
        bad = ~torch.isfinite(total)
        self._note(step, bad.any(), 1, total[bad.int().argmax()])
        self.opt.found_inf = (self.step >= 0).float()  # latches: skip from then on

    def _note(self, step: int, bad: torch.Tensor, kind: int, value) -> None:
        first = bad & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.kind = torch.where(first, kind, self.kind)
        self.value = torch.where(first, value.float(), self.value)

    def check(self) -> None:
        """Raise the first fault recorded on the device, if any (one wait)."""
        if self.deferred and (step := int(self.step)) >= 0:
            raise self._fault(step, int(self.kind), float(self.value))


def train(
    module: nn.Module,
    loss_fn: LossFn,
    batches: WindowBatches,
    cfg: TrainConfig,
    *,
    phase: str = "joint",
    val: WindowBatches | None = None,
    run_dir: Path | str | None = None,
    callbacks: Iterable = (),
    clip_groups: Sequence[Sequence[nn.Parameter]] | None = None,
    meta: dict | None = None,
    progress: bool = True,
    until: int | None = None,
) -> dict:
    """Train ``module`` by minimising ``loss_fn`` for ``cfg.steps`` steps (or resume).

    Args:
        module: what is trained and checkpointed (only its ``requires_grad`` params
            are optimised).
        loss_fn: batch -> scalar fp32 loss; runs under autocast.
        batches: training batches; ``val`` the validation ones.
        cfg: optimiser, schedule, precision, bookkeeping.
        phase: name used in logs and for the checkpoint folder ``run_dir/<phase>``.
        run_dir: where ``metrics.jsonl`` and checkpoints go (None: nothing saved).
        callbacks: objects with any of ``on_step_end(state)``, ``on_eval(state)``,
            ``on_train_end(state)``; ``state`` is a dict (phase, step, steps, loss, lr...).
        clip_groups: clip each group's gradient norm separately (one per readout);
            default: one global norm.
        meta: extra JSON saved in every checkpoint's ``meta.json``.
        until: stop after this step, with a checkpoint, on the schedule of
            ``cfg.steps`` (the same weights the full run passes through: a learning
            curve's snapshot, see :mod:`twotower.experiments.learning_curve`).

    Returns:
        Summary dict: steps, final train loss, val loss/perplexity, tokens per second.

    Raises:
        TwotowerError: NaN/inf loss (naming step, batch and last good checkpoint).
    """
    world = dist_.current()
    device = resolve_device(dist_.device_for(world, cfg.device))
    dtype = resolve_precision(cfg.precision, device)
    module.to(device).train()
    opt, sched = make_optimizer(module, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run_dir = Path(run_dir) if run_dir is not None else None
    ckpt_dir = run_dir / phase if run_dir is not None else None
    meta = {"phase": phase, "train_config": config_to_dict(cfg), **(meta or {})}

    start, loss_sum, window_steps = 0, 0.0, 0
    last = ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    if last is not None:
        start, loss_sum, window_steps = _resume(last, module, opt, sched, scaler,
                                                cfg.steps, world)
    # the sum of the losses since the last log line, kept on the device
    window_loss = torch.tensor(loss_sum, dtype=sum_dtype(device), device=device)
    log = MetricsLog(run_dir / "metrics.jsonl" if run_dir and world.is_main else None,
                     phase, start)
    step_loss = _LossModule(module, loss_fn)
    if world.active:
        step_loss = nn.parallel.DistributedDataParallel(
            step_loss, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # forward and loss as one graph (AOTAutograd compiles backward)
        step_loss = torch.compile(step_loss)
    groups = clip_groups or [[p for p in module.parameters() if p.requires_grad]]
    val_batches = val.eval_batches(cfg.eval_batches) if val is not None else []

    def save(step: int) -> None:
        if ckpt_dir is None:
            return
        guard.check()  # never a checkpoint of weights after a fault
        # Every process's random state (its own dropout masks), gathered on rank 0.
        rngs = dist_.gather_objects(_rng_state(), world)
        if world.is_main:
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "rng_ranks": rngs,
                     "log_window": {"loss_sum": float(window_loss),
                                    "steps": window_steps}}
            ckpt.save_checkpoint(ckpt_dir, step, module, state, meta,
                                 keep=cfg.keep_checkpoints)
        dist_.barrier(world)

    stop = cfg.steps if until is None else min(int(until), cfg.steps)
    summary = {"phase": phase, "steps": stop, "resumed_from": start}
    bar = tqdm(total=stop, initial=start, desc=phase,
               disable=not (progress and world.is_main), mininterval=1.0,
               dynamic_ncols=True)
    window_tokens, t0 = 0, time.perf_counter()
    first_step_time = t0
    guard = StepGuard(opt, scaler, device, batches.seed, phase, ckpt_dir)

    def take_step(step: int) -> torch.Tensor | None:
        """One optimiser step on batch ``step``; the global batch's mean loss (a tensor
        on the device: reading it would make the host wait), or None when the global
        batch holds no target at all (a masked LM's short window where no position was
        drawn): then the weights stay as they are."""
        batch = batches.train_batch(step).rows(slice(world.rank, None, world.world))
        batch = batch.to(device)  # its target positions are found on the CPU first
        n_local = batch.n_targets
        n_global = dist_.global_count(n_local, device, world)
        if n_global == 0:
            return None
        # Scale so that DDP's average of the gradients is the gradient of the global
        # batch's mean loss (processes may hold different target counts).
        share = n_local * world.world / n_global
        with autocast(device, dtype):
            loss = step_loss(batch.input_ids, batch.targets, batch.positions)
        # The global batch's mean loss: the sum of every process's share.
        value = dist_.all_sum_tensor(
            loss.detach().to(window_loss.dtype) * (share / world.world), world)
        guard.loss(step, value)
        opt.zero_grad(set_to_none=True)
        try:
            scaler.scale(loss * share).backward()
        except RuntimeError as err:
            if not (cfg.detect_anomaly and "returned nan" in str(err)):
                raise
            # torch has printed the forward trace of the culprit just above
            raise _numerical_fault(f"anomaly detection: {str(err).splitlines()[0]}",
                                   step, batches.seed, phase, ckpt_dir) from None
        scaler.unscale_(opt)
        # fp16's scaler skips steps with inf gradients by design; elsewhere a
        # non-finite gradient would poison the weights and the optimiser state.
        guard.norms(step, [torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                           for params in groups])
        scaler.step(opt)
        scaler.update()
        return value

    # closing(bar): however the loop ends (an error included), the bar is closed
    # first, so an error line is not printed into the middle of it.
    with torch.autograd.set_detect_anomaly(cfg.detect_anomaly), contextlib.closing(bar):
        for step in range(start, stop):
            value = take_step(step)
            with warnings.catch_warnings():  # a skipped step keeps the schedule going;
                # torch would warn that the optimiser has not stepped yet
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
                sched.step()
            window_tokens += batches.batch_size * batches.windows.shape[1]
            if value is not None:
                window_loss += value
                window_steps += 1
            done = step + 1
            if callbacks:  # a callback reads the loss: on a GPU, a wait per step
                state = {"phase": phase, "step": done, "steps": cfg.steps,
                         "loss": float("nan") if value is None else float(value),
                         "lr": sched.get_last_lr()[0]}
                _call(callbacks, "on_step_end", state)
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps:
                guard.check()
                now = time.perf_counter()
                mean = float(window_loss) / window_steps if window_steps else None
                rec = {"step": done, "loss": mean, "lr": sched.get_last_lr()[0],
                       "tokens_per_s": window_tokens / (now - t0)}
                log.write(rec)
                if mean is not None:
                    bar.set_postfix(loss=f"{mean:.3f}")
                    summary["train_loss"] = mean
                window_loss.zero_()
                window_tokens, window_steps, t0 = 0, 0, now
            if val_batches and (done == cfg.steps or
                                (cfg.eval_every and done % cfg.eval_every == 0)):
                guard.check()
                ev = evaluate(loss_fn, module, val_batches, device, dtype)
                log.write({"step": done, **ev})
                summary.update(ev)
                _call(callbacks, "on_eval", {"phase": phase, "step": done, **ev})
            if done in (stop, cfg.steps) or (cfg.checkpoint_every and
                                             done % cfg.checkpoint_every == 0):
                save(done)
    guard.check()
    elapsed = time.perf_counter() - first_step_time
    trained = max(0, stop - start)
    summary["seconds"] = elapsed
    if trained:
        summary["tokens_per_s"] = trained * batches.batch_size * batches.windows.shape[1] \
            / elapsed
    if val_batches and "val_loss" not in summary:  # resumed after the last step
        summary.update(evaluate(loss_fn, module, val_batches, device, dtype))
    _call(callbacks, "on_train_end", summary)
    return summary
