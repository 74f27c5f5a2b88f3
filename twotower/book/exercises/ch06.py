"""Exercise checks of chapter 6 (*Training on a GPU (or not)*).

Introduced in chapter 6 (*Training on a GPU (or not)*): the learning-rate schedule, and
the training FLOPs per token of a transformer tower.
"""

from __future__ import annotations

import functools

from twotower.book.exercises.framework import Attempt, exercise
from twotower.book.schedule import learning_rates
from twotower.config import PRESETS, ModelConfig, TrainConfig
from twotower.models.flops import train_flops_per_token

# --- learning-rate schedule -----------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _schedule(peak_lr, warmup_steps, total_steps) -> tuple[float, ...]:
    cfg = TrainConfig(steps=total_steps, warmup_steps=warmup_steps, lr=peak_lr)
    return tuple(learning_rates(cfg))  # make_optimizer's schedule, step by step


def reference_learning_rate(step, peak_lr, warmup_steps, total_steps):
    """Reference of :func:`check_learning_rate`: read off the package's schedule
    (:func:`twotower.book.schedule.learning_rates`)."""
    return _schedule(peak_lr, warmup_steps, total_steps)[step]


@exercise(reference_learning_rate, hint=(
    "Hint: during warm-up (step < warmup_steps) the rate climbs linearly from peak_lr "
    "/ warmup_steps at step 0 to peak_lr at step warmup_steps; then it falls linearly "
    "to 0 at step total_steps."))
def check_learning_rate(attempt: Attempt) -> str:
    """Check ``learning_rate(step, peak_lr, warmup_steps, total_steps)``: the learning
    rate of optimiser step ``step`` (0-based) under the schedule of
    :func:`twotower.training.optim.make_optimizer`."""
    schedules = ((1e-3, 100, 600), (2e-3, 10, 120), (0.5, 1, 10), (3e-4, 40, 50))
    cases = 0
    for peak, warmup, total in schedules:
        for step in sorted({0, 1, warmup // 2, warmup - 1, warmup, warmup + 1,
                            (warmup + total) // 2, total - 1, total}):
            got = attempt.call(step=step, peak_lr=peak, warmup_steps=warmup,
                               total_steps=total)
            attempt.one_number(got)
            attempt.close(got, reference_learning_rate(step, peak, warmup, total),
                          f"step={step}, peak_lr={peak}, warmup_steps={warmup}, "
                          f"total_steps={total}", atol=1e-12, rtol=1e-6)
            cases += 1
    return f"{cases} steps of {len(schedules)} schedules, warm-up and decay"


# --- training FLOPs per token ---------------------------------------------------------


@exercise(train_flops_per_token, hint=(
    "Hint: forward FLOPs per token = 2 W^2 (the K projections W -> D) + K * n_layers * "
    "(2*D*3D + 2*D*D + 2*2*D*F + 2*2*T*D) + 2 W^2 + 2 W V (head dense and decoder), "
    "with W = K * D; training is 3 x forward."))
def check_train_flops_per_token(attempt: Attempt) -> str:
    """Check ``train_flops_per_token(cfg, n_towers)`` for transformer towers against
    :func:`twotower.models.flops.train_flops_per_token` (every position has a
    target)."""
    configs = [ModelConfig(family="causal", n_layers=1, d_model=8, n_heads=2, d_ff=16,
                           vocab_size=50, max_len=4)]
    configs += [PRESETS[preset][family].model for preset in ("smoke", "small",
                                                             "paper_base")
                for family in ("causal", "mlm")]
    for cfg in configs:
        for n_towers in (1, 2):
            got = attempt.call(cfg=cfg, n_towers=n_towers)
            attempt.one_number(got)
            attempt.close(got, train_flops_per_token(cfg, n_towers),
                          f"n_layers={cfg.n_layers}, d_model={cfg.d_model}, d_ff="
                          f"{cfg.d_ff}, vocab_size={cfg.vocab_size}, max_len="
                          f"{cfg.max_len}, n_towers={n_towers}", atol=0, rtol=1e-9)
    return f"{len(configs)} configs, one and two towers"
