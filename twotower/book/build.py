"""Build the book: execute the chapters with papermill, then render offline HTML.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".

Usage (from the repository root)::

    python -m twotower.book build [--preset smoke] [--chapters 01 02] [--out _build]
    python -m twotower.book build --force              # execute even unchanged ones
    python -m twotower.book copies                     # colab/reader, colab/student
    python -m twotower.book student [--out student]   # exercise copies, no solutions
    python -m twotower.book check                      # stored chapters are clean
    python -m twotower.book strip                      # remove outputs in place
    python -m twotower.book links                      # Colab links from _config.yml
    python -m twotower.book vendor                     # the HTML's MathJax, widgets

``build`` (1) reads the chapters (``.ipynb`` entries) from ``_toc.yml`` in order; (2)
executes each with papermill into ``<out>/executed/book/<name>.ipynb``
(:mod:`twotower.book.execution`), injecting ``PRESET``, ``SEED``, ``DEVICE`` and
``RUNS_DIR`` (one runs directory per preset, so a chapter reuses what an earlier
chapter trained), keeps going after a failing chapter and rewrites
``<out>/executed/timings.json`` as each chapter ends. A chapter whose notebook,
parameters and package are unchanged since its last successful execution is not
executed again (:mod:`twotower.book.manifest`; ``--force`` executes it anyway). (3)
copies ``_config.yml``, ``_toc.yml``, ``references.bib``, the pages and the executed
notebooks that passed with this build's preset, seed and device to ``<out>/stage``
and runs ``jupyter-book build`` there with warnings as errors, into ``<out>/html``.
MathJax and the ipywidgets embedder come from the npm registry (checked tarballs,
unpacked in ``<out>/vendor``), so the HTML never asks a CDN for them. Before (1),
:func:`preflight` checks in seconds that the build modules, the kernel, the bundled
corpora and those assets are there, so nothing fails after hours of chapters. The exit
status is non-zero if anything failed; Ctrl-C or SIGTERM ends the build in one line
(status 130 or 143) with the timing table of what ended, and the same command goes on
from there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import yaml

from twotower.book.copies import (Book, copy_problems, write_copies,
                                  write_student_copies)
from twotower.book.execution import (ChapterRun, execute_chapter, stop_on_sigterm,
                                     stop_signal)
from twotower.book.manifest import (Manifest, chapter_key, kernel_package,
                                    package_fingerprint, print_timings,
                                    read_build_parameters, write_timings)
from twotower.book.notebooks import (notebook_problems, read_notebook, rewrite_links,
                                     strip_notebook, structure_problems,
                                     write_notebook)
from twotower.book.teaching import TIMINGS_FOLDER, grade_notebooks, record_timings
from twotower.book.vendor import fetch_vendor, offline_problems
from twotower.config import PRESETS
from twotower.data import sources
from twotower.errors import TwotowerError

# what the build needs besides the package: the [book] extra of pyproject.toml
BOOK_MODULES = ("papermill", "nbformat", "jupyter_book", "ipykernel", "yaml")


class BuildInterrupted(TwotowerError):
    """Ctrl-C or SIGTERM stopped the build, after it wrote the timing table of what
    ended; ``exit_status`` is 130 (Ctrl-C) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


# --- the repository: _config.yml and _toc.yml -----------------------------------------

def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder with ``_config.yml`` and ``_toc.yml``."""
    candidates = [Path(start or Path.cwd()).resolve()]
    candidates += list(candidates[0].parents) + [Path(__file__).resolve().parents[2]]
    for folder in candidates:
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    raise TwotowerError("no _config.yml and _toc.yml found here or above; run from the "
                        "repository root or pass --root")


def read_config(root: Path) -> dict:
    """The book's ``_config.yml`` as a dict."""
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}


def toc_entries(root: Path) -> list[str]:
    """Every ``file:`` of ``_toc.yml`` (root first), in reading order, no suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    entries = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []):
                    walk(child)

    walk(toc)
    return [str(Path(entry).with_suffix("")) if entry.endswith((".md", ".ipynb"))
            else entry for entry in entries]


def chapters(root: Path) -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in order."""
    return [root / f"{entry}.ipynb" for entry in toc_entries(root)
            if (root / f"{entry}.ipynb").is_file()]


def select_chapters(all_chapters: list[Path], wanted: list[str] | None) -> list[Path]:
    """Chapters whose file name starts with one of ``wanted`` (e.g. ``01``)."""
    if not wanted:
        return all_chapters
    chosen = [path for path in all_chapters if any(path.stem.startswith(w)
                                                   for w in wanted)]
    if not chosen:
        names = ", ".join(path.stem for path in all_chapters)
        raise TwotowerError(f"no chapter matches {' '.join(wanted)}; choose among "
                            f"{names}")
    return chosen


