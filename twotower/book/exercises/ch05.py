"""Exercise checks of chapter 5 (*Two towers, one head*).

Introduced in chapter 5 (*Two towers, one head*): the parameters of the fused head, and
a hook that silences one tower.
"""

from __future__ import annotations

import numpy as np
import torch

from twotower.book.exercises.framework import Attempt, exercise
from twotower.config import ModelConfig
from twotower.models.tower_lm import FusedHead, TwoTowerLM

# --- parameters of the fused head -----------------------------------------------------


def reference_fused_head_parameters(width, vocab_size):
    """Reference of :func:`check_fused_head_parameters`: counted on the package's
    :class:`~twotower.models.tower_lm.FusedHead`."""
    with torch.device("meta"):  # counts shapes only: no memory for a large vocabulary
        head = FusedHead(width, vocab_size)
    return sum(p.numel() for p in head.parameters())


@exercise(reference_fused_head_parameters, hint=(
    "Hint: two LayerNorms of width W (a scale and a shift each), one dense W x W layer "
    "with its bias, and the decoder's bias of V; the decoder weight is the token "
    "embedding, counted there, not here."))
def check_fused_head_parameters(attempt: Attempt) -> str:
    """Check ``fused_head_parameters(width, vocab_size)``: the number of parameters of
    :class:`~twotower.models.tower_lm.FusedHead`, the tied decoder weight not counted
    (it is the embedding)."""
    sizes = ((8, 10), (128, 2048), (256, 8192), (768, 30528))
    for width, vocab in sizes:
        got = attempt.call(width=width, vocab_size=vocab)
        attempt.one_number(got)
        attempt.close(got, reference_fused_head_parameters(width, vocab),
                      f"width={width}, vocab_size={vocab}", atol=0, rtol=0)
    return f"{len(sizes)} sizes, up to BERT's vocabulary"


# --- a hook that silences one tower ---------------------------------------------------


def reference_zero_tower_hook(tower):
    """Reference of :func:`check_zero_tower_hook`: a hook that returns a copy of the
    ``(K, B, T, D)`` activation with one tower set to 0."""

    def hook(activation, point):
        activation = activation.clone()
        activation[tower] = 0.0  # tower-leading layout: (K, B, T, D)
        return activation

    return hook


def _hooked_logits(attempt: Attempt, model, ids, hook, tower: int) -> torch.Tensor:
    """The model's logits with ``hook`` on ``tower_out``; a crash of the hook fails."""
    if not callable(hook):
        attempt.fail(f"zero_tower_hook({tower}) returned {type(hook).__name__}, "
                     "expected a function.")
    try:
        with torch.no_grad(), model.hooks([("tower_out", hook)]):
            return model(ids)
    except Exception as error:
        attempt.fail(f"your hook raised {type(error).__name__}: {error}.")


@exercise(reference_zero_tower_hook, hint=(
    "Hint: tower activations have the tower as their FIRST axis (K, B, T, D); return a "
    "copy with activation[tower] set to 0 (a hook that returns a tensor replaces the "
    "activation)."))
def check_zero_tower_hook(attempt: Attempt) -> str:
    """Check ``zero_tower_hook(tower)``: a hook ``fn(activation, hook_point)`` that,
    attached to ``"tower_out"`` ``(K, B, T, D)``, zeroes the output of one tower."""
    for family in ("causal", "mlm"):
        cfg = ModelConfig(family=family, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                          vocab_size=64, max_len=12, dropout=0.0)
        torch.manual_seed(5)
        model = TwoTowerLM(cfg).eval()
        ids = torch.randint(5, 64, (3, 12), generator=torch.Generator().manual_seed(6))
        for tower in (0, 1):
            got = _hooked_logits(attempt, model, ids, attempt.call(tower=tower), tower)
            with torch.no_grad(), model.hooks([("tower_out",
                                                reference_zero_tower_hook(tower))]):
                expected = model(ids)
            attempt.close(got.numpy(), expected.numpy(),
                          f"family={family!r}, tower={tower}", atol=1e-5)
    return "tower 0 and tower 1, causal and masked LM"
