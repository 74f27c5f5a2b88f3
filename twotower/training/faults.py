"""Numerical faults: a run stops at a non-finite loss or gradient norm, before the
weights change, with a one-line error naming the step, the batch and the last good
checkpoint.

Introduced in chapter 6 (*Training on a GPU (or not)*).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from twotower.errors import TwotowerError
from twotower.training import checkpoint as ckpt


def numerical_fault(what: str, step: int, seed: int, phase: str,
                    ckpt_dir: Path | None) -> TwotowerError:
    """The one-line error of a NaN/inf: where, which batch, what is still good."""
    good = (ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None) or "none yet"
    return TwotowerError(f"{what} at step {step} (batch {step} of seed {seed}) in "
                         f"phase {phase}; last good checkpoint: {good}; lower --lr or "
                         "rerun with --detect-anomaly")


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
        return numerical_fault(f"{what} became {value}", step, *self.where)

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
