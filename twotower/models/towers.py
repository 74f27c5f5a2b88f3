"""K identical towers run as one computation (K = 2 for the two-tower model).

Introduced in chapter 5 (*Two towers, one head*); speed measured in chapter 6.

The towers of a two-tower model have identical shapes, so their weights are stored
stacked along a leading tower axis and every matmul of both towers is one batched matmul
(``torch.baddbmm``) instead of two sequential stacks. Activations carry the tower as the
leading axis: ``(K, B, T, D)``. :meth:`StackedTransformer.reference_block` converts any
tower's layer to the readable :class:`twotower.models.layers.TransformerBlock`, and the
tests check that both agree.

The LSTM towers (family ``bilm``) use ``nn.LSTM`` per tower and direction (cuDNN on a
GPU); their backward stream really runs backwards in time (the authors' code multiplied
it by an all-zero matrix: bug 1 of chapter 11's audit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from twotower.config import ModelConfig
from twotower.models.hooks import HookPoint
from twotower.models.layers import TransformerBlock, attention_by_hand


class StackedLinear(nn.Module):
    """K independent linear maps, one per tower, applied in one batched matmul.

    ``weight`` is ``(K, D_in, D_out)`` (input-major, unlike ``nn.Linear``).
    """

    def __init__(self, n_stack: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_stack, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_stack, 1, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(K, N, D_in) -> (K, N, D_out)``."""
        return torch.baddbmm(self.bias.to(x.dtype), x, self.weight.to(x.dtype))

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same input for every tower: ``(N, D_in) -> (K, N, D_out)`` in one
        matmul."""
        K, D_in, D_out = self.weight.shape
        w = self.weight.transpose(0, 1).reshape(D_in, K * D_out)  # (D_in, K*D_out)
        y = (x @ w.to(x.dtype)).view(-1, K, D_out).transpose(0, 1)  # (K, N, D_out)
        return y + self.bias.to(y.dtype)


class StackedLayerNorm(nn.Module):
    """LayerNorm with its own scale and shift per tower. ``(K, N, D) -> (K, N, D)``."""

    def __init__(self, n_stack: int, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_stack, 1, d))
        self.bias = nn.Parameter(torch.zeros(n_stack, 1, d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return torch.addcmul(self.bias.to(y.dtype), y, self.weight.to(y.dtype))


class StackedBlock(nn.Module):
    """One pre-LN transformer block of every tower at once.

    Hook points (all with the tower as leading axis):
    ``attn_pattern`` ``(K, B, H, T, T)`` (computed only while hooked; read-only),
    ``attn_out`` ``(K, B, T, D)``, ``resid_mid`` ``(K, B, T, D)``,
    ``mlp_post`` ``(K, B, T, F)`` (the MLP neurons after GELU),
    ``resid_post`` ``(K, B, T, D)``.
    """

    def __init__(self, n_stack: int, cfg: ModelConfig, causal: bool):
        super().__init__()
        D, Fd = cfg.d_model, cfg.d_ff
        self.n_heads, self.causal, self.dropout = cfg.n_heads, causal, cfg.dropout
        self.norm1 = StackedLayerNorm(n_stack, D)
        self.qkv = StackedLinear(n_stack, D, 3 * D)
        self.attn_proj = StackedLinear(n_stack, D, D)
        self.norm2 = StackedLayerNorm(n_stack, D)
        self.mlp_in = StackedLinear(n_stack, D, Fd)
        self.mlp_out = StackedLinear(n_stack, Fd, D)
        self.attn_pattern = HookPoint()
        self.attn_out = HookPoint()
        self.resid_mid = HookPoint()
        self.mlp_post = HookPoint()
        self.resid_post = HookPoint()

    def forward(self, x: torch.Tensor,
                key_padding: torch.Tensor | None) -> torch.Tensor:
        """Args: x ``(K, B, T, D)``; key_padding ``(B, T)`` True at padding, or None."""
        K, B, T, D = x.shape
        H = self.n_heads
        qkv = self.qkv(self.norm1(x.view(K, B * T, D)))  # (K, B*T, 3D)
        q, k, v = qkv.view(K * B, T, 3, H, D // H).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (K*B, H, T, D/H)
        mask = padding = None
        if key_padding is not None:
            padding = key_padding.repeat(K, 1)  # (K*B, T)
            mask = ~padding[:, None, None, :]  # (K*B, 1, 1, T): True = may attend
            if self.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0)
        if self.attn_pattern.active:  # only for analysis: SDPA never forms the weights
            _, weights = attention_by_hand(q.float(), k.float(), v.float(), self.causal,
                                           padding)
            self.attn_pattern(weights.view(K, B, H, T, T))
        y = y.transpose(1, 2).reshape(K, B * T, D)
        y = F.dropout(self.attn_proj(y), self.dropout, self.training)
        x = self.resid_mid(x + self.attn_out(y.view(K, B, T, D)))
        h = F.gelu(self.mlp_in(self.norm2(x.view(K, B * T, D))))  # (K, B*T, F)
        h = self.mlp_post(h.view(K, B, T, -1)).view(K, B * T, -1)
        y = F.dropout(self.mlp_out(h), self.dropout, self.training)
        return self.resid_post(x + y.view(K, B, T, D))


class StackedTransformer(nn.Module):
    """``n_layers`` stacked blocks for K towers (causal for ``causal``, else
    bidirectional)."""

    def __init__(self, n_stack: int, cfg: ModelConfig):
        super().__init__()
        self.causal = cfg.family == "causal"
        self.cfg = cfg
        self.blocks = nn.ModuleList(
            StackedBlock(n_stack, cfg, self.causal) for _ in range(cfg.n_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for block in self.blocks:
            for lin in (block.qkv, block.mlp_in):
                nn.init.normal_(lin.weight, std=std)
            for lin in (block.attn_proj, block.mlp_out):  # GPT-2's residual scaling
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.cfg.n_layers))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None):
        """``(K, B, T, D) -> (K, B, T, D)``."""
        for block in self.blocks:
            x = block(x, key_padding)
        return x

    @torch.no_grad()
    def reference_block(self, tower: int, layer: int) -> TransformerBlock:
        """Tower ``tower``'s layer ``layer`` as a readable :class:`TransformerBlock`."""
        c = self.cfg
        ref = TransformerBlock(c.d_model, c.n_heads, c.d_ff, self.causal, c.dropout)
        s = self.blocks[layer]
        pairs = [(ref.ln1, s.norm1), (ref.ln2, s.norm2)]
        for ln, stacked in pairs:
            ln.weight.copy_(stacked.weight[tower, 0])
            ln.bias.copy_(stacked.bias[tower, 0])
        pairs = [(ref.attn.qkv, s.qkv), (ref.attn.out, s.attn_proj),
                 (ref.mlp.up, s.mlp_in), (ref.mlp.down, s.mlp_out)]
        for lin, stacked in pairs:
            lin.weight.copy_(stacked.weight[tower].T)
            lin.bias.copy_(stacked.bias[tower, 0])
        return ref.to(s.qkv.weight.device)


