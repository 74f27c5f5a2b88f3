"""What each executed chapter was made from, so that a rebuild executes only what
changed and the HTML shows only copies executed successfully with the build's
parameters; and the build's timing table, written as each chapter ends.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
:mod:`twotower.book.build` keeps ``<out>/executed/manifest.json``: for each executed
copy (``book/<name>.ipynb``) its status, the parameters it was executed with
(``PRESET``, ``SEED``, ``DEVICE``, ``RUNS_DIR``), a hash of its chapter with the outputs
stripped, the package's version and a hash of the package's files, and a hash of the
copy itself, so a copy replaced or damaged since is never trusted. A chapter whose
record matches (:meth:`Manifest.unchanged`) is not executed again. Both files are
replaced whole (:mod:`twotower.atomic`), so Ctrl-C or ``kill -9`` never leaves half.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from twotower import atomic
from twotower.book.execution import ChapterRun
from twotower.book.notebooks import source_sha256
from twotower.errors import TwotowerError

MANIFEST = "manifest.json"
TIMINGS = "timings.json"
# the parameters that make an executed copy show other numbers (RUNS_DIR only says
# where the runs are cached)
SHOWN_PARAMETERS = ("PRESET", "SEED", "DEVICE")


def kernel_package(root: Path) -> Path:
    """The folder of the package the chapters' kernels import: the repository's own
    ``twotower/`` (the build puts the repository first on ``PYTHONPATH``), else the
    installed one."""
    here = root / "twotower"
    return here if (here / "__init__.py").is_file() else Path(__file__).parents[1]


def package_fingerprint(package: Path) -> dict:
    """The package's version and a hash of every file in it (``__pycache__`` aside),
    so any change of its code or data executes the chapters again."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0")
            digest.update(atomic.file_sha256(path).encode())
    try:
        version = importlib.metadata.version("twotower")
    except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
        version = "(not installed)"
    return {"package_version": version, "package_sha256": digest.hexdigest()}


def chapter_key(chapter: Path, parameters: dict, package: dict) -> dict:
    """Everything an executed copy of ``chapter`` depends on: the chapter, its
    parameters and the package (:func:`package_fingerprint`)."""
    return {"parameters": dict(parameters), "notebook_sha256": source_sha256(chapter),
            **package}


class Manifest:
    """``<executed>/manifest.json``: one record per executed copy, keyed by its path
    relative to ``executed`` (``book/01_is_language_divisible.ipynb``)."""

    def __init__(self, executed: Path):
        self.executed = executed
        self.path = executed / MANIFEST
        self.copies = self._read()

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            copies = atomic.read_json(self.path, "it is rebuilt").get("copies", {})
        except TwotowerError as error:  # a cache: lose it, do not stop the build
            print(f"note: {error}; every chapter is executed again")
            return {}
        return copies if isinstance(copies, dict) else {}

    def _intact(self, name: str) -> dict | None:
        # the record of a copy that is there, with the bytes it was recorded with
        entry, copy = self.copies.get(name), self.executed / name
        if not isinstance(entry, dict) or not copy.is_file() or \
                entry.get("copy_sha256") != atomic.file_sha256(copy):
            return None
        return entry

    def unchanged(self, name: str, key: dict) -> bool:
        """True if the copy ``name`` was executed successfully from exactly ``key``."""
        entry = self._intact(name)
        return entry is not None and entry.get("status") == "ok" and \
            all(entry.get(field) == value for field, value in key.items())

    def record(self, name: str, key: dict, run: ChapterRun) -> None:
        """Remember how the copy ``name`` was just made (replaces the file whole)."""
        copy = self.executed / name
        self.copies[name] = {
            "status": run.status, **key, "seconds": run.seconds, "error": run.error,
            "copy_sha256": atomic.file_sha256(copy) if copy.is_file() else None,
            "executed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        atomic.write_text(self.path, json.dumps({"copies": self.copies}, indent=2))

    def why_not_shown(self, name: str, parameters: dict) -> str:
        """Empty if the copy ``name`` may go into the HTML of a build with
        ``parameters``: executed successfully with the same preset, seed and device,
        and unchanged since. Else the reason, in words."""
        entry = self._intact(name)
        if entry is None:
            return "no complete executed copy"
        if entry.get("status") != "ok":
            return f"its last execution {entry.get('status')}"
        shown = {key: parameters.get(key) for key in SHOWN_PARAMETERS}
        made = {key: entry.get("parameters", {}).get(key) for key in SHOWN_PARAMETERS}
        if made != shown:
            return ("executed with " + ", ".join(f"{k}={v!r}" for k, v in made.items())
                    + ", not " + ", ".join(f"{k}={v!r}" for k, v in shown.items()))
        return ""


def write_timings(executed: Path, parameters: dict, runs: list[ChapterRun],
                  html: dict | None, state: str) -> Path:
    """``<executed>/timings.json``: this build's table so far; ``state`` is
    ``running``, ``finished`` or ``interrupted``. Replaced whole after every chapter."""
    path = executed / TIMINGS
    atomic.write_text(path, json.dumps(
        {"preset": parameters["PRESET"], "seed": parameters["SEED"],
         "device": parameters["DEVICE"], "runs_dir": parameters["RUNS_DIR"],
         "state": state, "chapters": [asdict(run) for run in runs], "html": html},
        indent=2))
    return path


def print_timings(runs: list[ChapterRun], html: dict | None) -> None:
    """A table of what ran, how long it took, and where a failure is kept."""
    labels = {"unchanged": "unchanged, not executed"}
    rows = [(run.name, labels.get(run.status, run.status), run.seconds) for run in runs]
    if html:
        rows.append(("HTML (jupyter-book)", html["status"], html["seconds"]))
    width = max([len(row[0]) for row in rows] + [7])
    status_width = max([len(row[1]) for row in rows] + [7])
    print(f"\n{'chapter'.ljust(width)}  {'status'.ljust(status_width)}  seconds")
    for name, status, seconds in rows:
        print(f"{name.ljust(width)}  {status.ljust(status_width)} {seconds:8.1f}")
    print(f"{'total'.ljust(width)}  {''.ljust(status_width)} "
          f"{sum(row[2] for row in rows):8.1f}")
    for run in runs:
        if run.status == "failed":
            print(f"FAILED {run.name}: {run.error}\n  executed notebook kept at "
                  f"{run.notebook}")


def read_build_parameters(executed: Path) -> dict:
    """The parameters of the last build into ``executed`` (from its timing table).

    Raises:
        TwotowerError: no build has written a timing table there.
    """
    table = atomic.read_json(executed / TIMINGS, "run python -m twotower.book build "
                             "first")
    return {"PRESET": table.get("preset"), "SEED": table.get("seed"),
            "DEVICE": table.get("device"), "RUNS_DIR": table.get("runs_dir")}
