"""Helpers for the chapters: where am I running, one-line set-up, a live loss plot.

Introduced in chapter 1 (*Is language divisible?*); every chapter starts with
:func:`setup`, and the chapters that train pass a :class:`LiveLossPlot` to the training
loop as a callback.
"""

from __future__ import annotations

import io
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from twotower.analysis import plotting
from twotower.errors import TwotowerError

if TYPE_CHECKING:
    import torch


def in_colab() -> bool:
    """True inside Google Colab (its ``google.colab`` module is already imported)."""
    return "google.colab" in sys.modules


def in_ipython() -> bool:
    """True inside a Jupyter/IPython kernel that can display rich output."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def setup(preset: str = "auto", seed: int = 0, device: str = "auto", *,
          data: Sequence[str] = (), quiet: bool = False) -> tuple[str, torch.device]:
    """Pick the preset and the device, seed everything, style figures, check the data.

    Every chapter's first code cell calls this, so a chapter that cannot run stops here,
    in seconds, before it trains anything.

    Args:
        preset: a preset name, or ``"auto"``: ``"colab"`` on a CUDA GPU, ``"small"``
            elsewhere (see :func:`choose_preset`).
        seed: Seed of Python's, NumPy's and torch's random generators.
        device: ``"auto"`` (CUDA, else Apple MPS, else CPU), or a torch device name such
            as ``"cpu"`` or ``"cuda:0"``.
        data: corpora the chapter reads besides its preset's own (e.g.
            ``("ud-english-ewt",)``); see :func:`check_data`.
        quiet: Do not print the summary (what runs where, and the data).

    Returns:
        The preset's name and the torch device the chapter should use.

    Raises:
        TwotowerError: an unknown preset or device, or a missing or damaged corpus.
    """
    import torch

    from twotower.training.runtime import resolve_device, seed_everything

    chosen = resolve_device(device)
    name = choose_preset(preset, chosen)
    found = check_data(name, data)
    seed_everything(int(seed))
    plotting.setup()
    if not quiet:
        from twotower import __version__
        where = "Colab" if in_colab() else "local"
        how = f" (auto: {'GPU' if name == GPU_PRESET else 'no CUDA GPU'})" \
            if preset == "auto" else ""
        print(f"twotower {__version__} | torch {torch.__version__} | {where}, "
              f"{torch.get_num_threads()} CPU threads")
        print(f"device {chosen} | preset {name}{how} | seed {seed}")
        print(textwrap.fill("data: " + "; ".join(found), 76, subsequent_indent="  "))
    return name, chosen


GPU_PRESET, CPU_PRESET = "colab", "small"  # what PRESET = "auto" becomes


def choose_preset(preset: str, device: torch.device) -> str:
    """``"auto"`` -> :data:`GPU_PRESET` on a CUDA device, else :data:`CPU_PRESET`; any
    other name is returned once it is known to be a preset.

    Raises:
        TwotowerError: for an unknown preset.
    """
    from twotower.config import PRESETS

    if preset == "auto":
        return GPU_PRESET if device.type == "cuda" else CPU_PRESET
    if preset not in PRESETS:
        raise TwotowerError(f"unknown preset {preset!r}; choose auto or one of "
                            f"{', '.join(PRESETS)}")
    return preset


def check_data(preset: str, extra: Sequence[str] = ()) -> list[str]:
    """Check the corpora a chapter needs: its preset's corpus and ``extra``.

    A bundled corpus is checked against its SHA-256 sums (milliseconds). A corpus that
    only the Hub has (WikiText-103, the ``colab`` preset's) needs the Hub; when it does
    not answer, the chapter runs on the bundled WikiText-2 and says so, since every
    number then differs from an online run.

    Returns:
        One phrase per corpus saying where it comes from.

    Raises:
        TwotowerError: naming a missing or damaged file and the fix.
    """
    from twotower.data import sources
    from twotower.config import get_preset
    from twotower.data.corpus import FALLBACK
    from twotower.data.tokenizer import hub_is_reachable

    found = []
    for name in dict.fromkeys([get_preset(preset).data.corpus, *extra]):
        if name in sources.CORPORA:
            sources.check(name)
            found.append(f"{name} (bundled, checked)")
        elif hub_is_reachable():
            found.append(f"{name} (Hugging Face Hub)")
        else:
            sources.check(FALLBACK)
            found.append(f"{name} needs the Hugging Face Hub, which does not answer: "
                         f"the bundled {FALLBACK} is used instead, so the numbers "
                         "differ from an online run")
    return found


DRIVE_RUNS = "/content/drive/MyDrive/twotower/runs"


def runs_on_drive(runs_dir: str, folder: str = DRIVE_RUNS) -> str:
    """Keep the runs on Google Drive: in Colab, mount Drive (Colab asks for permission)
    and return ``folder``; anywhere else, say so and return ``runs_dir`` unchanged.

    Colab's own disk is wiped when a session ends; runs on Drive are found again by the
    next session and by later chapters (the run cache checks them before training).
    """
    if not in_colab():
        print(f"not in Colab: runs stay in {runs_dir}")
        return runs_dir
    import os

    from google.colab import drive

    drive.mount("/content/drive")
    os.makedirs(folder, exist_ok=True)
    print(f"runs are kept on your Google Drive, in {folder}")
    return folder


# --- live loss plot -------------------------------------------------------------------

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
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 3.2), layout="constrained")
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
        if self._phases:
            ax_loss.legend(fontsize=8)
        if self.title:
            fig.suptitle(self.title)
        return fig

    def redraw(self) -> None:
        """Redraw in place in a notebook; do nothing elsewhere."""
        if not self._live or not self._phases:
            return
        from IPython.display import Image, display

        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=100)
        image = Image(data=buffer.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(values, dtype=float)
    running = values[0]
    for i, value in enumerate(values):
        running = weight * running + (1 - weight) * value
        out[i] = running
    return out


# --- shared runs ----------------------------------------------------------------------


def run_path(runs_dir: str, preset: str, family: str, seed: int, variant: str = "") -> str:
    """Where the book keeps the run of ``(preset, family, seed[, variant])``.

    One naming scheme for every chapter, so a later chapter finds what an earlier one
    trained instead of training it again.
    """
    import os
    name = f"{preset}-{family}-seed{seed}" + (f"-{variant}" if variant else "")
    return os.path.join(runs_dir, name)


def ensure_run(runs_dir: str, preset: str, family: str = "causal", seed: int = 0, *,
               device: str = "auto", baseline: bool = False, callbacks=(),
               progress: bool = True):
    """The finished run of ``(preset, family, seed)``: loaded if it exists, else trained
    (or resumed) with :func:`twotower.experiments.pipeline.run` first.

    Returns:
        :class:`twotower.experiments.pipeline.LoadedRun`.
    """
    import dataclasses
    import os

    from twotower.config import get_preset
    from twotower.experiments.controls import ensure_scored
    from twotower.experiments.pipeline import load_run, run

    path = run_path(runs_dir, preset, family, seed)
    if not os.path.exists(os.path.join(path, "results.json")):
        cfg = get_preset(preset, family).with_seed(seed)
        cfg = dataclasses.replace(
            cfg, baseline=baseline or cfg.baseline,
            train=dataclasses.replace(cfg.train, device=device),
            readout=dataclasses.replace(cfg.readout, device=device))
        run(cfg, path, callbacks=callbacks, progress=progress)
    ensure_scored(path)
    return load_run(path)


# --- reading a run (chapters 6 to 8) --------------------------------------------------


def load_metrics(run_dir):
    """The ``metrics.jsonl`` of a run directory as one table (introduced in chapter 6).

    Every logged training step and every validation pass of every phase is one row;
    a line cut short by a crash is skipped.

    Args:
        run_dir: a run directory written by :func:`twotower.experiments.pipeline.run` (or the
            ``metrics.jsonl`` file itself).

    Returns:
        DataFrame with columns ``phase``, ``step`` and whatever was logged: ``loss``,
        ``lr``, ``tokens_per_s`` on training rows; ``val_loss``, ``val_ppl``,
        ``val_tokens`` on validation rows (NaN elsewhere).

    Raises:
        TwotowerError: when there is no ``metrics.jsonl``.
    """
    import json
    from pathlib import Path

    import pandas as pd

    from twotower.errors import TwotowerError

    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise TwotowerError(f"no metrics log at {path}; train the run first")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return pd.DataFrame(rows).sort_values(["phase", "step"], kind="stable",
                                          ignore_index=True)


def bootstrap_means(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                    chunk: int = 4_000_000):
    """Means of paired measurements with percentile bootstrap intervals (chapter 7).

    All rows are resampled with the SAME positions in each bootstrap draw, so the
    intervals of differences between rows stay paired.

    Args:
        values: ``(M, N)`` (or ``(N,)``) numbers, one row per measurement and one
            column per position, e.g. the losses of the joint head and both readouts.
        n_boot: bootstrap draws.
        seed: seed of the resampling.
        level: coverage of the interval.
        chunk: at most this many resampled entries in memory at once.

    Returns:
        ``(mean, low, high)``, each ``(M,)`` (or a float for a 1-D input).
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    values = np.atleast_2d(values)
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    draws = []
    per_chunk = max(1, chunk // max(n, 1))
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, n_boot - start), n))
        draws.append(values[:, idx].mean(-1))  # (M, draws)
    draws = np.concatenate(draws, axis=1)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
    mean = values.mean(1)
    if flat:
        return float(mean[0]), float(low[0]), float(high[0])
    return mean, low, high


