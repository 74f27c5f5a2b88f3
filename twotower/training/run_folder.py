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
    results.json       losses, perplexities, preference summary, split-half ceiling,
                       and the record of what made the scores (below)

``results.json`` is written last, atomically (:func:`save_results`): a folder that
holds it is a finished run (:func:`is_finished`), and nothing else decides that.

Its ``made_from`` says which weights made ``scores.npz`` and ``preference.csv``: the
step and :func:`~twotower.training.checkpoint.weights_sha256` of the towers and of the
readouts (and of the baseline, when trained); its ``file_sha256`` the SHA-256 of both
files. :func:`read_scores` and :func:`read_preference` compare the files, loading a
run compares the weights (:func:`twotower.experiments.pipeline.load_run`), and every
missing, damaged or mismatched file ends in one line naming it and the fix
(``book/when_things_go_wrong.md``, *A damaged run folder*). A folder written before
the record has neither key and is read as before, unchecked.

One process at a time writes a run folder: :func:`owned` holds ``.run.lock`` in it for
the whole run (``.run.owner`` says who holds it), and a second process is refused in
one line naming the first one's pid (``book/when_things_go_wrong.md``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from twotower import atomic
from twotower.config import FAMILIES
from twotower.data.scores import TokenScores
from twotower.errors import TwotowerError, require
from twotower.training import distributed

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SCORES = "scores.npz"
PREFERENCE = "preference.csv"
RESULTS = "results.json"
LOCK = ".run.lock"  # held by the process that writes the run (filelock: flock)
OWNER = ".run.owner"  # that process's pid and host, for the message of a second one
MADE_FROM, FILE_SHA256 = "made_from", "file_sha256"  # the record in results.json
PREFERENCE_COLUMNS = ("token", "id", "count", "ll_a", "ll_b", "pref", "pref_se")

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
        """Name of the run folder, ``{preset}-{family}-seed{seed}[-{variant}]``."""
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


def folder_path(out: str | Path) -> Path:
    """``out`` as a run folder's path, refusing an empty one (``Path("")`` is the
    current folder: a run would land in it).

    Raises:
        TwotowerError: for an empty or blank path.
    """
    if not str(out).strip():
        raise TwotowerError(f"the run folder's path is empty ({str(out)!r}); name a "
                            "folder, e.g. --out runs/smoke-causal-seed0")
    return Path(out)


_held: set[Path] = set()  # the run folders this process holds


@contextlib.contextmanager
def owned(out: str | Path) -> Iterator[Path]:
    """Hold the run folder ``out`` while the block writes it: one process at a time.

    Introduced in ``book/when_things_go_wrong.md``. The lock is filelock's ``flock``
    on ``out/.run.lock``: the operating system releases it when the process ends, by
    an error, Ctrl-C or ``kill -9`` alike, so a crashed run never blocks the next one.
    (Where a file system has no ``flock``, filelock keeps the owner's pid and host in
    the lock file and takes over a lock whose process is gone.) Under ``torchrun``
    only rank 0, which writes the folder, holds it; a process that holds it already
    enters again. The lock file stays (removing it could let two processes lock two
    files of one name).

    Yields:
        The run folder's path.

    Raises:
        TwotowerError: for an empty path, a file, or a folder another process holds
            (naming its pid and host).
    """
    folder = folder_path(out)
    if folder.exists() and not folder.is_dir():
        raise TwotowerError(f"--out {folder} is a file, not a run directory; choose "
                            "another --out")
    if not distributed.current().is_main or folder.resolve() in _held:
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    key, lock = folder.resolve(), FileLock(folder / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TwotowerError(_held_elsewhere(folder)) from None
    _held.add(key)
    try:
        atomic.write_text(folder / OWNER, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname()}))
        yield folder
    finally:
        _held.discard(key)
        (folder / OWNER).unlink(missing_ok=True)  # before the lock: never the next's
        lock.release()


def owning_run_folder(run: Callable) -> Callable:
    """Decorate ``run(cfg, out, ...)`` to hold ``out`` (:func:`owned`) while it runs;
    a ``cfg`` that does not validate is refused before the folder is touched."""
    @functools.wraps(run)
    def holding(cfg, out, *args, **kwargs):
        cfg.validate()
        with owned(out) as folder:
            return run(cfg, folder, *args, **kwargs)
    return holding


