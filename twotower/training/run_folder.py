"""The run folder: its name, its files, and the one test of whether a run finished.

Introduced in chapter 4 (*Three kinds of tower*), whose brief runs are the first a later
chapter finds again by name; chapter 6 (*Training on a GPU (or not)*) writes the first
full run.

A run of the book lives in ``<runs_dir>/<name>``, the name given by :class:`RunSpec`
(``{preset}-{family}-seed{seed}``, then ``-{variant}`` when there is one), and holds::

    config.json        the resolved RunConfig (vocabulary size from the tokenizer)
    metrics.jsonl      one JSON line per logged step and validation pass, all phases
    joint/step-*/      phase 1 checkpoints (model.safetensors, state.pt, meta.json)
    readouts/step-*/   phase 2/3 checkpoints (both readouts)
    baseline/step-*/   the matched single-tower model (when asked)
    scores.npz         per scored position: target id, log-prob of each readout, joint
    preference.csv     token, id, count, ll_a, ll_b, pref, pref_se
    results.json       losses, perplexities, preference summary, split-half ceiling

``results.json`` is written last, atomically (:func:`save_results`): a folder that
holds it is a finished run (:func:`is_finished`), and nothing else decides that.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from twotower import atomic
from twotower.config import FAMILIES
from twotower.errors import TwotowerError, require

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SCORES = "scores.npz"
PREFERENCE = "preference.csv"
RESULTS = "results.json"

_PRESET = r"[A-Za-z0-9_.]+"
_VARIANT = r"[A-Za-z0-9_.-]+"
_NAME = re.compile(rf"(?P<preset>{_PRESET})-(?P<family>{'|'.join(FAMILIES)})"
                   rf"-seed(?P<seed>0|[1-9][0-9]*)(?:-(?P<variant>{_VARIANT}))?")


@dataclass(frozen=True)
class RunSpec:
    """Which run: a preset, a model family, a seed and a variant ("" for the main run).

    The variant names what differs from the preset's run: a control of chapter 9
    (``"independent"``, ``"split"``, ``"untrained"``, ``"reseeded"``), towers of
    another width (``"width0.5"``), or a run of another kind that keeps the naming
    (``"ckpts"``, ``"multi30k-en-de"``, ``"brief-single"``). :attr:`name` is the
    folder's name, and :meth:`parse` its exact inverse, so a later chapter finds what
    an earlier one trained instead of training it again.

    Example:
        >>> RunSpec("smoke", "causal", 0, "untrained").name
        'smoke-causal-seed0-untrained'
        >>> RunSpec.parse("small-mlm-seed2")
        RunSpec(preset='small', family='mlm', seed=2, variant='')
    """

    preset: str
    family: str = "causal"
    seed: int = 0
    variant: str = ""

    def __post_init__(self) -> None:
        require(isinstance(self.seed, (int, np.integer)) and not isinstance(
            self.seed, bool), f"a run's seed is a whole number, not {self.seed!r}")
        object.__setattr__(self, "seed", operator.index(self.seed))
        require(self.seed >= 0, f"a run's seed is not negative, got {self.seed}")
        require(isinstance(self.preset, str) and re.fullmatch(_PRESET, self.preset),
                f"a preset name is letters, digits, '_' or '.', not {self.preset!r}")
        require(self.family in FAMILIES, f"unknown family {self.family!r}; choose one "
                f"of {', '.join(FAMILIES)}")
        require(isinstance(self.variant, str) and (
            self.variant == "" or re.fullmatch(_VARIANT, self.variant)),
            f"a variant is letters, digits, '_', '.' or '-', not {self.variant!r}")

    @property
    def name(self) -> str:
        """The run folder's name: ``{preset}-{family}-seed{seed}[-{variant}]``."""
        return f"{self.preset}-{self.family}-seed{self.seed}" + (
            f"-{self.variant}" if self.variant else "")

    @classmethod
    def parse(cls, name: str) -> RunSpec:
        """The spec whose :attr:`name` is ``name`` (its exact inverse).

        Raises:
            TwotowerError: when ``name`` is not the name of a run (see :meth:`matches`).
        """
        found = _NAME.fullmatch(name)
        if found is None:
            raise TwotowerError(f"{name!r} is not a run's name "
                                "({preset}-{family}-seed{seed}[-{variant}])")
        return cls(found["preset"], found["family"], int(found["seed"]),
                   found["variant"] or "")

    @staticmethod
    def matches(name: str) -> bool:
        """Whether ``name`` is the name of a run (what :meth:`parse` accepts)."""
        return _NAME.fullmatch(name) is not None

    def path(self, runs_dir: str | Path) -> Path:
        """The run's folder in ``runs_dir``."""
        return Path(runs_dir) / self.name


def is_finished(path: str | Path) -> bool:
    """Whether the run folder ``path`` holds a finished run (its ``results.json``)."""
    return (Path(path) / RESULTS).exists()


def read_results(path: str | Path) -> dict:
    """``results.json`` of a finished run directory."""
    return atomic.read_json(Path(path) / RESULTS, "rerun the run command with "
                            f"--out {path} to write it again")


def save_results(out: Path, results: dict) -> None:
    """Write ``results.json`` atomically (the last file a run writes: its presence
    means the run finished)."""
    atomic.write_text(Path(out) / RESULTS, json.dumps(_jsonable(results), indent=1))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """The ``metrics.jsonl`` of a run directory as one table (introduced in chapter 6).

    Every logged training step and every validation pass of every phase is one row;
    a line cut short by a crash is skipped.

    Args:
        run_dir: a run directory written by :func:`twotower.experiments.pipeline.run`
            (or the ``metrics.jsonl`` file itself).

    Returns:
        DataFrame with columns ``phase``, ``step`` and whatever was logged: ``loss``,
        ``lr``, ``tokens_per_s`` on training rows; ``val_loss``, ``val_ppl``,
        ``val_tokens`` on validation rows (NaN elsewhere).

    Raises:
        TwotowerError: when there is no ``metrics.jsonl``.
    """
    path = Path(run_dir)
    path = path / METRICS if path.is_dir() else path
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
