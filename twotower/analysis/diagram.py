"""The architecture diagram: the two-tower language model drawn from the input tokens
up to the logits, in the book's colours.

Introduced in chapter 1 (*Is language divisible?*), and drawn again at a run's size in
chapter 5 (*Two towers, one head*).
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from twotower.analysis.plotting import SHARED_COLOR, TOWER_COLORS
from twotower.errors import TwotowerError

# where the towers stand (x) and how wide they are, in the diagram's units
X_A, X_B, X_MID, TOWER_WIDTH = 3.0, 7.0, 5.0, 3.0
PITCH, BLOCK_HEIGHT = 0.62, 0.4  # from one block of a tower to the next; one block


def architecture_diagram(n_layers: int = 3, ax: plt.Axes | None = None, *,
                         show_readouts: bool = False) -> plt.Axes:
    """Draw the two-tower language model from the input tokens up to the logits.

    Shared token embedding (width 2h), one projection per tower (2h to h), two towers
    of ``n_layers`` identical blocks, concatenation (2h), fused head (LayerNorm, dense,
    GELU, LayerNorm), and a decoder tied to the embedding. With
    ``show_readouts`` the per-tower readouts of phases 2 and 3 are drawn beside the
    towers.

    Args:
        n_layers: Blocks drawn in each tower (1 to 12).
        ax: Axes to draw on; a new figure is made when ``None``.
        show_readouts: Also draw the frozen-tower readouts trained after phase 1.

    Returns:
        The axes drawn on (its axis lines are hidden).
    """
    if not 1 <= n_layers <= 12:
        raise TwotowerError(f"n_layers must be between 1 and 12 to fit a page, got "
                            f"{n_layers}")
    if ax is None:
        height = 4.6 + 0.45 * n_layers
        _, ax = plt.subplots(figsize=(8.4 if show_readouts else 6.0, height))
    y_projection = _draw_inputs(ax)
    y_block = _draw_towers(ax, y_projection, n_layers)
    y_top = _draw_head(ax, y_block)
    left, right = 0.0, 10.0
    if show_readouts:
        left, right = -2.6, 12.6
        _draw_readouts(ax, y_block)
    ax.set_xlim(left, right)
    ax.set_ylim(0, y_top + 0.4)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def _towers() -> tuple[tuple[float, str, str], ...]:
    """``(x, colour, name)`` of tower A, then of tower B."""
    return (X_A, TOWER_COLORS["A"], "A"), (X_B, TOWER_COLORS["B"], "B")


def _box(ax, x, y, w, h, text, color, *, fontsize=8.5, alpha=0.22, bold=False):
    patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                           boxstyle="round,pad=0.02,rounding_size=0.12",
                           facecolor=mpl.colors.to_rgba(color, alpha), edgecolor=color,
                           linewidth=1.2)
    ax.add_patch(patch)
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize,
            fontweight="bold" if bold else "normal")


def _arrow(ax, start, end, *, color=SHARED_COLOR, style="-|>", dashed=False,
           connection="arc3"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9,
                                 color=color, linewidth=1.0, connectionstyle=connection,
                                 linestyle="--" if dashed else "-"))


def _draw_inputs(ax) -> float:
    """The tokens, the shared embedding and each tower's projection; returns the
    height of the projections."""
    y = 0.4
    ax.text(X_MID, y, "tokens  $x_1 \\dots x_T$", ha="center", va="center",
            fontsize=9)
    y += 1.0
    _box(ax, X_MID, y, 7.0, 0.6, "shared token embedding (V x 2h) + LayerNorm",
         SHARED_COLOR)
    _arrow(ax, (X_MID, 0.6), (X_MID, y - 0.3))
    y_embed = y
    y += 1.0
    for x, col, name in _towers():
        _box(ax, x, y, TOWER_WIDTH, 0.5, f"projection {name}: 2h → h", col)
        _arrow(ax, (x, y_embed + 0.3), (x, y - 0.25), color=col)
    return y


def _draw_towers(ax, y_projection: float, n_layers: int) -> float:
    """Each tower's blocks in a faint labelled frame; returns the top block's height."""
    y_first = y_projection + 0.55 + 0.55
    y_block = y_first + PITCH * (n_layers - 1)
    for x, col, name in _towers():
        # a faint frame around the blocks of one tower, labelled on its outer side
        frame = FancyBboxPatch((x - TOWER_WIDTH / 2, y_first - 0.4), TOWER_WIDTH,
                               y_block - y_first + 0.8,
                               boxstyle="round,pad=0.02,rounding_size=0.15",
                               facecolor=mpl.colors.to_rgba(col, 0.06), edgecolor=col,
                               linewidth=0.8, linestyle=":")
        ax.add_patch(frame)
        side = -1 if name == "A" else 1
        ax.text(x + side * (TOWER_WIDTH / 2 - 0.1), y_block + 0.62, f"tower {name}",
                ha="left" if name == "A" else "right", va="center", color=col,
                fontsize=10, fontweight="bold")
        previous_top = y_projection + 0.25
        for layer in range(n_layers):
            y_layer = y_first + PITCH * layer
            _box(ax, x, y_layer, TOWER_WIDTH - 0.5, BLOCK_HEIGHT, f"block {layer + 1}",
                 col, fontsize=8, alpha=0.35)
            _arrow(ax, (x, previous_top), (x, y_layer - BLOCK_HEIGHT / 2), color=col)
            previous_top = y_layer + BLOCK_HEIGHT / 2
    return y_block


def _draw_head(ax, y_block: float) -> float:
    """Concatenation, fused head, tied decoder and logits; returns the height of the
    logits."""
    y = y_block + 1.4
    y_concat = y
    _box(ax, X_MID, y, 5.0, 0.5, "concatenate  [A | B]  (2h)", SHARED_COLOR)
    for x, col, _ in _towers():
        _arrow(ax, (x, y_block + BLOCK_HEIGHT / 2),
               (X_MID + (x - X_MID) * 0.55, y - 0.25), color=col)
    y += 0.9
    _box(ax, X_MID, y, 7.6, 0.55, "fused head: LayerNorm → dense → GELU → LayerNorm",
         SHARED_COLOR)
    _arrow(ax, (X_MID, y_concat + 0.25), (X_MID, y - 0.28))
    y_head = y
    y += 0.9
    _box(ax, X_MID, y, 6.4, 0.5, "decoder = embedding weights (tied) + bias",
         SHARED_COLOR)
    _arrow(ax, (X_MID, y_head + 0.28), (X_MID, y - 0.25))
    y_dec = y
    y += 0.8
    ax.text(X_MID, y, "logits over the vocabulary (V)", ha="center", va="center",
            fontsize=9)
    _arrow(ax, (X_MID, y_dec + 0.25), (X_MID, y - 0.15))
    return y


def _draw_readouts(ax, y_block: float) -> None:
    """Phases 2 and 3: a fresh readout on ONE frozen tower's output, beside it."""
    for (x, col, name), phase in zip(_towers(), (2, 3)):
        side = -1 if name == "A" else 1
        xr = X_MID + side * 6.3
        _box(ax, xr, y_block, 2.3, 0.7, f"readout {name}\n(phase {phase})", col,
             fontsize=8, alpha=0.12)
        _arrow(ax, (x + side * TOWER_WIDTH / 2, y_block),
               (xr - side * 1.15, y_block), color=col, dashed=True)