class BiLSTMTowers(nn.Module):
    """Per tower a forward and a backward LSTM stack (ELMo-style), K towers.

    The forward stream at position t has read tokens ``< t`` and the backward stream
    tokens ``> t``: the target at t is the token itself, so neither may see it.
    Hook points: ``fwd_out`` and ``bwd_out`` ``(K, B, T, D/2)``, already shifted.
    """

    def __init__(self, n_stack: int, cfg: ModelConfig):
        super().__init__()
        D = cfg.d_model

        # ELMo's LSTMP: hidden d_ff projected to D/2; with d_ff == D/2 no projection is
        # needed, and CPUs then get oneDNN's much faster LSTM kernel.
        proj = D // 2 if cfg.d_ff != D // 2 else 0

        def lstm() -> nn.LSTM:
            return nn.LSTM(D, cfg.d_ff, cfg.n_layers, batch_first=True,
                           dropout=cfg.dropout if cfg.n_layers > 1 else 0.0,
                           proj_size=proj)

        self.fwd = nn.ModuleList(lstm() for _ in range(n_stack))
        self.bwd = nn.ModuleList(lstm() for _ in range(n_stack))
        self.dropout = cfg.dropout
        self.fwd_out = HookPoint()
        self.bwd_out = HookPoint()

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None):
        """``(K, B, T, D) -> (K, B, T, D)``: ``[forward half, backward half]``."""
        K, B, T, D = x.shape
        lengths = torch.full((B,), T, device=x.device)
        if key_padding is not None:
            lengths = (~key_padding).sum(1)
        # Reverse each sequence within its own length, so padding (always at the end)
        # comes after the real tokens in the backward stream too and never leaks in.
        t = torch.arange(T, device=x.device)
        rev = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
        rev_idx = rev[:, :, None].expand(B, T, D // 2)
        fwd, bwd = [], []
        for k in range(K):
            f, _ = self.fwd[k](x[k])  # (B, T, D/2); f[t] has read x[<= t]
            r, _ = self.bwd[k](x[k].gather(1, rev[:, :, None].expand(B, T, D)))
            b = r.gather(1, rev_idx)  # back in time order; b[t] has read x[>= t]
            fwd.append(F.pad(f[:, :-1], (0, 0, 1, 0)))  # position t sees x[< t]
            bwd.append(F.pad(b[:, 1:], (0, 0, 0, 1)))  # position t sees x[> t]
        f = torch.stack(fwd)
        b = torch.stack(bwd) * (t[None, None, :, None] + 1
                                < lengths[None, :, None, None])
        f, b = self.fwd_out(f), self.bwd_out(b)
        return F.dropout(torch.cat([f, b], dim=-1), self.dropout, self.training)


def build_towers(n_stack: int, cfg: ModelConfig) -> nn.Module:
    """The tower stack for ``cfg.family``."""
    if cfg.family == "bilm":
        return BiLSTMTowers(n_stack, cfg)
    return StackedTransformer(n_stack, cfg)
