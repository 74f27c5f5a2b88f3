"""Build the book: execute the chapters with papermill, then render offline HTML.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".

Usage (from the repository root)::

    python -m twotower.book build [--preset smoke] [--chapters 01 02] [--out _build]
    python -m twotower.book student [--out student]   # exercise copies, no solutions
    python -m twotower.book check                      # stored chapters are clean
    python -m twotower.book strip                      # remove outputs in place
    python -m twotower.book links                      # Colab links from _config.yml
    python -m twotower.book vendor                     # the HTML's MathJax, widgets

``build`` (1) reads the chapters (``.ipynb`` entries) from ``_toc.yml`` in order; (2)
executes each with papermill into ``<out>/executed/book/<name>.ipynb``, injecting
``PRESET``, ``SEED``, ``DEVICE`` and ``RUNS_DIR`` (one runs directory per preset, so a
chapter reuses what an earlier chapter trained), keeps going after a failing chapter and
writes ``<out>/executed/timings.json``; (3) copies ``_config.yml``, ``_toc.yml``,
``references.bib``, the pages and the executed notebooks to ``<out>/stage`` and runs
``jupyter-book build`` there with warnings as errors, into ``<out>/html``. MathJax and
the ipywidgets embedder come from the npm registry (checked tarballs, unpacked in
``<out>/vendor``), so the HTML never asks a CDN for them. Before (1), :func:`preflight`
checks in seconds that the build modules, the kernel, the bundled corpora and those
assets are there, so nothing fails after hours of chapters. The exit status is
non-zero if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from pathlib import Path

import yaml

from twotower.book.notebooks import (notebook_problems, read_notebook, rewrite_links,
                                     strip_notebook, structure_problems, student_copy,
                                     write_notebook)
from twotower.book.vendor import fetch_vendor, offline_problems
from twotower.config import PRESETS
from twotower.data import sources
from twotower.errors import TwotowerError

# what the build needs besides the package: the [book] extra of pyproject.toml
BOOK_MODULES = ("papermill", "nbformat", "jupyter_book", "ipykernel", "yaml")


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


# --- notebook hygiene -----------------------------------------------------------------

# --- step 2: execute ------------------------------------------------------------------

@dataclass
class ChapterRun:
    """Outcome of executing one chapter."""

    name: str
    status: str  # "ok" or "failed"
    seconds: float
    notebook: str  # path of the executed copy (kept when it failed)
    error: str = ""


def execute_chapter(source: Path, target: Path, parameters: dict,
                    timeout: int | None = None) -> ChapterRun:
    """Run one chapter with papermill; a failing cell is reported, not raised."""
    import papermill

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    status, error = "ok", ""
    try:
        papermill.execute_notebook(str(source), str(target), parameters=parameters,
                                   kernel_name="python3", progress_bar=False,
                                   cwd=str(target.parent), execution_timeout=timeout)
    except papermill.PapermillExecutionError as failure:
        status = "failed"
        error = f"cell {failure.exec_count}: {failure.ename}: {failure.evalue}"
    except Exception as failure:  # kernel died, timeout, bad notebook: keep going
        status, error = "failed", f"{type(failure).__name__}: {failure}"
    seconds = time.perf_counter() - start
    if target.exists():
        _hide_injected_parameters(target)
    return ChapterRun(source.stem, status, round(seconds, 1), str(target), error)


def _hide_injected_parameters(path: Path) -> None:
    # the injected values stay readable in the HTML, behind a "show" toggle
    notebook = read_notebook(path)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            cell.metadata["tags"] = tags + ["hide-cell"]
    write_notebook(notebook, path)


def print_timings(runs: list[ChapterRun], html: dict | None) -> None:
    """A table of what ran, how long it took, and where a failure is kept."""
    rows = [(run.name, run.status, run.seconds) for run in runs]
    if html:
        rows.append(("HTML (jupyter-book)", html["status"], html["seconds"]))
    width = max([len(row[0]) for row in rows] + [7])
    print(f"\n{'chapter'.ljust(width)}  status   seconds")
    for name, status, seconds in rows:
        print(f"{name.ljust(width)}  {status:<7} {seconds:8.1f}")
    print(f"{'total'.ljust(width)}  {'':<7} {sum(row[2] for row in rows):8.1f}")
    for run in runs:
        if run.status != "ok":
            print(f"FAILED {run.name}: {run.error}\n  executed notebook kept at "
                  f"{run.notebook}")


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


def stage(root: Path, out: Path, executed: Path) -> tuple[Path, list[str]]:
    """Copy the book, with the executed notebooks, to ``out/stage``."""
    staging = out / "stage"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("_config.yml", "references.bib"):
        shutil.copy2(root / name, staging / name)
    shutil.copytree(root / "book", staging / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints",
                                                  "__pycache__"))
    missing = []
    for chapter in chapters(root):
        run = executed / chapter.relative_to(root)
        if run.is_file():
            shutil.copy2(run, staging / chapter.relative_to(root))
        else:
            missing.append(chapter.relative_to(root).with_suffix("").as_posix())
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    toc = _trim_toc(toc, lambda entry: str(Path(entry).with_suffix("")) not in missing)
    (staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return staging, missing


def _python_path(root: Path) -> str:
    # the repository first, so a checkout works without `pip install -e .`
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(root)] + paths)


def build_html(root: Path, out: Path, executed: Path) -> dict:
    """Stage the book and run jupyter-book with warnings as errors; copy to out/html."""
    start = time.perf_counter()
    extra = fetch_vendor(out)
    staging, missing = stage(root, out, executed)
    for name in missing:
        print(f"note: {name} has no executed copy in {executed}; left out of the HTML")
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
            "html": str(html), "left_out": missing}


def build(root: Path, out: Path, preset: str, seed: int, device: str,
          wanted: list[str] | None, html: bool = True, timeout: int | None = None,
          runs_dir: Path | None = None) -> int:
    """Execute the chosen chapters, then build the HTML; return the exit status."""
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
    runs = []
    for chapter in select_chapters(chapters(root), wanted):
        print(f"executing {chapter.relative_to(root)} with {parameters}", flush=True)
        run = execute_chapter(chapter, executed / chapter.relative_to(root), parameters,
                              timeout)
        print(f"  {run.status} in {run.seconds:.1f} s", flush=True)
        runs.append(run)
    result = build_html(root, out, executed) if html else None
    executed.mkdir(parents=True, exist_ok=True)
    (executed / "timings.json").write_text(json.dumps(
        {"preset": preset, "seed": seed, "device": device, "runs_dir": str(runs_dir),
         "chapters": [asdict(run) for run in runs], "html": result}, indent=2))
    print_timings(runs, result)
    failed = any(run.status != "ok" for run in runs) or (result or {}).get("status",
                                                                           "ok") != "ok"
    if result and result["status"] == "ok":
        print(f"HTML: {result['html']}/index.html")
    return 1 if failed else 0


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
    html = commands.add_parser("html", help="build the HTML from the executed copies")
    html.add_argument("--out", type=Path, default=Path("_build"))
    student = commands.add_parser("student", help="copies without the solution cells")
    student.add_argument("--out", type=Path, default=Path("student"))
    commands.add_parser("check", help="fail if a chapter has outputs, stale links, or "
                        "departs from the chapter template")
    commands.add_parser("strip", help="remove outputs and execution counts in place")
    commands.add_parser("links", help="rewrite Colab links from _config.yml")
    vendor = commands.add_parser("vendor", help="fetch the HTML's MathJax and widget "
                                 "assets (make setup runs this)")
    vendor.add_argument("--out", type=Path, default=Path("_build"))
    return parser


def _build_command(args: argparse.Namespace, root: Path) -> int:
    """``build``, ``html`` and ``vendor``: what makes the book."""
    if args.command == "build":
        return build(root, args.out, args.preset, args.seed, args.device,
                     args.chapters, html=not args.no_html, timeout=args.timeout,
                     runs_dir=args.runs_dir)
    if args.command == "html":
        out = args.out.resolve()
        result = build_html(root, out, out / "executed")
        print_timings([], result)
        return 0 if result["status"] == "ok" else 1
    print(f"vendor assets in {fetch_vendor(args.out.resolve()) / 'vendor'}")
    return 0


def _chapter_command(args: argparse.Namespace, root: Path, config: dict) -> int:
    """``student``, ``strip``, ``links`` and ``check``: what is done to the chapters."""
    if args.command == "student":
        for chapter in chapters(root):
            target = args.out / chapter.name
            removed = student_copy(chapter, target)
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
    for problem in problems:
        print(problem)
    print(f"{len(chapters(root))} chapters checked, {len(problems)} problems")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m twotower.book COMMAND``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        root = find_root(args.root)
        config = read_config(root)
        if args.command in ("build", "html", "vendor"):
            return _build_command(args, root)
        return _chapter_command(args, root, config)
    except TwotowerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
