"""Exercise checks of chapter 4 (*Three kinds of tower*), and its leakage probe.

Introduced in chapter 4 (*Three kinds of tower*): the causal mask, BERT's masking
(:func:`masking_shares` reads its shares off a batch) and which input positions each
family's prediction can see (:func:`position_influence` measures it on a model).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from twotower.book.exercises.framework import Attempt, exercise
from twotower.config import FAMILIES, ModelConfig
from twotower.data.objectives import Objective
from twotower.data.tokenizer import SpecialIds
from twotower.models.layers import attention_by_hand
from twotower.models.tower_lm import SingleTowerLM


def position_influence(forward: Callable, ids, changed) -> np.ndarray:
    """How much each output position moves when one input token is replaced.

    Introduced in chapter 4 (*Three kinds of tower*) to check for leakage: row ``j +
    1`` of one batch is ``ids`` with token ``j`` replaced by ``changed[j]``, row 0 the
    original, and ``forward`` runs all of them at once.

    Args:
        forward: ``(B, T) ids -> (B, T, ...)`` float outputs (logits, or a hooked
            stream), computed without dropout (call ``model.eval()`` first).
        ids: ``(T,)`` token ids.
        changed: ``(T,)`` replacement ids, ``changed[j] != ids[j]``.

    Returns:
        ``(T, T)`` array: entry ``[i, j]`` is the largest absolute change of the output
        at position i when input token j is replaced (0 where i cannot see j).
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    T = ids.shape[0]
    batch = ids.repeat(T + 1, 1)  # (T+1, T)
    batch[torch.arange(1, T + 1), torch.arange(T)] = torch.as_tensor(changed).long()
    with torch.no_grad():
        out = forward(batch).float().reshape(T + 1, T, -1)  # (T+1, T, F)
    change = (out[1:] - out[:1]).abs().amax(dim=-1)  # (T changed j, T output i)
    return change.T.cpu().numpy()


def masking_shares(ids, inputs, targets, special) -> dict[str, float]:
    """The shares that define BERT's masking, read off one masked batch.

    Introduced in chapter 4 (*Three kinds of tower*).

    Args:
        ids: ``(B, T)`` original token ids.
        inputs: ``(B, T)`` ids the model is shown.
        targets: ``(B, T)`` ids to predict, -100 where there is nothing to predict.
        special: the tokenizer's :class:`~twotower.data.tokenizer.SpecialIds`.

    Returns:
        ``selected``: share of the non-special positions that have a target; and, as
        shares of the selected positions, ``[MASK]`` (shown as ``[MASK]``), ``random``
        (shown as another token) and ``kept`` (shown unchanged).
    """
    is_special = torch.isin(ids, torch.tensor(special.all))
    selected = targets != -100
    n_selected = max(int(selected.sum()), 1)
    masked = selected & (inputs == special.mask)
    kept = selected & (inputs == ids)
    return {"selected": float(selected.sum()) / float((~is_special).sum()),
            "[MASK]": float(masked.sum()) / n_selected,
            "random": float((selected & ~masked & ~kept).sum()) / n_selected,
            "kept": float(kept.sum()) / n_selected}


# --- causal mask ----------------------------------------------------------------------


def reference_causal_mask(T):
    """Reference of :func:`check_causal_mask`: where the package's attention weights
    are exactly 0."""
    g = torch.Generator().manual_seed(T)
    q, k, v = torch.randn(3, T, 4, generator=g)
    _, weights = attention_by_hand(q, k, v, causal=True)  # the package's mask at work
    return (weights == 0).numpy()


@exercise(reference_causal_mask, hint=(
    "Hint: position i may attend to itself and to the past (j <= i); the mask is True "
    "strictly above the diagonal (np.triu with k=1, or torch.triu(..., diagonal=1))."))
def check_causal_mask(attempt: Attempt) -> str:
    """Check ``causal_mask(T)``: a ``(T, T)`` bool array, True where query position i
    must NOT attend to key position j (the future, j > i)."""
    for T in (1, 2, 5, 16):
        got = attempt.call(T=T)
        attempt.close(np.asarray(got, dtype=float) if np.ndim(got) else got,
                      reference_causal_mask(T).astype(float), f"T={T}", atol=0)
    return "T = 1, 2, 5, 16: the future is masked, the present is not"


# --- BERT's masking -------------------------------------------------------------------


def reference_mask_tokens(ids, special, n_tokens, generator, mlm_probability=0.15):
    """Reference of :func:`check_mask_tokens`: the package's masked-LM
    :class:`~twotower.data.objectives.Objective`, as ``(inputs, targets)``."""
    objective = Objective(family="mlm", special_ids=special.all, pad_id=special.pad,
                          cls_id=special.cls, mask_id=special.mask, n_tokens=n_tokens,
                          mlm_probability=mlm_probability)
    batch = objective.make_batch(ids.numpy(), generator)
    return batch.input_ids, batch.targets


def _broken_rule(ids, inputs, targets, special, n_tokens) -> str:
    if tuple(inputs.shape) != tuple(ids.shape) or tuple(targets.shape) != \
            tuple(ids.shape):
        return f"returned shapes {tuple(inputs.shape)}, {tuple(targets.shape)}, " \
               f"expected two of {tuple(ids.shape)}"
    selected = targets != -100
    is_special = torch.isin(ids, torch.tensor(special.all))
    if (selected & is_special).any():
        return "a special position ([CLS], [SEP], PAD, [UNK], ...) was selected"
    if (targets[selected] != ids[selected]).any():
        return "a target is not the original token at its position"
    if (inputs[~selected] != ids[~selected]).any():
        return "an input changed at a position that has no target"
    changed = selected & (inputs != ids) & (inputs != special.mask)
    bad = inputs[changed]
    if torch.isin(bad, torch.tensor(special.all)).any() or (bad >= n_tokens).any():
        return "a random replacement is a special id or not below n_tokens"
    return ""


