"""Named hook points: read or edit any activation without touching the model's code.

Introduced in chapter 5 (*Two towers, one head*).

Every interesting activation passes through a :class:`HookPoint`, an identity module
with a name such as ``"blocks.2.mlp_post"``. :meth:`HookedModule.hooks` attaches
functions to them for the duration of a ``with`` block (and always removes them, even
when the block raises); :meth:`HookedModule.run_with_cache` returns the named
activations of one forward pass. Activations are never stored on the module itself (the
authors' code patches the HuggingFace source to stash them on ``self``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from twotower.errors import TwotowerError

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity module that gives an activation a name.

    A hook function receives ``(activation, hook_point)``; if it returns a tensor, that
    tensor replaces the activation (this is how ablations are written).
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = ""  # filled in by HookedModule.name_hook_points()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True while at least one hook is attached (lets a layer skip costly
        extras)."""
        return bool(self._forward_hooks)


class HookedModule(nn.Module):
    """Mixin for models whose activations pass through :class:`HookPoint` modules."""

    def name_hook_points(self) -> None:
        """Give every :class:`HookPoint` its dotted module path as its name."""
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name

    def hook_points(self) -> dict[str, HookPoint]:
        """All hook points by name, in forward order."""
        return {m.name: m for m in self.modules() if isinstance(m, HookPoint)}

    def _resolve(self, names: "Iterable[str] | Callable[[str], bool] | None"
                 ) -> list[str]:
        points = self.hook_points()
        if names is None:
            return list(points)
        if callable(names):
            return [n for n in points if names(n)]
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in points]
        if unknown:
            example = ", ".join(list(points)[:4])
            raise TwotowerError(
                f"unknown hook point(s) {unknown}; list them with model.hook_points() "
                f"(e.g. {example})"
            )
        return names

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]
              ) -> Iterator["HookedModule"]:
        """Attach ``(name, fn)`` hooks for the duration of a ``with`` block.

        Example:
            >>> with model.hooks([("blocks.0.mlp_post", zero_neuron_7)]):
            ...     logits = model(input_ids)
        """
        points = self.hook_points()
        handles = []
        try:
            for name, fn in fwd_hooks:
                (name,) = self._resolve([name])
                point = points[name]
                handles.append(point.register_forward_hook(
                    lambda module, args, output, fn=fn: fn(output, module)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run_with_cache(
        self,
        input_ids: torch.Tensor,
        names: "Iterable[str] | Callable[[str], bool] | None" = None,
        **forward_kwargs,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass that also returns the named activations.

        Args:
            input_ids: token ids, shape ``(B, T)``.
            names: hook point names, a predicate on names, or None for all of them.

        Returns:
            ``(output, cache)``: the model output and ``{name: activation}`` with the
            activations detached. Tower activations have the tower as leading axis:
            ``(K, B, T, ...)``.
        """
        cache: dict[str, torch.Tensor] = {}

        def store(x: torch.Tensor, point: HookPoint) -> None:
            cache[point.name] = x.detach()

        with self.hooks([(name, store) for name in self._resolve(names)]):
            output = self(input_ids, **forward_kwargs)
        return output, cache
