"""The two-tower language model, its single-tower baseline, and the fused head.

Introduced in chapter 5 (*Two towers, one head*).

Data flow (K towers of width D, shared width W = K * D, as in the authors' code)::

    ids (B, T) -> token (+ position) embedding (B, T, W) -> LayerNorm -> dropout
      -> one linear projection per tower W -> D           (K, B, T, D)
      -> K identical towers                                (K, B, T, D)   hook tower_out
      -> concatenate the towers                            (B, T, W)
      -> fused head: LayerNorm -> dense -> GELU -> LayerNorm
      -> decoder tied to the token embedding + bias        (B, T, V)

:class:`TwoTowerLM` is K = 2; :class:`SingleTowerLM` is K = 1 with a width chosen by
:func:`matched_single_tower_config` so that both have the same number of parameters.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from twotower.config import ModelConfig
from twotower.data.objectives import IGNORE
from twotower.errors import TwotowerError
from twotower.models.hooks import HookedModule, HookPoint
from twotower.models.towers import StackedLinear, build_towers


CE_CHUNK_BYTES = 256 * 2**20  # fp32 working memory of one chunk of rows


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of half-precision ``logits (N, V)``, in fp32, chunk by chunk.

    ``F.cross_entropy(logits.float(), ...)`` keeps an fp32 copy of all N x V logits
    and its fp32 log-softmax for the backward pass (at the ``colab`` preset about 2 GB
    per head). Here only rows of one chunk are ever in fp32: the forward pass keeps the
    half-precision logits and each row's fp32 log-sum-exp; the backward pass rebuilds
    each chunk's softmax from them. The arithmetic per row is the same as autocast's
    (cast to fp32, log-softmax), so losses agree to fp32 rounding and gradients to the
    half-precision rounding of the gradient that autocast also applies.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, v = logits.shape
        chunk = max(1, CE_CHUNK_BYTES // (4 * v))
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        picked = torch.empty(n, dtype=torch.float32, device=logits.device)
        for s in range(0, n, chunk):
            part = logits[s:s + chunk].float()
            lse[s:s + chunk] = torch.logsumexp(part, -1)
            picked[s:s + chunk] = part.gather(1, targets[s:s + chunk, None])[:, 0]
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk = chunk
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        n, chunk = logits.shape[0], ctx.chunk
        out = torch.empty_like(logits)
        scale = grad.float() / n
        for s in range(0, n, chunk):
            p = (logits[s:s + chunk].float() - lse[s:s + chunk, None]).exp_()
            p.scatter_add_(1, targets[s:s + chunk, None],
                           torch.full_like(p[:, :1], -1.0))
            out[s:s + chunk] = p.mul_(scale)
        return out, None


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in fp32 of ``logits (N, V)`` against ``targets (N,)``.

    Half-precision logits go through :class:`_ChunkedCrossEntropy` (no full fp32 copy;
    under ``torch.compile`` the compiler fuses the cast itself, so plain
    ``F.cross_entropy`` there). A batch can hold no target at all (a masked LM's short
    window where no position was drawn, or under torchrun a process whose rows are all
    padding). Then the loss is 0 with zero gradients, still connected to the
    parameters so that DistributedDataParallel's gradient exchange happens;
    ``F.cross_entropy`` would return NaN and stop the run.
    """
    if targets.numel() == 0:
        return logits.float().sum() * 0.0
    if logits.dtype in (torch.float16, torch.bfloat16) and \
            not torch.compiler.is_compiling():
        return _ChunkedCrossEntropy.apply(logits, targets)
    return F.cross_entropy(logits.float(), targets)