def lookup_token(table, text: str, limit: int = 10):
    """Rows of a preference table for one token string (chapter 8).

    Exact match first (WordPiece is uncased here, so the text is lower-cased); when
    nothing matches, up to ``limit`` tokens that start with the text, most frequent
    first.

    Args:
        table: a :func:`twotower.analysis.preference.token_preference` table with a ``token``
            column.
        text: what the reader typed.
        limit: most rows returned for a prefix search.

    Returns:
        The matching rows (possibly none).
    """
    text = str(text).strip()
    tokens = table["token"].astype(str)
    exact = table[(tokens == text) | (tokens == text.lower())]
    if len(exact) or not text:
        return exact
    prefix = table[tokens.str.startswith(text.lower())]
    return prefix.sort_values("count", ascending=False).head(limit)


def token_explorer(table, default: str = "the"):
    """A text box that shows a token's row of a preference table (chapter 8).

    In a live kernel every edit of the box looks the token up with
    :func:`lookup_token`. A static page (the HTML book) keeps the widget as it was
    when the notebook ran, showing ``default``: typing there cannot run Python.

    Args:
        table: a :func:`twotower.analysis.preference.token_preference` table.
        default: token shown before anything is typed.

    Returns:
        An ``ipywidgets.VBox`` to display (the last expression of a cell).
    """
    import ipywidgets as widgets
    from IPython.display import display

    box = widgets.Text(value=default, description="token",
                       placeholder="a word or word piece, e.g. the or ##s")
    out = widgets.Output()

    def show(change=None) -> None:
        out.clear_output(wait=True)
        with out:
            rows = lookup_token(table, box.value)
            if len(rows):
                display(rows.round(3))
            else:
                print(f"{box.value!r} is not a scored token of this run")

    box.observe(show, names="value")
    show()
    return widgets.VBox([box, out])


