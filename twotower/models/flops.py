"""Analytic FLOPs of the models, and what a preset costs on a given machine.

Introduced in chapter 6 (*Training on a GPU (or not)*).

Counts multiply-adds as 2 FLOPs, a training step as 3 forward passes (the backward pass
costs twice the forward), and attention as in the PaLM paper (full ``T x T`` scores, no
discount for the causal mask). Embedding lookups, norms and activations are not counted:
they are memory-bound and small next to the matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

from twotower.config import ModelConfig, RunConfig


def forward_flops_per_token(cfg: ModelConfig, n_towers: int = 2,
                            target_fraction: float = 1.0) -> float:
    """Forward FLOPs per input token of a K-tower model.

    Args:
        cfg: model configuration (``d_model`` is one tower's width).
        n_towers: K.
        target_fraction: share of positions where the head runs (0.15 for ``mlm``,
            whose loss only needs the masked positions).
    """
    K, D, Fd, V, T = n_towers, cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.max_len
    W = K * D
    flops = 2 * W * W  # one W -> D projection per tower
    if cfg.family == "bilm":
        P = D // 2  # LSTM output width (hidden d_ff projected to D/2, or d_ff = D/2)
        proj = 2 * Fd * P if Fd != P else 0
        first = 2 * 4 * Fd * (D + P) + proj  # gates read the input and the last output
        later = 2 * 4 * Fd * (P + P) + proj
        flops += K * 2 * (first + later * (cfg.n_layers - 1))  # both directions
    else:
        per_layer = 2 * D * 3 * D + 2 * D * D + 2 * 2 * D * Fd + 2 * 2 * T * D
        flops += K * cfg.n_layers * per_layer
    head = 2 * W * W + 2 * W * V  # dense + tied decoder
    return flops + target_fraction * head


def train_flops_per_token(cfg: ModelConfig, n_towers: int = 2,
                          target_fraction: float = 1.0) -> float:
    """Training FLOPs per input token: forward + backward = 3 x forward."""
    return 3 * forward_flops_per_token(cfg, n_towers, target_fraction)


def target_fraction(cfg: RunConfig) -> float:
    """Share of positions with a target: ~the mask rate for ``mlm``, ~1 otherwise."""
    return cfg.train.mlm_probability if cfg.model.family == "mlm" else 1.0


@dataclass(frozen=True)
class PresetCost:
    """FLOPs of a run and its time at a sustained FLOP rate."""

    preset: str
    family: str
    train_tokens: float  # tokens processed by phase 1 (steps x batch x window)
    readout_tokens: float
    total_flops: float  # phase 1 + phases 2/3
    hours: float  # at the given sustained FLOP/s


def preset_cost(cfg: RunConfig, sustained_flops: float) -> PresetCost:
    """What ``cfg`` costs at ``sustained_flops`` FLOP/s (e.g. a GPU's peak x its MFU).

    Phases 2/3 run the frozen towers forward only and train two readouts; counted as
    one tower forward pass plus training two heads of width D.
    """
    frac = target_fraction(cfg)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.model.max_len
    readout_tokens = cfg.readout.steps * cfg.readout.batch_size * cfg.model.max_len
    m = cfg.model
    readout_head = 2 * 3 * frac * (2 * m.d_model * m.d_model
                                   + 2 * m.d_model * m.vocab_size)
    readout_per_token = forward_flops_per_token(m, 2, 0.0) + 2 * readout_head
    total = (tokens * train_flops_per_token(m, 2, frac)
             + readout_tokens * readout_per_token)
    return PresetCost(cfg.preset, m.family, tokens, readout_tokens, total,
                      total / sustained_flops / 3600)
