"""One training loop for every phase: joint model (phase 1) and readouts (phases 2/3).

Introduced in chapter 6 (*Training on a GPU (or not)*).

Gradient clipping, autocast (bf16 on CPU), optional ``torch.compile``, a ``tqdm``
progress bar, callbacks, a JSON-lines metrics log, validation loss and perplexity,
atomic checkpoints and exact resume: the batch and masks of step ``s`` depend only on
``(seed, s)``, and the RNG state is saved, so a resumed run takes the same steps as an
uninterrupted one. The optimiser and its schedule are in
:mod:`twotower.training.optim`, the checks for NaN and inf in
:mod:`twotower.training.faults`; :class:`Trainer` gives each job of the loop a method.
"""

from __future__ import annotations

import contextlib
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

from twotower.config import TrainConfig, config_to_dict
from twotower.data.objectives import Batch, Objective, step_generator
from twotower.data.windows import batch_windows, iter_batches
from twotower.errors import TwotowerError
from twotower.training import checkpoint as ckpt
from twotower.training import distributed as dist_
from twotower.training.faults import StepGuard, numerical_fault
from twotower.training.metrics_log import MetricsLog
from twotower.training.optim import make_optimizer
from twotower.training.runtime import (autocast, resolve_device, resolve_precision,
                                       sum_dtype, warn_of_other_threads)

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

    def eval_batches(self, limit: int = 0,
                     batch_size: int | None = None) -> list[Batch]:
        """Batches over the windows in order, with fixed masks (``limit`` 0 = all)."""
        out = []
        size = batch_size or self.batch_size
        for i, rows in enumerate(iter_batches(self.windows, size)):
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