def _held_elsewhere(folder: Path) -> str:
    """The one line for a run folder that another process holds."""
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        pid, host = None, ""
    here = host == socket.gethostname()
    if pid is None or (here and not atomic.pid_alive(pid)):
        who = "another process (it has not written its pid yet)"
    else:
        who = f"process {pid}" + ("" if here else f" on {host}")
    return (f"{folder} is in use by {who}: one run writes a run folder at a time; wait "
            f"for it to end (or stop it) and rerun the same command to resume, or "
            "choose another --out")


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


#: The phase summaries of ``results.json`` (training loss, speed, validation loss).
PHASE_SUMMARIES = ("joint_training", "readout_training", "model_training", "baseline")


def kept_phase_summaries(out: str | Path, results: dict) -> dict:
    """``results`` with the summary of every phase that took no step in this call
    completed from the time it trained: a finished run rerun, or a run resumed after
    the phase had ended, would otherwise lose its training loss and speed.

    They come from the run's ``results.json`` when it has one, else the training
    loss from the phase's last line of ``metrics.jsonl`` (the same number).
    """
    saved = {}
    if is_finished(out):
        with contextlib.suppress(TwotowerError):  # a damaged one is written anew
            saved = read_results(out)
    kept = dict(results)
    for key in PHASE_SUMMARIES:
        new, old = results.get(key), saved.get(key)
        if not isinstance(new, dict) or new.get("resumed_from") != new.get("steps"):
            continue  # trained in this call, or not a phase that trains
        if isinstance(old, dict) and (old.get("phase"), old.get("steps")) == (
                new.get("phase"), new.get("steps")):
            kept[key] = {**new, **old}
        elif "train_loss" not in new:
            records = _metric_records(Path(out) / METRICS)
            losses = [r["loss"] for r in records if r.get("loss") is not None
                      and r.get("phase") == new.get("phase")]
            kept[key] = {**new, "train_loss": losses[-1]} if losses else new
    return kept


def _metric_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file in order (none without one; a line cut
    short by a crash is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


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


def rescore_fix(run_dir: str | Path) -> str:
    """The fix for scores that are missing, damaged or not the recorded ones."""
    return (f"delete {Path(run_dir) / RESULTS} and rerun the command or chapter that "
            "made the run: it is scored again, nothing is trained again")


def _check_recorded(file: Path, results: dict) -> None:
    """Refuse ``file`` unless it is the one ``results``' record names (nothing to
    compare in a folder written before the record)."""
    recorded = results.get(FILE_SHA256, {}).get(file.name)
    if recorded is not None and atomic.file_sha256(file) != recorded:
        step = results.get(MADE_FROM, {}).get("towers", {}).get("step")
        raise TwotowerError(
            f"{file} is not the file {RESULTS} records (sha256 {recorded[:12]}, made "
            f"from the towers of step {step}): it was replaced or changed after the "
            f"run finished; {rescore_fix(file.parent)}")


def read_scores(run_dir: str | Path, results: dict) -> TokenScores:
    """``scores.npz`` of a finished run, checked against the record in ``results``.

    Raises:
        TwotowerError: when it is missing, damaged or not the recorded file.
    """
    file = Path(run_dir) / SCORES
    scores = TokenScores.load(file, rescore_fix(run_dir))
    _check_recorded(file, results)
    return scores


def read_preference(run_dir: str | Path, results: dict) -> pd.DataFrame:
    """``preference.csv`` of a finished run indexed by token id, checked against the
    record in ``results``.

    Raises:
        TwotowerError: when it is missing, not a UTF-8 table of the preference columns,
            or not the recorded file.
    """
    file, fix = Path(run_dir) / PREFERENCE, rescore_fix(run_dir)
    try:
        table = pd.read_csv(file, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise TwotowerError(f"{file} is missing; {fix}") from None
    except (OSError, ValueError) as err:  # not UTF-8, not CSV, empty
        raise TwotowerError(f"{file} is damaged, not a UTF-8 table "
                            f"({str(err).splitlines()[0][:100]}); {fix}") from None
    missing = [c for c in PREFERENCE_COLUMNS if c not in table.columns and c != "token"]
    if missing:  # ("token" is optional: a table without token strings)
        raise TwotowerError(f"{file} is damaged: it has no column {missing[0]!r} "
                            f"(columns: {', '.join(map(str, table.columns[:8]))}); "
                            f"{fix}")
    _check_recorded(file, results)
    return table.set_index("id")


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
    return pd.DataFrame(_metric_records(path)).sort_values(
        ["phase", "step"], kind="stable", ignore_index=True)