# --- step 2: execute ------------------------------------------------------------------

def execute_chapters(root: Path, executed: Path, selected: list[Path], parameters: dict,
                     runs: list[ChapterRun], force: bool = False,
                     timeout: int | None = None) -> None:
    """Execute ``selected`` in order into ``executed``, appending each outcome to
    ``runs`` and rewriting the timing table as each ends. A chapter unchanged since its
    last successful execution (:meth:`Manifest.unchanged`) is not executed again
    unless ``force``. Ctrl-C is raised on, with the chapter it stopped in ``runs``.
    """
    manifest = Manifest(executed)
    package = package_fingerprint(kernel_package(root))
    for chapter in selected:
        name = chapter.relative_to(root).as_posix()
        key = chapter_key(chapter, parameters, package)
        if not force and manifest.unchanged(name, key):
            print(f"{name}: unchanged since its last execution, not executed again",
                  flush=True)
            runs.append(ChapterRun(chapter.stem, "unchanged", 0.0,
                                   str(executed / name)))
        else:
            print(f"executing {name} with {parameters}", flush=True)
            start = time.perf_counter()
            try:
                run = execute_chapter(chapter, executed / name, parameters, timeout,
                                      root)
            except KeyboardInterrupt:
                runs.append(ChapterRun(chapter.stem, "interrupted",
                                       round(time.perf_counter() - start, 1), ""))
                raise
            manifest.record(name, key, run)
            print(f"  {run.status} in {run.seconds:.1f} s", flush=True)
            runs.append(run)
        write_timings(executed, parameters, runs, None, "running")


# --- step 3: HTML ---------------------------------------------------------------------

def preflight(root: Path, out: Path | None, wanted: list[str] | None = None) -> None:
    """Check, in seconds, what a build needs before any chapter runs: the ``[book]``
    modules, the Jupyter kernel, every bundled corpus and (for the HTML) the vendor
    assets. The first missing piece is one line naming the fix.

    Raises:
        TwotowerError: naming what is missing and how to get it.
    """
    missing = [name for name in BOOK_MODULES if find_spec(name) is None]
    if missing:
        raise TwotowerError(f"the book build needs {', '.join(missing)}: run "
                            "python3 tasks.py setup, or pip install -e '.[book]'")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        raise TwotowerError("no Jupyter kernel 'python3': run pip install ipykernel in "
                            "this environment (make setup does)") from None
    select_chapters(chapters(root), wanted)
    sources.check()
    if out is not None:
        fetch_vendor(out)


def _trim_toc(toc: dict, keep) -> dict:
    # drop chapters that have no notebook to render (not executed in this build)
    def walk(node):
        if isinstance(node, dict):
            node = dict(node)
            for key in ("parts", "chapters", "sections"):
                if key in node:
                    children = (walk(child) for child in node[key])
                    node[key] = [child for child in children if child]
                    if not node[key]:
                        del node[key]
            if "file" in node and not keep(node["file"]):
                return None
            if "file" not in node and "chapters" not in node and "parts" not in node:
                return None
        return node

    return walk(toc)


def stage(root: Path, out: Path, executed: Path,
          parameters: dict) -> tuple[Path, dict[str, str]]:
    """Copy the book to ``out/stage``, with the executed copies that passed with the
    preset, seed and device of ``parameters`` (:meth:`Manifest.why_not_shown`); return
    the staging folder and the chapters left out, each with the reason."""
    staging = out / "stage"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("_config.yml", "references.bib"):
        shutil.copy2(root / name, staging / name)
    shutil.copytree(root / "book", staging / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints",
                                                  "__pycache__"))
    manifest, missing = Manifest(executed), {}
    for chapter in chapters(root):
        name = chapter.relative_to(root)
        reason = manifest.why_not_shown(name.as_posix(), parameters)
        if reason:
            missing[name.with_suffix("").as_posix()] = reason
        else:
            shutil.copy2(executed / name, staging / name)
    # this build's timings beside those recorded by others, for "For teachers"
    record_timings({"copies": manifest.copies}, parameters["PRESET"],
                   staging / "book" / TIMINGS_FOLDER)
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    toc = _trim_toc(toc, lambda entry: str(Path(entry).with_suffix("")) not in missing)
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return staging, missing


def _python_path(root: Path) -> str:
    # the repository first, so a checkout works without `pip install -e .`
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(root)] + paths)