class _LossModule(nn.Module):
    """Lets DistributedDataParallel wrap "module + loss function" as one forward."""

    def __init__(self, module: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss_fn(Batch(input_ids, targets, positions=positions))


class Trainer:
    """One run of :func:`train`, each job of the training loop in its own method.

    Construction does the set-up: the device and precision (``_place``), the
    optimiser, the resume from the last checkpoint (``_resume``) and the wrapper for
    distributed or compiled steps (``_wrap_loss``). :meth:`run` then takes the steps
    (:meth:`take_step`), and after each step does what falls due: callbacks, a log
    line (:meth:`log_window`), an evaluation (:meth:`evaluate`), a checkpoint
    (:meth:`save`). Arguments as for :func:`train`.
    """

    def __init__(self, module: nn.Module, loss_fn: LossFn, batches: WindowBatches,
                 cfg: TrainConfig, *, phase: str = "joint",
                 val: WindowBatches | None = None, run_dir: Path | str | None = None,
                 callbacks: Iterable = (),
                 clip_groups: Sequence[Sequence[nn.Parameter]] | None = None,
                 meta: dict | None = None, progress: bool = True,
                 until: int | None = None):
        self.module, self.loss_fn, self.cfg = module, loss_fn, cfg
        self.batches = batches
        self.phase, self.callbacks, self.progress = phase, callbacks, progress
        self._place()
        self.opt, self.sched = make_optimizer(module, cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ckpt_dir = self.run_dir / phase if self.run_dir is not None else None
        self.meta = {"phase": phase, "train_config": config_to_dict(cfg),
                     "threads": torch.get_num_threads(), **(meta or {})}
        self.start, loss_sum, self.window_steps = self._resume()
        # the sum of the losses since the last log line, kept on the device
        self.window_loss = torch.tensor(loss_sum, dtype=sum_dtype(self.device),
                                        device=self.device)
        self.window_tokens = 0
        main = self.run_dir is not None and self.world.is_main
        self.log = MetricsLog(self.run_dir / "metrics.jsonl" if main else None, phase,
                              self.start)
        self.step_loss = self._wrap_loss()
        self.groups = clip_groups or [[p for p in module.parameters()
                                       if p.requires_grad]]
        self.val_batches = val.eval_batches(cfg.eval_batches) if val is not None else []
        self.stop = cfg.steps if until is None else min(int(until), cfg.steps)
        self.summary = {"phase": phase, "steps": self.stop, "resumed_from": self.start}
        self.guard = StepGuard(self.opt, self.scaler, self.device, batches.seed, phase,
                               self.ckpt_dir)

    # --- set-up -----------------------------------------------------------------------

    def _place(self) -> None:
        """The device (under torchrun, this process's GPU), its precision, and the
        module moved there in training mode."""
        self.world = dist_.current()
        self.device = resolve_device(dist_.device_for(self.world, self.cfg.device))
        self.dtype = resolve_precision(self.cfg.precision, self.device)
        self.module.to(self.device).train()

    def _wrap_loss(self) -> nn.Module:
        """Module and loss as one forward: under DistributedDataParallel when several
        processes train, compiled when ``cfg.compile``."""
        step_loss = _LossModule(self.module, self.loss_fn)
        if self.world.active:
            step_loss = nn.parallel.DistributedDataParallel(
                step_loss,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:  # forward and loss as one graph (AOTAutograd: backward)
            step_loss = torch.compile(step_loss)
        return step_loss

    def _resume(self) -> tuple[int, float, int]:
        """Load the phase's last checkpoint, if any, into the model, optimizer,
        schedule, scaler and RNGs.

        Each process takes back its own random state when the checkpoint was written by
        as many processes (so dropout continues exactly), else rank 0's.

        Returns:
            The number of steps the checkpoint had done (0 without one), and the sum
            and number of the training losses since the last line of ``metrics.jsonl``
            (so that the next line averages the same steps as in a run that was never
            interrupted).

        Raises:
            TwotowerError: when the checkpoint is unreadable or does not belong to this
                training (another model, optimizer or schedule); nothing on disk is
                changed.
        """
        last = None if self.ckpt_dir is None else ckpt.latest_checkpoint(self.ckpt_dir)
        if last is None:
            return 0, 0.0, 0
        ckpt.load_weights(last, self.module)
        state, meta = ckpt.load_state(last), ckpt.load_meta(last)
        warn_of_other_threads(last, meta.get("threads"), self.device)
        try:
            step, steps = int(meta["step"]), self.cfg.steps
            if not 0 <= step <= steps:
                raise ValueError(f"it is at step {step} of a {steps}-step phase")
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            # "rng": one state, as checkpoints written before rng_ranks hold it
            ranks = state["rng_ranks"] if "rng_ranks" in state else [state["rng"]]
            mine = self.world.rank if len(ranks) == self.world.world else 0
            ckpt.set_rng_state(ranks[mine])
            window = state.get("log_window", {"loss_sum": 0.0, "steps": 0})
            return step, float(window["loss_sum"]), int(window["steps"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = (f"no {err}" if isinstance(err, KeyError)
                      else str(err).splitlines()[0])
            raise TwotowerError(
                f"cannot resume from {last} ({detail[:160]}); it was not written by "
                "this run's config: use a new --out directory, or delete that "
                "checkpoint to resume from an earlier one") from None

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> dict:
        """Take the steps from the resumed one to ``until`` (or the end); the summary
        that :func:`train` returns."""
        bar = tqdm(total=self.stop, initial=self.start, desc=self.phase,
                   disable=not (self.progress and self.world.is_main), mininterval=1.0,
                   dynamic_ncols=True)
        self.t0 = started = time.perf_counter()
        # closing(bar): however the loop ends (an error included), the bar is closed
        # first, so an error line is not printed into the middle of it.
        with torch.autograd.set_detect_anomaly(self.cfg.detect_anomaly), \
                contextlib.closing(bar):
            for step in range(self.start, self.stop):
                value = self.take_step(step)
                self._advance(value)
                done = step + 1
                self._on_step_end(done, value)
                bar.update(1)
                self._when_due(done, bar)
        self.guard.check()
        return self._finish(started)

    def take_step(self, step: int) -> torch.Tensor | None:
        """One optimiser step on batch ``step``; the global batch's mean loss (a tensor
        on the device: reading it would make the host wait), or None when the global
        batch holds no target at all (a masked LM's short window where no position was
        drawn): then the weights stay as they are."""
        world = self.world
        batch = self.batches.train_batch(step)
        batch = batch.rows(slice(world.rank, None, world.world))
        batch = batch.to(self.device)  # its target positions are found on the CPU first
        n_local = batch.n_targets
        n_global = dist_.global_count(n_local, self.device, world)
        if n_global == 0:
            return None
        # Scale so that DDP's average of the gradients is the gradient of the global
        # batch's mean loss (processes may hold different target counts).
        share = n_local * world.world / n_global
        with autocast(self.device, self.dtype):
            loss = self.step_loss(batch.input_ids, batch.targets, batch.positions)
        # The global batch's mean loss: the sum of every process's share.
        value = dist_.all_sum_tensor(
            loss.detach().to(self.window_loss.dtype) * (share / world.world), world)
        self.guard.loss(step, value)
        self.opt.zero_grad(set_to_none=True)
        self._backward(loss * share, step)
        self.scaler.unscale_(self.opt)
        # fp16's scaler skips steps with inf gradients by design; elsewhere a
        # non-finite gradient would poison the weights and the optimiser state.
        clip = self.cfg.grad_clip
        self.guard.norms(step, [torch.nn.utils.clip_grad_norm_(params, clip)
                                for params in self.groups])
        self.scaler.step(self.opt)
        self.scaler.update()
        return value

    def _backward(self, loss: torch.Tensor, step: int) -> None:
        """The backward pass; under ``cfg.detect_anomaly`` a NaN found in it stops the
        run with the one-line error of
        :func:`twotower.training.faults.numerical_fault`."""
        try:
            self.scaler.scale(loss).backward()
        except RuntimeError as err:
            if not (self.cfg.detect_anomaly and "returned nan" in str(err)):
                raise
            # torch has printed the forward trace of the culprit just above
            raise numerical_fault(f"anomaly detection: {str(err).splitlines()[0]}",
                                  step, self.batches.seed, self.phase, self.ckpt_dir
                                  ) from None

    def _advance(self, value: torch.Tensor | None) -> None:
        """Step the schedule and add the step to the window of the next log line."""
        with warnings.catch_warnings():  # a skipped step keeps the schedule going;
            # torch would warn that the optimiser has not stepped yet
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler")
            self.sched.step()
        self.window_tokens += self.batches.batch_size * self.batches.windows.shape[1]
        if value is not None:
            self.window_loss += value
            self.window_steps += 1

    def _when_due(self, done: int, bar) -> None:
        """After step ``done``: a log line, an evaluation and a checkpoint when due."""
        cfg = self.cfg
        if done % cfg.log_every == 0 or done == cfg.steps:
            self.log_window(done, bar)
        if self.val_batches and (done == cfg.steps or
                                 (cfg.eval_every and done % cfg.eval_every == 0)):
            self.evaluate(done)
        if done in (self.stop, cfg.steps) or (cfg.checkpoint_every and
                                              done % cfg.checkpoint_every == 0):
            self.save(done)

    # --- what falls due, callbacks, the summary ---------------------------------------

    def log_window(self, done: int, bar) -> None:
        """A line of ``metrics.jsonl``: the mean loss and speed since the last one."""
        self.guard.check()
        now = time.perf_counter()
        steps = self.window_steps
        mean = float(self.window_loss) / steps if steps else None
        self.log.write({"step": done, "loss": mean, "lr": self.sched.get_last_lr()[0],
                        "tokens_per_s": self.window_tokens / (now - self.t0)})
        if mean is not None:
            bar.set_postfix(loss=f"{mean:.3f}")
            self.summary["train_loss"] = mean
        self.window_loss.zero_()
        self.window_tokens, self.window_steps, self.t0 = 0, 0, now

    def evaluate(self, done: int) -> None:
        """Validation loss and perplexity after step ``done``: logged, kept in the
        summary and passed to the callbacks' ``on_eval``."""
        self.guard.check()
        ev = evaluate(self.loss_fn, self.module, self.val_batches, self.device,
                      self.dtype)
        self.log.write({"step": done, **ev})
        self.summary.update(ev)
        self._notify("on_eval", {"phase": self.phase, "step": done, **ev})

    def save(self, step: int) -> None:
        """A checkpoint of step ``step`` in ``run_dir/<phase>`` (none without one)."""
        if self.ckpt_dir is None:
            return
        self.guard.check()  # never a checkpoint of weights after a fault
        world = self.world
        # Every process's random state (its own dropout masks), gathered on rank 0.
        rngs = dist_.gather_objects(ckpt.rng_state(), world)
        if world.is_main:
            state = {"optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng_ranks": rngs,
                     "log_window": {"loss_sum": float(self.window_loss),
                                    "steps": self.window_steps}}
            ckpt.save_checkpoint(self.ckpt_dir, step, self.module, state, self.meta,
                                 keep=self.cfg.keep_checkpoints)
        dist_.barrier(world)

    def _notify(self, name: str, state: dict) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(state)

    def _on_step_end(self, done: int, value: torch.Tensor | None) -> None:
        if self.callbacks:  # a callback reads the loss: on a GPU, a wait per step
            self._notify("on_step_end", {
                "phase": self.phase, "step": done, "steps": self.cfg.steps,
                "loss": float("nan") if value is None else float(value),
                "lr": self.sched.get_last_lr()[0]})

    def _finish(self, started: float) -> dict:
        """Time and speed of the run into the summary, a last evaluation when the run
        resumed after its last step, then the callbacks' ``on_train_end``."""
        summary = self.summary
        elapsed = time.perf_counter() - started
        trained = max(0, self.stop - self.start)
        summary["seconds"] = elapsed
        if trained:
            summary["tokens_per_s"] = trained * self.batches.batch_size \
                * self.batches.windows.shape[1] / elapsed
        if self.val_batches and "val_loss" not in summary:  # resumed after the end
            summary.update(evaluate(self.loss_fn, self.module, self.val_batches,
                                    self.device, self.dtype))
        self._notify("on_train_end", summary)
        return summary


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
        loss_fn: batch -> scalar fp32 loss, e.g. ``model.loss``
            (:meth:`twotower.models.tower_lm.TowerLM.loss`); runs under autocast.
        batches: training batches; ``val`` the validation ones.
        cfg: optimiser, schedule, precision, bookkeeping.
        phase: name used in logs and for the checkpoint folder ``run_dir/<phase>``.
        run_dir: where ``metrics.jsonl`` and checkpoints go (None: nothing saved).
        callbacks: objects with any of ``on_step_end(state)``, ``on_eval(state)``,
            ``on_train_end(state)``; ``state`` is a dict (phase, step, steps, loss,
            lr...).
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
    return Trainer(module, loss_fn, batches, cfg, phase=phase, val=val, run_dir=run_dir,
                   callbacks=callbacks, clip_groups=clip_groups, meta=meta,
                   progress=progress, until=until).run()
