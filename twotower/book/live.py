"""A live loss plot: the training loop's callback that redraws the curves as it goes.

Introduced in chapter 4 (*Three kinds of tower*); every chapter that trains passes a
:class:`LiveLossPlot` to the training loop (``callbacks=[plot]``) or to
:func:`twotower.experiments.store.ensure`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from twotower.analysis import alt_text, plotting
from twotower.book.setup import in_ipython

_PHASE_TOWER = {"2": "A", "phase2": "A", "readout_a": "A", "readout-a": "A", "a": "A",
                "3": "B", "phase3": "B", "readout_b": "B", "readout-b": "B", "b": "B"}


def _phase_color(phase: Any, seen: list[str]) -> str:
    key = str(phase).lower().replace(" ", "")
    if key in _PHASE_TOWER:
        return plotting.TOWER_COLORS[_PHASE_TOWER[key]]
    if key in ("1", "phase1", "joint"):
        return "#333333"
    others = [c for c in plotting.PALETTE[2:]]
    return others[seen.index(str(phase)) % len(others)]


class LiveLossPlot:
    """Training callback that redraws the loss curves while a model trains.

    The training loop calls :meth:`on_step_end` after every optimiser step,
    :meth:`on_eval` after every validation pass and :meth:`on_train_end` once at the
    end. In a Jupyter kernel (Colab included) the figure is redrawn in place every
    ``every`` steps through a display handle; under papermill the last drawing is what
    the executed notebook keeps. Outside IPython the callback only records the history.

    Args:
        every: Redraw after this many steps (and after every evaluation).
        title: Figure title.
        smoothing: Weight of the exponential moving average drawn over the raw
            training loss (0 draws the raw loss only).
        log_y: Logarithmic loss axis.

    Example:
        >>> plot = LiveLossPlot(every=50)
        >>> plot.on_step_end({"phase": "joint", "step": 1, "steps": 10, "loss": 9.0,
        ...                   "lr": 1e-3})
        >>> len(plot.history["joint"]["step"])
        1
    """

    def __init__(self, every: int = 25, *, title: str | None = None,
                 smoothing: float = 0.9, log_y: bool = False) -> None:
        self.every = max(1, int(every))
        self.title = title
        self.smoothing = float(smoothing)
        self.log_y = log_y
        self.history: dict[str, dict[str, list[float]]] = {}
        self.steps: dict[str, int] = {}
        self._phases: list[str] = []
        self._handle = None
        self._live = in_ipython()

    def _phase(self, phase: Any) -> dict[str, list[float]]:
        name = str(phase)
        if name not in self.history:
            self._phases.append(name)
            self.history[name] = {"step": [], "loss": [], "lr": [], "val_step": [],
                                  "val_loss": [], "val_ppl": []}
        return self.history[name]

    def on_step_end(self, state: dict[str, Any]) -> None:
        """Record one training step: ``phase, step, steps, loss, lr``."""
        record = self._phase(state["phase"])
        record["step"].append(int(state["step"]))
        record["loss"].append(float(state["loss"]))
        record["lr"].append(float(state.get("lr", float("nan"))))
        self.steps[str(state["phase"])] = int(state.get("steps", state["step"]))
        step = int(state["step"])
        if step % self.every == 0 or step == self.steps[str(state["phase"])]:
            self.redraw()

    def on_eval(self, state: dict[str, Any]) -> None:
        """Record one validation pass: ``phase, step, val_loss, val_ppl``."""
        record = self._phase(state["phase"])
        record["val_step"].append(int(state["step"]))
        record["val_loss"].append(float(state["val_loss"]))
        record["val_ppl"].append(float(state.get("val_ppl", np.exp(state["val_loss"]))))
        self.redraw()

    def on_train_end(self, state: dict[str, Any] | None = None) -> None:
        """Draw the final curves once more (the version a saved notebook keeps)."""
        self.redraw()

    def figure(self):
        """The current curves as a new :class:`matplotlib.figure.Figure`."""
        fig = Figure(figsize=(6.2, 3.6), layout="constrained")
        ax_loss, ax_lr = fig.subplots(1, 2, width_ratios=(2.2, 1))
        for name in self._phases:
            record = self.history[name]
            color = _phase_color(name, self._phases)
            if record["step"]:
                loss = np.asarray(record["loss"])
                ax_loss.plot(record["step"], loss, color=color, alpha=0.3,
                             linewidth=0.8)
                if self.smoothing > 0 and loss.size > 1:
                    ax_loss.plot(record["step"], _ema(loss, self.smoothing),
                                 color=color, label=f"{name} train")
                else:
                    ax_loss.lines[-1].set_label(f"{name} train")
                ax_lr.plot(record["step"], record["lr"], color=color, label=name)
            if record["val_step"]:
                ax_loss.plot(record["val_step"], record["val_loss"], "o--", color=color,
                             markersize=4, label=f"{name} val "
                             f"(ppl {record['val_ppl'][-1]:.1f})")
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss (nats)")
        if self.log_y:
            ax_loss.set_yscale("log")
        ax_lr.set_xlabel("step")
        ax_lr.set_ylabel("learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if self._phases:  # below the panels, never over the curves
            handles, labels = ax_loss.get_legend_handles_labels()
            fig.legend(handles, labels, loc="outside lower center", fontsize=8,
                       ncols=min(len(labels), 3))
        if self.title:
            fig.suptitle(self.title)
        return fig

    def redraw(self) -> None:
        """Redraw in place in a notebook; do nothing elsewhere."""
        if not self._live or not self._phases:
            return
        from IPython.display import Image, display

        buffer = io.BytesIO()
        figure = self.figure()
        figure.savefig(buffer, format="png", dpi=100)
        image = Image(data=buffer.getvalue(), format="png")
        # the alt text travels in the output's metadata, as for every figure of the book
        metadata = {"image/png": {"alt": alt_text.figure_alt_text(figure)}}
        if self._handle is None:
            self._handle = display(image, display_id=True, metadata=metadata)
        else:
            self._handle.update(image, metadata=metadata)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(values, dtype=float)
    running = values[0]
    for i, value in enumerate(values):
        running = weight * running + (1 - weight) * value
        out[i] = running
    return out
