"""What each family is asked to predict: inputs and targets for a batch of windows.

Introduced in chapter 4 (*Three kinds of tower*).

- ``causal``: the next token (targets are the inputs shifted left by one).
- ``mlm``: BERT's masking. 15% of the non-special positions are selected; of those 80%
  become ``[MASK]``, 10% a random non-special token, 10% stay; the loss is on the
  selected positions only. Special ids are never selected and never inserted (the
  authors' code could insert them: bug 6 of chapter 11's audit).
- ``bilm``: the token itself (the forward stream sees the left context, the backward
  stream the right context; see :class:`twotower.models.towers.BiLSTMTowers`).

Padding and ``[CLS]`` are never targets in any family (bug 6: the authors' GPT and ELMo
losses included PAD targets). Masks come from a generator seeded by ``(seed, step)``, so
the batch of any step can be rebuilt exactly (resume) and the two readouts of one run
are scored on identical masks (bug 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100  # target id that takes no part in a loss (as in F.cross_entropy)


@dataclass(frozen=True)
class Batch:
    """Model inputs and targets, both ``(B, T)`` int64; ``IGNORE`` marks no target.

    ``window`` (B,) is the index of each row's window in the scored text, for batches
    built to be scored (:meth:`Objective.scoring_batches`); None for training batches.
    ``positions`` (N,) are the flat indices ``b * T + t`` of the target positions,
    found on the CPU by :meth:`to` before the batch moves: a GPU then never has to
    tell the host how many targets a batch holds (a boolean mask would make it wait).
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    window: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    def to(self, device: torch.device) -> "Batch":
        """The batch on ``device``, with :attr:`positions` found first on the CPU."""
        positions = self.positions
        if positions is None and self.targets.device.type == "cpu":
            positions = (self.targets.reshape(-1) != IGNORE).nonzero()[:, 0]
        nb = device.type == "cuda"
        return Batch(self.input_ids.to(device, non_blocking=nb),
                     self.targets.to(device, non_blocking=nb), self.window,
                     None if positions is None
                     else positions.to(device, non_blocking=nb))

    def rows(self, index) -> "Batch":
        """The same batch restricted to some rows (a slice or index)."""
        return Batch(self.input_ids[index], self.targets[index],
                     None if self.window is None else self.window[index])

    @property
    def n_targets(self) -> int:
        """Positions with a target (read from :attr:`positions` when known: no wait)."""
        if self.positions is not None:
            return int(self.positions.numel())
        return int((self.targets != IGNORE).sum())


@dataclass(frozen=True)
class Objective:
    """Turns windows into a :class:`Batch` for one family.

    Args:
        family: ``"causal"``, ``"mlm"`` or ``"bilm"``.
        special_ids: every special id (PAD, UNK, CLS, SEP, MASK).
        pad_id, cls_id, mask_id: the ids with a role in the objective.
        n_tokens: size of the real vocabulary (random replacements are drawn below it).
        mlm_probability: share of eligible positions selected for ``mlm``.
    """

    family: str
    special_ids: tuple[int, ...]
    pad_id: int
    cls_id: int
    mask_id: int
    n_tokens: int
    mlm_probability: float = 0.15

    def make_batch(self, windows: np.ndarray, generator: torch.Generator) -> Batch:
        """``windows (B, T)`` int array -> :class:`Batch` (masks drawn from
        ``generator``)."""
        ids = torch.as_tensor(np.asarray(windows, dtype=np.int64))
        if self.family == "causal":
            targets = torch.full_like(ids, IGNORE)
            targets[:, :-1] = ids[:, 1:]
            targets[targets == self.pad_id] = IGNORE
            return Batch(ids, targets)
        if self.family == "bilm":
            targets = ids.clone()
            targets[(ids == self.pad_id) | (ids == self.cls_id)] = IGNORE
            return Batch(ids, targets)
        return self._mask(ids, generator)

    def _mask(self, ids: torch.Tensor, generator: torch.Generator) -> Batch:
        special = torch.isin(ids, torch.tensor(self.special_ids))
        draw = torch.rand(ids.shape, generator=generator)
        selected = (draw < self.mlm_probability) & ~special
        targets = torch.where(selected, ids, torch.full_like(ids, IGNORE))
        # One more uniform draw splits the selected positions 80 / 10 / 10.
        how = torch.rand(ids.shape, generator=generator)
        inputs = ids.clone()
        inputs[selected & (how < 0.8)] = self.mask_id
        replace = selected & (how >= 0.8) & (how < 0.9)
        allowed = self.allowed_replacements()
        pick = torch.randint(len(allowed), ids.shape, generator=generator)
        inputs[replace] = allowed[pick[replace]]
        return Batch(inputs, targets)

    def scoring_batches(self, windows: np.ndarray, first_window: int,
                        generator: torch.Generator) -> list[Batch]:
        """The batches that score ``windows``: every target position exactly once.

        ``causal`` and ``bilm``: one batch, as in training. ``mlm``: ``round(1 /
        mlm_probability)`` passes over the same windows; each eligible position is
        masked in exactly one pass (drawn from ``generator``), always with ``[MASK]``.
        Training's 80/10/10 rule would leave 10% of the scored positions showing their
        own answer and 10% a random token, and one pass would score only ~15% of the
        positions; scoring every position from a masked input measures what each tower
        predicts from the context alone, on all the text.
        """
        ids = torch.as_tensor(np.asarray(windows, dtype=np.int64))
        window = torch.arange(first_window, first_window + len(ids))
        if self.family != "mlm":
            batch = self.make_batch(windows, generator)
            return [Batch(batch.input_ids, batch.targets, window)]
        n_passes = max(1, round(1 / self.mlm_probability))
        special = torch.isin(ids, torch.tensor(self.special_ids))
        which = torch.randint(n_passes, ids.shape, generator=generator)
        out = []
        for k in range(n_passes):
            selected = (which == k) & ~special
            if selected.any():
                inputs = torch.where(selected, torch.full_like(ids, self.mask_id), ids)
                targets = torch.where(selected, ids, torch.full_like(ids, IGNORE))
                out.append(Batch(inputs, targets, window))
        return out

    def allowed_replacements(self) -> torch.Tensor:
        """Ids a random replacement may take: the real vocabulary minus special ids."""
        ids = torch.arange(self.n_tokens)
        return ids[~torch.isin(ids, torch.tensor(self.special_ids))]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by ``(seed, step, stream)``: the masks of one step."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) * 16 + stream)
    return g