def _compare_shares(attempt: Attempt, case: dict, ids, inputs, targets) -> None:
    """Fail unless the reader's shares are the package's within 5 standard errors."""
    special, p = case["special"], case["mlm_probability"]
    reference = reference_mask_tokens(**{**case, "generator":
                                         torch.Generator().manual_seed(2)})
    mine = masking_shares(ids, inputs, targets, special)
    theirs = masking_shares(ids, *reference, special)
    eligible = float((~torch.isin(ids, torch.tensor(special.all))).sum())
    for key, share in theirs.items():  # n: positions each share is taken over
        n = eligible * (1.0 if key == "selected" else theirs["selected"])
        tolerance = 5 * np.sqrt(2 * max(share * (1 - share), 0.01) / n)
        if abs(mine[key] - share) > tolerance:
            attempt.fail(f"share '{key}' is {mine[key]:.3f}, the package's is "
                         f"{share:.3f} (mlm_probability={p}).")


def _mask_batch() -> tuple[torch.Tensor, SpecialIds]:
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
    g = torch.Generator().manual_seed(40)
    ids = torch.randint(5, 60, (256, 128), generator=g)
    ids[:, 0], ids[:, -20:], ids[::7, 40] = special.cls, special.pad, special.unk
    ids[:, 60] = special.sep
    return ids, special


@exercise(reference_mask_tokens, hint=(
    "Hint: select each non-special position with probability mlm_probability (draw "
    "from generator=...); targets = the token there, -100 elsewhere; of the selected, "
    "80% become special.mask, 10% a random non-special id below n_tokens, 10% stay as "
    "they are."))
def check_mask_tokens(attempt: Attempt) -> str:
    """Check ``mask_tokens(ids, special, n_tokens, generator, mlm_probability)``:
    BERT's masking, returning ``(inputs, targets)``.

    The reader's random draws differ from the package's, so the shares of selected,
    ``[MASK]``, random and kept positions are compared with those of the package's
    :class:`~twotower.data.objectives.Objective` within 5 standard errors, and the rules
    (specials never selected, targets = original tokens, nothing else changed,
    replacements never special) are checked exactly.
    """
    ids, special = _mask_batch()
    for p in (0.15, 0.4):
        case = dict(ids=ids.clone(), special=special, n_tokens=60,
                    generator=torch.Generator().manual_seed(1), mlm_probability=p)
        got = attempt.call(**case)
        again = attempt.call(**{**case, "ids": ids.clone(),
                                "generator": torch.Generator().manual_seed(1)})
        if not isinstance(got, tuple) or len(got) != 2:
            attempt.fail(f"return a pair (inputs, targets), got {type(got).__name__}.")
        inputs, targets = (torch.as_tensor(t) for t in got)
        problem = _broken_rule(ids, inputs, targets, special, 60)
        if problem:
            attempt.fail(f"{problem} (mlm_probability={p}).")
        if any(not torch.equal(torch.as_tensor(a), torch.as_tensor(b))
               for a, b in zip(got, again)):
            attempt.fail("two calls with generators of the same seed gave different "
                         "masks; draw every random number from the generator "
                         "argument.")
        _compare_shares(attempt, case, ids, inputs, targets)
    return "rules exact, shares 15% / 80-10-10 within 5 standard errors"


# --- what each prediction can see -----------------------------------------------------


def reference_predicted_influence(family, T):
    """Reference of :func:`check_predicted_influence`: measured with
    :func:`position_influence` on a small model of the family, not assumed."""
    cfg = ModelConfig(family=family, n_layers=2, d_model=16, n_heads=2,
                      d_ff=8 if family == "bilm" else 32, vocab_size=64, max_len=T,
                      dropout=0.0)
    torch.manual_seed(T)
    model = SingleTowerLM(cfg).eval()
    g = torch.Generator().manual_seed(T)
    ids = torch.randint(5, 64, (T,), generator=g)
    changed = 5 + (ids - 5 + torch.randint(1, 59, (T,), generator=g)) % 59
    influence = position_influence(model, ids, changed)
    return influence > 1e-6 * influence.max()


@exercise(reference_predicted_influence, hint=(
    "Hint: row i is the output position, column j the changed input. The causal "
    "prediction at i (of token i+1) reads tokens 0..i; the masked LM reads every "
    "position (the [MASK] in the input hides the target); the biLM's forward stream "
    "reads j < i and its backward stream j > i, never i itself."))
def check_predicted_influence(attempt: Attempt) -> str:
    """Check ``predicted_influence(family, T)``: a ``(T, T)`` bool array, True where
    the prediction at position i can change when the input token at position j
    changes, for ``family`` in causal, mlm, bilm. The answer is measured on small
    models of the package with :func:`position_influence`."""
    for family in FAMILIES:
        for T in (4, 9):
            got = attempt.call(family=family, T=T)
            attempt.close(np.asarray(got, dtype=float) if np.ndim(got) else got,
                          reference_predicted_influence(family, T).astype(float),
                          f"family={family!r}, T={T}", atol=0)
    return "causal, mlm and bilm, each measured on a small model"
