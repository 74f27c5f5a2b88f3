"""The optimiser and its learning-rate schedule: AdamW, warm-up, then linear decay.

Introduced in chapter 6 (*Training on a GPU (or not)*).

AdamW (betas 0.9/0.98, weight decay only on weight matrices), linear warm-up then
linear decay to 0 (``torch.optim.lr_scheduler``). The loop that steps them is
:func:`twotower.training.trainer.train`; the stacked trainer of many seeds
(:mod:`twotower.training.stacked`) builds the same optimiser over stacked weights.
"""

from __future__ import annotations

import torch
from torch import nn

from twotower.config import TrainConfig
from twotower.errors import TwotowerError


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: never on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        is_norm = "norm" in name.split(".")[-2] if "." in name else False
        plain = p.ndim < 2 or name.endswith("bias") or is_norm
        (no_decay if plain else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def fused_optimizer(device: torch.device) -> bool:
    """Fused AdamW on CUDA (one kernel; it can skip a step on the GPU's own word, see
    :class:`twotower.training.faults.StepGuard`); foreach AdamW elsewhere."""
    return device.type == "cuda"


def make_optimizer(module: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW (:func:`fused_optimizer`) and its warm-up/decay schedule."""
    groups = param_groups(module, cfg.weight_decay)
    if not any(g["params"] for g in groups):
        raise TwotowerError("nothing to train: every parameter is frozen")
    opt = adamw(groups, cfg, device)
    return opt, make_schedule(opt, cfg)


def adamw(groups: list[dict], cfg: TrainConfig, device: torch.device):
    """AdamW over parameter ``groups`` with ``cfg``'s settings
    (:func:`fused_optimizer`)."""
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
