"""The book build under interruption and on a rebuild: Ctrl-C and SIGTERM end in one
line with the timing table of what ended; a chapter unchanged since its last successful
execution is not executed again; the HTML shows only copies that passed with the
build's preset, seed and device.

The chapters' executor is replaced by a fake that writes a tiny executed copy (no
kernel), except in the one test that stops a real chapter with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook, new_output

from twotower.book import build as book

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = 'PRESET = "small"\nSEED = 0\nDEVICE = "auto"\nRUNS_DIR = "runs"'


def _write_notebook(path: Path, *sources: str, tag_first: bool = False) -> None:
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    if tag_first:
        notebook.cells[0].metadata["tags"] = ["parameters"]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def _book(root: Path, chapters: dict[str, str]) -> Path:
    """A book of ``chapters`` (name -> the code of its one cell) under ``root``."""
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (root / "_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "book/intro",
         "parts": [{"caption": "t", "chapters": [{"file": f"book/{name}"}
                                                 for name in chapters]}]}))
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "references.bib").write_text("")
    for name, body in chapters.items():
        _write_notebook(root / "book" / f"{name}.ipynb",
                        PARAMETERS, body, tag_first=True)
    return root


class FakeExecutor:
    """Stands in for :func:`execute_chapter`: writes a copy that says which preset it
    was executed with; fails or is interrupted (Ctrl-C) where told."""

    def __init__(self, fail=(), interrupt=(), on_call=None):
        self.calls, self.fail, self.interrupt = [], fail, interrupt
        self.on_call = on_call

    def __call__(self, source, target, parameters, timeout=None, root=None):
        self.calls.append(source.stem)
        if self.on_call:
            self.on_call(source.stem, target)
        if source.stem in self.interrupt:
            raise KeyboardInterrupt
        _write_notebook(target, f"# executed at {parameters['PRESET']}")
        failed = source.stem in self.fail
        return book.ChapterRun(source.stem, "failed" if failed else "ok", 0.1,
                               str(target), "cell 1: RuntimeError: boom" * failed)


def _main(*argv: str) -> int:
    try:
        return book.main(list(argv))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped python -m twotower.book as a traceback")


def _build(root: Path, out: Path, *extra: str) -> int:
    return _main("--root", str(root), "build", "--out", str(out), "--no-html", *extra)


def _timings(out: Path) -> dict:
    return json.loads((out / "executed" / "timings.json").read_text())


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    # the build puts the book's root first on PYTHONPATH; undo that after the test
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    return _book(tmp_path / "root", {"01_a": "print(1)", "02_b": "print(2)",
                                     "03_c": "print(3)"})


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------

def test_ctrl_c_ends_the_build_in_one_line_and_keeps_the_timings_of_what_ended(
        tiny, tmp_path, monkeypatch, capsys):
    fake = FakeExecutor(interrupt={"02_b"})
    monkeypatch.setattr(book, "execute_chapter", fake)
    out = tmp_path / "_build"
    assert _build(tiny, out) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by Ctrl-C during 02_b" in err[0]
    assert "timings.json" in err[0] and "the same command goes on" in err[0]
    timings = _timings(out)
    assert timings["state"] == "interrupted"
    assert [(c["name"], c["status"]) for c in timings["chapters"]] == [
        ("01_a", "ok"), ("02_b", "interrupted")]
    assert fake.calls == ["01_a", "02_b"]


def test_timing_table_is_on_disk_while_the_next_chapter_runs(tiny, tmp_path,
                                                              monkeypatch):
    out, seen = tmp_path / "_build", {}

    def look(name, target):
        if name == "03_c":  # what a kill -9 now would leave behind
            table = out / "executed" / "timings.json"
            seen.update(json.loads(table.read_text()) if table.exists() else
                        {"state": "no timings.json yet"})

    monkeypatch.setattr(book, "execute_chapter", FakeExecutor(on_call=look))
    assert _build(tiny, out) == 0
    assert seen["state"] == "running"
    assert [c["name"] for c in seen["chapters"]] == ["01_a", "02_b"]


def test_sigterm_ends_the_build_like_ctrl_c(tiny, tmp_path, monkeypatch, capsys):
    def terminate(name, target):
        if name == "02_b":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the signal lands here

    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM killed the build without its timing table")

    monkeypatch.setattr(book, "execute_chapter", FakeExecutor(on_call=terminate))
    out = tmp_path / "_build"
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        status = _build(tiny, out)
    finally:
        assert signal.signal(signal.SIGTERM, previous) is unhandled  # restored
    assert status == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped by SIGTERM during 02_b" in err[0]
    assert [(c["name"], c["status"]) for c in _timings(out)["chapters"]] == [
        ("01_a", "ok"), ("02_b", "interrupted")]


class _InterruptedPapermill:
    """A papermill process that has written half its copy when Ctrl-C comes."""

    real_popen = subprocess.Popen

    def __new__(cls, command, *args, **kwargs):
        if "papermill" not in command:  # anything else runs as usual
            return cls.real_popen(command, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, command, *args, **kwargs):
        self.output, self.stopped = Path(command[4]), False
        self.output.write_text('{"cells": [')  # half a notebook

    def wait(self, timeout=None):
        if not self.stopped:
            raise KeyboardInterrupt
        return -15

    def poll(self):
        return None if not self.stopped else -15

    def terminate(self):
        self.stopped = True

    kill = terminate


def test_an_interrupted_chapter_leaves_its_last_copy_and_no_half_written_one(
        tmp_path, monkeypatch):
    source, target = tmp_path / "01_a.ipynb", tmp_path / "executed" / "01_a.ipynb"
    _write_notebook(source, "print(1)")
    _write_notebook(target, "# the copy of the last build")
    before = target.read_bytes()
    monkeypatch.setattr(subprocess, "Popen", _InterruptedPapermill)
    with pytest.raises(KeyboardInterrupt):
        book.execute_chapter(source, target, {"PRESET": "smoke"})
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["01_a.ipynb"]


def test_ctrl_c_in_a_terminal_stops_a_real_chapter_and_its_kernel(tmp_path):
    root = _book(tmp_path / "root", {
        "01_quick": "print('done')",
        "02_slow": "import os, time\nfrom pathlib import Path\n"
                   "Path(RUNS_DIR, 'kernel.pid').write_text(str(os.getpid()))\n"
                   "time.sleep(600)",
        "03_never": "print('not reached')"})
    out = tmp_path / "_build"
    build = subprocess.Popen(
        [sys.executable, "-m", "twotower.book", "--root", str(root), "build", "--out",
         str(out), "--no-html"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)  # its own group, as in a terminal
    pid_file = out / "runs" / "smoke" / "kernel.pid"
    deadline = time.monotonic() + 180
    while not pid_file.exists() and build.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), build.communicate(timeout=60)
    os.killpg(build.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = build.communicate(timeout=90)
    assert build.returncode == 130
    assert len(err.strip().splitlines()) == 1, err
    assert "stopped by Ctrl-C during 02_slow" in err
    timings = _timings(out)
    assert [(c["name"], c["status"]) for c in timings["chapters"]] == [
        ("01_quick", "ok"), ("02_slow", "interrupted")]
    assert sorted(p.name for p in (out / "executed" / "book").iterdir()) == [
        "01_quick.ipynb"]
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(kernel), "the chapter's kernel outlived the build"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


# --- a rebuild executes only what changed ---------------------------------------------

def test_rebuild_executes_again_only_what_changed_and_says_so(tiny, tmp_path,
                                                             monkeypatch, capsys):
    package = tmp_path / "package"  # stands in for the package the kernels import
    package.mkdir()
    (package / "code.py").write_text("x = 1\n")
    monkeypatch.setattr(book, "kernel_package", lambda root: package, raising=False)
    out = tmp_path / "_build"

    def rebuild(*extra, fail=()):
        fake = FakeExecutor(fail=fail)
        monkeypatch.setattr(book, "execute_chapter", fake)
        _build(tiny, out, *extra)
        return fake.calls

    assert rebuild(fail={"03_c"}) == ["01_a", "02_b", "03_c"]
    assert rebuild() == ["03_c"]  # the one that failed, and only it
    capsys.readouterr()
    assert rebuild() == []
    printed = capsys.readouterr().out
    assert printed.count("unchanged, not executed") == 3
    assert [c["status"] for c in _timings(out)["chapters"]] == ["unchanged"] * 3
    chapter = tiny / "book" / "02_b.ipynb"
    notebook = nbformat.read(chapter, as_version=4)
    notebook.cells[1].outputs = [new_output("stream", name="stdout", text="2\n")]
    nbformat.write(notebook, chapter)
    assert rebuild() == []  # outputs saved in the chapter are not a change
    notebook.cells[1].source = "print('two')"
    nbformat.write(notebook, chapter)
    assert rebuild() == ["02_b"]
    (package / "code.py").write_text("x = 2\n")
    assert rebuild() == ["01_a", "02_b", "03_c"]
    assert rebuild("--seed", "1") == ["01_a", "02_b", "03_c"]
    assert rebuild("--seed", "1", "--force", "--chapters", "01") == ["01_a"]
    assert rebuild("--seed", "1") == []


# --- the HTML shows only copies that passed with the build's parameters ---------------

def test_html_is_staged_only_from_copies_that_passed_with_the_build_preset(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    root = _book(tmp_path / "root", {name: "print(1)" for name in
                                     ("01_a", "02_b", "03_c", "04_d")})
    out = tmp_path / "_build"
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    monkeypatch.setattr(book, "fetch_vendor", lambda out: vendor)
    run = subprocess.run

    def no_jupyter_book(command, *args, **kwargs):
        if any("jupyter_book" in str(part) for part in command):
            return subprocess.CompletedProcess(command, 1)
        return run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_jupyter_book)
    monkeypatch.setattr(book, "execute_chapter", FakeExecutor(fail={"02_b"}))
    _build(root, out, "--preset", "small")
    _build(root, out, "--chapters", "01", "02", "04")  # smoke; 02 fails
    half = out / "executed" / "book" / "04_d.ipynb"
    half.write_text(half.read_text()[:40])  # as an interrupted copy was left
    capsys.readouterr()
    _main("--root", str(root), "build", "--out", str(out), "--chapters", "01")
    staged = sorted(p.name for p in (out / "stage" / "book").glob("*.ipynb"))
    assert staged == ["01_a.ipynb"]
    assert "smoke" in (out / "stage" / "book" / "01_a.ipynb").read_text()
    toc = (out / "stage" / "_toc.yml").read_text()
    assert "01_a" in toc and not any(name in toc for name in ("02_b", "03_c", "04_d"))
    printed = capsys.readouterr().out
    assert "book/02_b left out of the HTML (its last execution failed" in printed
    assert "book/03_c left out of the HTML (executed with PRESET='small'" in printed
    assert "book/04_d left out of the HTML (no complete executed copy" in printed
