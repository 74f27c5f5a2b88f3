"""Readable reference layers: one tower's attention, MLP and transformer block.

Introduced in chapter 4 (*Three kinds of tower*).

These are the versions to read. The model itself runs the two towers together with the
stacked layers of :mod:`twotower.models.towers` (one batched matmul for both towers
instead of two sequential stacks); ``tests/test_towers.py`` checks that both compute the
same thing, and :func:`twotower.models.towers.StackedTransformer.reference_block` turns
any tower's layer back into a :class:`TransformerBlock`.

Shapes use fixed letters: B batch, T time, D width of one tower, H heads, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``F.scaled_dot_product_attention``.

    Args:
        d_model: width D.
        n_heads: heads H; each head has D / H dimensions.
        causal: position t attends only to positions <= t.
        dropout: dropout on the attention weights (training only) and the output.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # fused Q, K, V projection
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None):
        """Args: x ``(B, T, D)``; key_padding ``(B, T)`` True where a key is padding.

        Returns: ``(B, T, D)``.
        """
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=self.causal,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)
        return F.dropout(self.out(y), self.dropout, self.training)


def attention_by_hand(q, k, v, causal: bool, key_padding: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d)) V written out, for the book and for tests.

    Args: q, k, v ``(B, ..., T, d)``; key_padding ``(B, T)`` True where a key is
    padding.

    Returns: ``(output (B, ..., T, d), weights (B, ..., T, T))``.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, T)
    if causal:
        T = q.shape[-2]
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if key_padding is not None:
        shape = (key_padding.shape[0],) + (1,) * (scores.dim() - 2) + scores.shape[-1:]
        scores = scores.masked_fill(key_padding.view(shape), float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return F.dropout(self.down(F.gelu(self.up(x))), self.dropout, self.training)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, causal: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, causal, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff, dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None):
        x = x + self.attn(self.ln1(x), key_padding)  # (B, T, D)
        return x + self.mlp(self.ln2(x))
