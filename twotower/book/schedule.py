"""The learning rate of every step of a phase, read off its schedule without training.

Introduced in chapter 6 (*Training on a GPU (or not)*), which draws the schedule, and
used again in chapter 7 (*Reading each tower alone*) for the weight decay the readouts
see.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from twotower.config import TrainConfig
from twotower.training.optim import make_optimizer


def learning_rates(cfg: TrainConfig) -> np.ndarray:
    """The learning rate of every optimiser step of a phase (chapter 6).

    Read off the schedule that :func:`twotower.training.optim.make_optimizer` builds for
    ``cfg``, stepped without training.

    Args:
        cfg: a :class:`twotower.config.TrainConfig`.

    Returns:
        ``(cfg.steps + 1,)`` rates: entry ``s`` is used by optimiser step ``s``
        (0-based); the last entry, after the final step, is 0.
    """
    _, schedule = make_optimizer(torch.nn.Linear(1, 1), cfg, torch.device("cpu"))
    rates = [schedule.get_last_lr()[0]]
    with warnings.catch_warnings():  # "scheduler stepped before optimizer": on purpose
        warnings.simplefilter("ignore")
        for _ in range(cfg.steps):
            schedule.step()
            rates.append(schedule.get_last_lr()[0])
    return np.array(rates)
