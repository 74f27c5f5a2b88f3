"""Set a chapter up: where it runs, its preset and device, seeds, figures, its data.

Introduced in chapter 1 (*Is language divisible?*); every chapter's first code cell
calls :func:`setup`, and :func:`runs_on_drive` keeps a Colab reader's runs on Google
Drive.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import textwrap
from collections.abc import Sequence

import torch

from twotower.analysis import alt_text, plotting
from twotower.config import PRESETS, get_preset
from twotower.data import sources
from twotower.data.corpus import FALLBACK
from twotower.data.tokenizer import hub_is_reachable
from twotower.errors import TwotowerError
from twotower.training.runtime import resolve_device, seed_everything

GPU_PRESET, CPU_PRESET = "colab", "small"  # what PRESET = "auto" becomes
DRIVE_RUNS = "/content/drive/MyDrive/twotower/runs"


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


def _version() -> str:
    try:
        return importlib.metadata.version("twotower")
    except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
        return "(not installed)"


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
    chosen = resolve_device(device)
    name = choose_preset(preset, chosen)
    found = check_data(name, data)
    seed_everything(int(seed))
    plotting.setup()
    style_outputs()
    if not quiet:
        where = "Colab" if in_colab() else "local"
        how = f" (auto: {'GPU' if name == GPU_PRESET else 'no CUDA GPU'})" \
            if preset == "auto" else ""
        print(f"twotower {_version()} | torch {torch.__version__} | {where}, "
              f"{torch.get_num_threads()} CPU threads")
        print(f"device {chosen} | preset {name}{how} | seed {seed}")
        print(textwrap.fill("data: " + "; ".join(found), 76, subsequent_indent="  "))
    return name, chosen


#: Digits after the decimal point of every number in a table the book shows.
TABLE_PRECISION = 3


def style_outputs() -> None:
    """Tables with :data:`TABLE_PRECISION` digits, and every matplotlib figure shown
    with its alt text (:func:`twotower.analysis.alt_text.figure_alt_text`) in the
    output's metadata, where the book build finds it (safe to call twice)."""
    import pandas as pd

    pd.set_option("display.precision", TABLE_PRECISION)
    pd.set_option("styler.format.precision", TABLE_PRECISION)
    if not in_ipython():
        return
    import matplotlib
    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from matplotlib.figure import Figure

    # pyplot loads its backend at the first figure, and the inline backend registers
    # its PNG formatter then: load it now, so that there is a formatter to extend
    plt.switch_backend(matplotlib.get_backend())
    formatter = get_ipython().display_formatter.formatters["image/png"]
    png = formatter.lookup_by_type(Figure) if Figure in formatter.type_printers \
        else None
    if png is None or getattr(png, "adds_alt_text", False):
        return

    def png_with_alt_text(figure):
        data = png(figure)
        if data is None:
            return None
        data, metadata = data if isinstance(data, tuple) else (data, {})
        return data, {**(metadata or {}), "alt": alt_text.figure_alt_text(figure)}

    png_with_alt_text.adds_alt_text = True
    formatter.for_type(Figure, png_with_alt_text)


def choose_preset(preset: str, device: torch.device) -> str:
    """``"auto"`` -> :data:`GPU_PRESET` on a CUDA device, else :data:`CPU_PRESET`; any
    other name is returned once it is known to be a preset.

    Raises:
        TwotowerError: for an unknown preset.
    """
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


def runs_on_drive(runs_dir: str, folder: str = DRIVE_RUNS) -> str:
    """Keep the runs on Google Drive: in Colab, mount Drive (Colab asks for permission)
    and return ``folder``; anywhere else, say so and return ``runs_dir`` unchanged.

    Colab's own disk is wiped when a session ends; runs on Drive are found again by the
    next session and by later chapters (the run cache checks them before training).
    """
    if not in_colab():
        print(f"not in Colab: runs stay in {runs_dir}")
        return runs_dir
    from google.colab import drive

    drive.mount("/content/drive")
    os.makedirs(folder, exist_ok=True)
    print(f"runs are kept on your Google Drive, in {folder}")
    return folder
