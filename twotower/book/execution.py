"""Execute one chapter with papermill, in a process of its own, so that Ctrl-C or
SIGTERM stops the book build in one line and leaves no half-written executed copy.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
:mod:`twotower.book.build` calls :func:`execute_chapter` for each chapter. papermill
runs in a child process (``python -m papermill``) because, inside a process, its
notebook client takes over SIGINT and SIGTERM to stop its kernel, and a stopped kernel
then looks like a failing chapter. The child writes a hidden ``.<name>.running.ipynb``
beside the executed copy; only when the chapter has ended, passed or failed, is that
renamed onto ``<name>.ipynb``. On Ctrl-C or SIGTERM the child is asked to stop (it
shuts its kernel down), the running copy is removed, and the interruption is raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from twotower.book.notebooks import read_notebook
from twotower.book.present import failed_check, present

STOP_WAIT_SECONDS = 30  # for the child to stop its kernel before it is killed


@dataclass
class ChapterRun:
    """Outcome of one chapter in a build."""

    name: str
    status: str  # "ok", "failed", "unchanged" (not executed) or "interrupted"
    seconds: float
    notebook: str  # path of the executed copy (kept when it failed)
    error: str = ""


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the build stops the same way."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Stopped` (in the main thread; elsewhere
    signals cannot be caught and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_signal(stop: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the process, in words, and the exit status that says so."""
    return ("SIGTERM", 143) if isinstance(stop, Stopped) else ("Ctrl-C", 130)


def running_copy(target: Path) -> Path:
    """Where the executed copy ``target`` is written while its chapter runs."""
    return target.with_name(f".{target.stem}.running{target.suffix}")


def papermill_command(source: Path, output: Path, parameters: dict,
                      timeout: int | None) -> list[str]:
    """The ``python -m papermill`` command that executes ``source`` into ``output``,
    in the folder of ``output``, with ``parameters`` injected."""
    command = [sys.executable, "-m", "papermill", str(source), str(output),
               "--parameters_yaml", json.dumps(parameters), "--kernel", "python3",
               "--cwd", str(output.parent), "--no-progress-bar",
               "--log-level", "WARNING"]
    if timeout:
        command += ["--execution-timeout", str(timeout)]
    return command


def execute_chapter(source: Path, target: Path, parameters: dict,
                    timeout: int | None = None, root: Path | None = None) -> ChapterRun:
    """Run one chapter with papermill; a failing cell, or an exercise check that
    failed, is reported, not raised. The executed copy shows ``RUNS_DIR`` relative to
    ``root`` (default: the current folder).

    Raises:
        KeyboardInterrupt: on Ctrl-C (:class:`Stopped` on SIGTERM), once the chapter's
            process and kernel have stopped; ``target`` is then left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    running, log = running_copy(target), target.with_suffix(".log")
    running.unlink(missing_ok=True)
    command = papermill_command(source, running, parameters, timeout)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        # a session of its own: Ctrl-C reaches this process only, which stops the child
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = child.wait()
        except BaseException:
            _stop(child)
            running.unlink(missing_ok=True)
            log.unlink(missing_ok=True)
            raise
    seconds = round(time.perf_counter() - start, 1)
    error = _failure(running, log, returncode) if returncode else \
        failed_check(read_notebook(running))
    if running.exists():
        present(running, parameters, root or Path.cwd())
        os.replace(running, target)
    else:
        target.unlink(missing_ok=True)  # an older copy must not pass for this run's
    if str(log) not in error:  # kept only where the error points to it
        log.unlink(missing_ok=True)
    return ChapterRun(source.stem, "failed" if error else "ok", seconds, str(target),
                      error)


def _stop(child: subprocess.Popen) -> None:
    # SIGTERM lets papermill's client shut its kernel down; kill it if it hangs
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_WAIT_SECONDS)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            child.kill()
            child.wait()


def _failure(running: Path, log: Path, returncode: int) -> str:
    # the first error output of the executed copy, else the last line of the log
    if running.exists():
        notebook = read_notebook(running)
        for cell in notebook.cells:
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    return (f"cell {cell.get('execution_count')}: {out.get('ename')}: "
                            f"{out.get('evalue')}")
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace")
             .splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else "no output"
    return f"papermill exited with status {returncode}: {last} (log: {log})"