def select_targets(hidden: torch.Tensor, targets: torch.Tensor,
                   positions: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``hidden (B, T, ...)`` and ``targets (B, T)`` that have a target.

    With ``positions`` (flat indices from :meth:`twotower.data.objectives.Batch.to`) the
    selection is an index, whose size the host already knows; without, a boolean mask
    (the same rows in the same order; on a GPU the host waits to learn their number).
    """
    if positions is None:
        keep = targets != IGNORE
        return hidden[keep], targets[keep]
    return (hidden.flatten(0, 1).index_select(0, positions),
            targets.reshape(-1).index_select(0, positions))


class FusedHead(nn.Module):
    """LayerNorm -> dense -> GELU -> LayerNorm -> tied decoder + bias.

    The decoder weight is the token embedding, passed in at call time so it is stored
    (and saved) once.
    """

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.norm_in = nn.LayerNorm(width)
        self.dense = nn.Linear(width, width)
        self.norm_out = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """``(N, W), decoder (V, W) -> logits (N, V)``."""
        h = self.norm_out(F.gelu(self.dense(self.norm_in(h))))
        return F.linear(h, decoder.to(h.dtype), self.bias.to(h.dtype))


class TowerLM(HookedModule):
    """K towers behind a shared embedding and a fused head (use the subclasses).

    Args:
        cfg: the model configuration; ``cfg.d_model`` is the width of ONE tower.
        n_towers: K.
    """

    n_towers: int = 2

    def __init__(self, cfg: ModelConfig, n_towers: int | None = None):
        super().__init__()
        self.cfg = cfg.validate()
        K = self.n_towers = n_towers or self.n_towers
        W = K * cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, W)
        self.pos_emb = None if cfg.family == "bilm" else nn.Embedding(cfg.max_len, W)
        self.emb_norm = nn.LayerNorm(W)
        self.tower_in = StackedLinear(K, W, cfg.d_model)  # one projection per tower
        self.towers = build_towers(K, cfg)
        self.tower_out = HookPoint()
        self.head = FusedHead(W, cfg.vocab_size)
        self._init_weights()
        self.name_hook_points()

    def _init_weights(self) -> None:
        std = self.cfg.init_std
        nn.init.normal_(self.tok_emb.weight, std=std)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=std)
        nn.init.normal_(self.tower_in.weight, std=std)
        nn.init.normal_(self.head.dense.weight, std=std)
        nn.init.zeros_(self.head.dense.bias)

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    def key_padding(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """``(B, T)`` True at padding, or None when attention need not know about it.

        Causal attention never looks right, and padding only ever sits at the right
        end of a window, so the causal family skips the mask (and keeps the fast path).
        On the CPU a window without padding skips it too; on a GPU, asking whether any
        padding is there would make the host wait, so the mask (all False or not) is
        always passed: the same result either way.
        """
        if self.cfg.family == "causal":
            return None
        pad = input_ids == self.cfg.pad_id
        if input_ids.device.type != "cpu":
            return pad
        return pad if bool(pad.any()) else None

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Tower outputs. ``(B, T) -> (K, B, T, D)``."""
        B, T = input_ids.shape
        if T > self.cfg.max_len:
            raise TwotowerError(f"input has {T} positions but max_len is "
                                f"{self.cfg.max_len}; cut the input or raise max_len")
        x = self.tok_emb(input_ids)  # (B, T, W)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[:T]
        x = F.dropout(self.emb_norm(x), self.cfg.dropout, self.training)
        x = (self.tower_in.forward_shared(x.view(B * T, -1))
             .view(self.n_towers, B, T, -1))
        return self.tower_out(self.towers(x, self.key_padding(input_ids)))

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """Concatenate the towers: ``(K, ..., D) -> (..., K * D)``."""
        return torch.cat(features.unbind(0), dim=-1)

    def head_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused head on concatenated features: ``(..., W) -> (..., V)``."""
        shape = fused.shape[:-1]
        logits = self.head(fused.reshape(-1, fused.shape[-1]), self.tok_emb.weight)
        return logits.view(*shape, logits.shape[-1])  # also for 0 positions

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Fused-head logits. ``(B, T) -> (B, T, V)``."""
        return self.head_logits(self.fuse(self.features(input_ids)))

    def loss(self, batch) -> torch.Tensor:
        """The mean cross-entropy (fp32) of a :class:`twotower.data.objectives.Batch`:
        the loss that :func:`twotower.training.trainer.train` takes (``model.loss``)."""
        return self.cross_entropy(batch.input_ids, batch.targets, batch.positions)

    def cross_entropy(self, input_ids: torch.Tensor, targets: torch.Tensor,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy (fp32) over positions whose target is not ``IGNORE``.

        :meth:`loss` on tensors rather than a batch. The head runs only at those
        positions: for the masked LM that is 15% of the work of :meth:`forward`.
        ``input_ids`` and ``targets`` are ``(B, T)``; ``positions``: see
        :func:`select_targets`.
        """
        fused = self.fuse(self.features(input_ids))  # (B, T, W)
        hidden, target = select_targets(fused, targets, positions)
        return mean_cross_entropy(self.head_logits(hidden), target)  # (N, V) logits

    def num_parameters(self) -> int:
        """Trainable parameters, the tied decoder counted once."""
        return sum(p.numel() for p in self.parameters())


class TwoTowerLM(TowerLM):
    """Two identical towers trained side by side through one fused head.

    Example:
        >>> cfg = ModelConfig(family="causal", n_layers=2, d_model=64, n_heads=2)
        >>> logits = TwoTowerLM(cfg)(torch.zeros(1, 8, dtype=torch.long))  # (1, 8, V)
    """

    n_towers = 2

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, 2)


class SingleTowerLM(TowerLM):
    """One tower of width ``cfg.d_model`` with the same embedding and head design.

    Use :func:`matched_single_tower_config` to get a width whose parameter count
    matches a :class:`TwoTowerLM`.
    """

    n_towers = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, 1)


def count_parameters(cfg: ModelConfig, n_towers: int) -> int:
    """Parameters of a K-tower model, counted on the meta device (no memory used)."""
    with torch.device("meta"):
        return TowerLM(cfg, n_towers).num_parameters()


def matched_single_tower_config(cfg: ModelConfig,
                                tolerance: float = 0.05) -> ModelConfig:
    """A single-tower config whose parameter count is closest to the two-tower one.

    The width moves in steps of ``n_heads`` (transformers) or 2 (biLM); ``d_ff`` keeps
    its ratio to ``d_model``.

    Raises:
        TwotowerError: when no width comes within ``tolerance`` (relative).
    """
    target = count_parameters(cfg, 2)
    step = 2 if cfg.family == "bilm" else cfg.n_heads
    ratio = cfg.d_ff / cfg.d_model

    def variant(width: int) -> ModelConfig:
        return dataclasses.replace(cfg, d_model=width,
                                   d_ff=max(1, round(ratio * width)))

    # The count grows with the width: bisect for the first width at or above target.
    lo, hi = 1, 4 * cfg.d_model // step + 1  # in units of step
    while lo < hi:
        mid = (lo + hi) // 2
        if count_parameters(variant(mid * step), 1) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [w * step for w in (lo - 1, lo) if w >= 1]
    best = min(candidates, key=lambda w: abs(count_parameters(variant(w), 1) - target))
    found = count_parameters(variant(best), 1)
    if abs(found - target) > tolerance * target:
        raise TwotowerError(f"no single-tower width matches {target:,} parameters "
                            f"within {tolerance:.0%} (closest {found:,}); "
                            "change d_model")
    return variant(best)
