"""The book in class: what each chapter asks of students, how long it runs, and grading.

Introduced in the page *For teachers* (``book/for_teachers.md``), whose tables are
drawn from here when the book is built: the exercises of every chapter with the minutes
their statements announce (:func:`exercises`), how long each chapter took to execute in
the builds that recorded it (:func:`recorded_timings`), and sessions of 90 minutes
packed from both (:func:`sessions`). :func:`grade` runs the ``check_*`` functions of
students' notebooks: ``python -m twotower.book grade NOTEBOOK ...``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from twotower.book.execution import execute_chapter
from twotower.book.notebooks import read_notebook
from twotower.book.present import CHECK_LINE

#: Minutes of one class session.
SESSION_MINUTES = 90
_EXERCISE = re.compile(r"^(?:```+|:::+)\{exercise\}\s*(?P<title>.*)$", re.M)
_MINUTES = re.compile(r"about (\d+) minutes")
TIMINGS_FOLDER = "_timings"  # in book/: one <preset>.json per recorded build


@dataclass(frozen=True)
class Exercise:
    """One exercise as its statement announces it."""

    chapter: str  # the notebook's stem, e.g. ``08_emerging_preference``
    title: str
    minutes: int  # from "about N minutes"; 0 if the statement gives none


def exercises(chapter: Path) -> list[Exercise]:
    """The exercises of ``chapter`` in order, with their announced minutes."""
    found = []
    for cell in read_notebook(chapter).cells:
        match = _EXERCISE.search(cell.source) if cell.cell_type == "markdown" else None
        if match:
            minutes = _MINUTES.search(cell.source)
            found.append(Exercise(chapter.stem, match["title"].strip(),
                                  int(minutes.group(1)) if minutes else 0))
    return found


def record_timings(manifest: dict, preset: str, folder: Path) -> Path:
    """Write ``folder/<preset>.json``: the seconds of the last successful execution of
    every chapter at ``preset``, from a build's manifest (``{"copies": ...}``)."""
    seconds = {Path(name).stem: entry["seconds"]
               for name, entry in manifest.get("copies", {}).items()
               if entry.get("status") == "ok" and
               entry.get("parameters", {}).get("PRESET") == preset}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{preset}.json"
    path.write_text(json.dumps({"preset": preset, "seconds": seconds}, indent=1,
                               sort_keys=True) + "\n", encoding="utf-8")
    return path


def recorded_timings(folder: Path) -> dict[str, dict[str, float]]:
    """``{preset: {chapter stem: seconds}}`` from every ``<preset>.json`` in ``folder``
    (written by :func:`record_timings`); a file that does not parse is skipped."""
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            found[record["preset"]] = {k: float(v) for k, v in record["seconds"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


def sessions(chapter_exercises: list[list[Exercise]], run_minutes: list[float],
             budget: int = SESSION_MINUTES) -> list[list[str]]:
    """Pack each chapter into sessions of at most ``budget`` minutes: the chapter's
    execution (``run_minutes``) opens its first session, then its exercises in order;
    an exercise that does not fit starts the next session.

    Returns:
        For each chapter, its sessions, each a line "exercise, exercise (N min)".
    """
    packed = []
    for found, opening in zip(chapter_exercises, run_minutes):
        chapter, current, used = [], [], float(opening)
        for exercise in found:
            if current and used + exercise.minutes > budget:
                chapter.append((current, used))
                current, used = [], 0.0
            current.append(exercise.title)
            used += exercise.minutes
        chapter.append((current, used))
        packed.append([f"{', '.join(titles) or 'reading only'} ({used:.0f} min)"
                       for titles, used in chapter])
    return packed


def check_results(notebook) -> dict[str, str]:
    """``{check name: "passed" | "failed"}`` from an executed notebook's outputs (the
    ``✔``/``✘`` lines that every ``check_*`` prints); the last result of a check
    counts."""
    results = {}
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            for match in CHECK_LINE.finditer(str(out.get("text", ""))):
                results[match["check"]] = "passed" if match["mark"] == "✔" else "failed"
    return results


def grade(notebook: Path, work: Path, parameters: dict | None = None,
          execute: bool = True) -> dict[str, str]:
    """Grade one student's notebook with the chapter's ``check_*`` functions.

    Args:
        notebook: the student's ``.ipynb`` (a student copy they filled in).
        work: a folder for the executed copy (``<work>/<name>.ipynb``).
        parameters: the chapter parameters (default: ``smoke``, seed 0, the CPU, runs
            in ``<work>/runs``): grading checks the functions, not the numbers.
        execute: run the notebook first (``False``: read the outputs it holds, which
            a student could have edited).

    Returns:
        ``{check: "passed" | "failed" | "not run"}`` for every check the notebook
        calls, plus ``"error"`` with the first error if a cell failed.
    """
    source = read_notebook(notebook)
    called = dict.fromkeys(re.findall(r"\bex\.(check_\w+)\(", "\n".join(
        cell.source for cell in source.cells if cell.cell_type == "code")))
    graded = notebook
    if execute:
        parameters = parameters or {"PRESET": "smoke", "SEED": 0, "DEVICE": "cpu",
                                    "RUNS_DIR": str((work / "runs").resolve())}
        run = execute_chapter(notebook, work / notebook.name, parameters)
        graded = Path(run.notebook)
    results = check_results(read_notebook(graded)) if graded.exists() else {}
    report = {check: results.get(check, "not run") for check in called}
    if execute and run.error and not run.error.split(": ", 1)[-1].startswith("✘"):
        report["error"] = run.error
    return report


def grade_notebooks(notebooks: list[Path], work: Path, execute: bool = True) -> int:
    """``python -m twotower.book grade``: :func:`grade` each notebook and print one
    line per notebook (checks passed out of those called, and which did not pass).
    Returns 0 when every notebook was read, 2 when one is missing."""
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}")
        return 2
    for path in notebooks:
        report = grade(path, work / path.stem, execute=execute)
        error = report.pop("error", "")
        passed = [c for c, status in report.items() if status == "passed"]
        others = [f"{c} {status}" for c, status in report.items() if status != "passed"]
        print(f"{path}: {len(passed)}/{len(report)} checks passed"
              + (f"; {', '.join(others)}" if others else "")
              + (f"; stopped at {error}" if error else ""))
    return 0