def build_html(root: Path, out: Path, executed: Path, parameters: dict) -> dict:
    """Stage the book and run jupyter-book with warnings as errors; copy to out/html."""
    start = time.perf_counter()
    extra = fetch_vendor(out)
    staging, missing = stage(root, out, executed, parameters)
    for name, reason in missing.items():
        print(f"note: {name} left out of the HTML ({reason} in {executed})")
    (staging / "_vendor").symlink_to(extra.resolve(), target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=_python_path(root))
    command = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()",
               "build", str(staging), "--builder", "html", "--all",
               "--warningiserror", "--nitpick", "--keep-going"]
    print("$ jupyter-book build", " ".join(command[4:]), flush=True)
    done = subprocess.run(command, env=env)
    status = "ok" if done.returncode == 0 else "failed"
    built, html = staging / "_build" / "html", out / "html"
    if built.is_dir():
        shutil.rmtree(html, ignore_errors=True)
        shutil.copytree(built, html)
        problems = offline_problems(html)
        for problem in problems:
            print(f"CDN reference (the book must work offline): {problem}")
        if problems:
            status = "failed"
    else:
        status = "failed"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1),
            "html": str(html), "left_out": list(missing)}


def build(root: Path, out: Path, preset: str, seed: int, device: str,
          wanted: list[str] | None, html: bool = True, timeout: int | None = None,
          runs_dir: Path | None = None, force: bool = False) -> int:
    """Execute the chosen chapters that changed (all of them with ``force``), then
    build the HTML; return the exit status.

    Raises:
        BuildInterrupted: on Ctrl-C or SIGTERM, once the timing table of what ended is
            written.
    """
    if preset not in PRESETS:
        raise TwotowerError(f"unknown preset {preset!r}; choose one of "
                            f"{', '.join(PRESETS)}")
    out = out.resolve()
    preflight(root, out if html else None, wanted)
    executed = out / "executed"
    runs_dir = (runs_dir or out / "runs" / preset).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    parameters = {"PRESET": preset, "SEED": seed, "DEVICE": device,
                  "RUNS_DIR": str(runs_dir)}
    os.environ["PYTHONPATH"] = _python_path(root)  # the kernels import this package
    runs: list[ChapterRun] = []
    during = "the chapters"
    try:
        execute_chapters(root, executed, select_chapters(chapters(root), wanted),
                         parameters, runs, force, timeout)
        during = "the HTML"
        result = build_html(root, out, executed, parameters) if html else None
    except KeyboardInterrupt as stop:
        raise _interrupted(stop, during, executed, parameters, runs) from None
    write_timings(executed, parameters, runs, result, "finished")
    print_timings(runs, result)
    failed = any(run.status == "failed" for run in runs) or \
        (result or {}).get("status", "ok") != "ok"
    if result and result["status"] == "ok":
        print(f"HTML: {result['html']}/index.html")
    return 1 if failed else 0


def _interrupted(stop: KeyboardInterrupt, during: str, executed: Path,
                 parameters: dict, runs: list[ChapterRun]) -> BuildInterrupted:
    # the one line that ends an interrupted build, once its timing table is written
    table = write_timings(executed, parameters, runs, None, "interrupted")
    what, status = stop_signal(stop)
    stopped = [run.name for run in runs if run.status == "interrupted"]
    return BuildInterrupted(
        f"stopped by {what} during {stopped[0] if stopped else during}; the timings "
        f"of the {len(runs) - len(stopped)} chapter(s) that ended are in {table}; the "
        "same command goes on from there (chapters that passed are not executed again)",
        status)