def learning_rates(cfg) -> np.ndarray:
    """The learning rate of every optimiser step of a phase (chapter 6).

    Read off the schedule that :func:`twotower.training.trainer.make_optimizer` builds for
    ``cfg``, stepped without training.

    Args:
        cfg: a :class:`twotower.config.TrainConfig`.

    Returns:
        ``(cfg.steps + 1,)`` rates: entry ``s`` is used by optimiser step ``s``
        (0-based); the last entry, after the final step, is 0.
    """
    import warnings

    import torch

    from twotower.training.trainer import make_optimizer

    _, schedule = make_optimizer(torch.nn.Linear(1, 1), cfg, torch.device("cpu"))
    rates = [schedule.get_last_lr()[0]]
    with warnings.catch_warnings():  # "scheduler stepped before optimizer": on purpose
        warnings.simplefilter("ignore")
        for _ in range(cfg.steps):
            schedule.step()
            rates.append(schedule.get_last_lr()[0])
    return np.array(rates)


def format_duration(seconds: float) -> str:
    """``93.0 -> "1.6 min"``: seconds in the unit a reader thinks in (chapter 6)."""
    if not np.isfinite(seconds):
        return "n/a"
    for unit, size, limit in (("s", 1, 120), ("min", 60, 120), ("h", 3600, 72),
                              ("days", 86400, 730)):
        if seconds < size * limit:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / (365 * 86400):.3g} years"