# --- command line ---------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    """The command line of ``python -m twotower.book``."""
    parser = argparse.ArgumentParser(prog="python -m twotower.book",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="repository root (default: found from the current folder)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("build", help="execute the chapters, then build the HTML")
    run.add_argument("--preset", default="smoke",
                     help="size of every run (default smoke)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto")
    run.add_argument("--chapters", nargs="*", default=None,
                     help="file-name prefixes, e.g. 01 03 (default: all)")
    run.add_argument("--out", type=Path, default=Path("_build"))
    run.add_argument("--runs-dir", type=Path, default=None,
                     help="shared runs directory (default <out>/runs/<preset>)")
    run.add_argument("--no-html", action="store_true", help="execute only")
    run.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    run.add_argument("--force", action="store_true", help="execute every chosen "
                     "chapter, also those unchanged since their last execution")
    html = commands.add_parser("html", help="build the HTML from the executed copies")
    html.add_argument("--out", type=Path, default=Path("_build"))
    commands.add_parser("copies", help="write the chapters' reader and student copies "
                        "for Colab (colab/reader, colab/student)")
    student = commands.add_parser("student", help="student copies (no solutions), "
                                  "into --out")
    student.add_argument("--out", type=Path, default=Path("student"))
    commands.add_parser("check", help="fail if a chapter has outputs, stale links, "
                        "departs from the chapter template, or a copy is stale")
    commands.add_parser("strip", help="remove outputs and execution counts in place")
    commands.add_parser("links", help="rewrite Colab links from _config.yml")
    vendor = commands.add_parser("vendor", help="fetch the HTML's MathJax and widget "
                                 "assets (make setup runs this)")
    vendor.add_argument("--out", type=Path, default=Path("_build"))
    grade = commands.add_parser("grade", help="run students' notebooks and report "
                                "their exercise checks (twotower.book.teaching)")
    grade.add_argument("notebooks", nargs="+", type=Path)
    grade.add_argument("--out", type=Path, default=Path("_build/grading"))
    grade.add_argument("--no-execute", action="store_true", help="read the outputs "
                       "the notebooks hold instead of running them")
    record = commands.add_parser("record-timings", help="keep the last build's "
                                 "chapter timings in book/_timings for 'For teachers'")
    record.add_argument("--out", type=Path, default=Path("_build"))
    return parser


def _build_command(args: argparse.Namespace, root: Path) -> int:
    """``build``, ``html`` and ``vendor``: what makes the book."""
    if args.command == "build":
        return build(root, args.out, args.preset, args.seed, args.device,
                     args.chapters, html=not args.no_html, timeout=args.timeout,
                     runs_dir=args.runs_dir, force=args.force)
    if args.command == "record-timings":
        executed = args.out.resolve() / "executed"
        preset = read_build_parameters(executed)["PRESET"]
        path = record_timings({"copies": Manifest(executed).copies}, preset,
                              root / "book" / TIMINGS_FOLDER)
        print(f"timings of the {preset} build in {path.relative_to(root)}")
        return 0
    if args.command == "grade":
        return grade_notebooks(args.notebooks, args.out, not args.no_execute)
    if args.command == "html":  # with the preset, seed and device of the last build
        executed = args.out.resolve() / "executed"
        result = build_html(root, executed.parent, executed,
                            read_build_parameters(executed))
        print_timings([], result)
        return 0 if result["status"] == "ok" else 1
    print(f"vendor assets in {fetch_vendor(args.out.resolve()) / 'vendor'}")
    return 0


def _chapter_command(args: argparse.Namespace, root: Path, config: dict) -> int:
    """``copies``, ``student``, ``strip``, ``links`` and ``check``: what is done to the
    chapters."""
    if args.command == "copies":
        written, removed = write_copies(Book(root, config), chapters(root))
        for path in written + removed:
            done = "wrote" if path in written else "removed"
            print(f"{done} {path.relative_to(root)}")
        print(f"{2 * len(chapters(root))} copies, {len(written)} written, "
              f"{len(removed)} removed")
        return 0
    if args.command == "student":
        for target, removed in write_student_copies(Book(root, config), chapters(root),
                                                    args.out).items():
            print(f"{target}: {removed} solution cells removed")
        return 0
    if args.command == "strip":
        for chapter in chapters(root):
            notebook = read_notebook(chapter)
            if strip_notebook(notebook):
                write_notebook(notebook, chapter)
                print(f"stripped {chapter.relative_to(root)}")
        return 0
    if args.command == "links":
        for chapter in chapters(root):
            if rewrite_links(chapter, config, root):
                print(f"updated links in {chapter.relative_to(root)}")
        return 0
    problems = [p for chapter in chapters(root)
                for p in notebook_problems(chapter, config, root)
                + structure_problems(chapter)]
    problems += copy_problems(Book(root, config), chapters(root))
    for problem in problems:
        print(problem)
    print(f"{len(chapters(root))} chapters checked, {len(problems)} problems")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.book COMMAND``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        with stop_on_sigterm():
            root = find_root(args.root)
            config = read_config(root)
            if args.command in ("build", "html", "vendor", "grade", "record-timings"):
                return _build_command(args, root)
            return _chapter_command(args, root, config)
    except TwotowerError as error:
        print(f"error: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
    except KeyboardInterrupt as stop:
        what, status = stop_signal(stop)
        print(f"error: {args.command} stopped by {what}", file=sys.stderr)
        return status


if __name__ == "__main__":
    raise SystemExit(main())
