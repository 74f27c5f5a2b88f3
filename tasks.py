#!/usr/bin/env python3
"""Set up and run the book on a fresh machine: only Python 3.10+ is needed, not root.

    python3 tasks.py book   # set up, run every chapter at the CPU preset, build the HTML
    python3 tasks.py test   # set up, build the smoke book and pass the tests (CI's run)

Other tasks: ``setup`` (only the environment), ``smoke-book``, ``pytest``, ``browser``,
``student`` (the reader and student copies in ``colab/``), ``lab`` (JupyterLab on the
chapters). ``make TASK`` runs the same.

``setup`` makes a virtual environment in ``.venv`` (with ``python -m venv``; where Debian
or Ubuntu left out ``ensurepip``, without it, and pip is then bootstrapped from its wheel
on PyPI, checked against PyPI's SHA-256), installs torch (the CPU build from PyTorch's
CPU index unless ``nvidia-smi`` sees a GPU: a few hundred MB instead of several GB), the
package with its ``book`` and ``test`` extras, and the HTML's MathJax and widget assets.
It is done once: a later run skips it until ``pyproject.toml`` changes. This file uses
the standard library only, since it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TWOTOWER_VENV", ROOT / ".venv"))
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".twotower-setup"
TORCH = os.environ.get("TORCH_SPEC", "torch==2.13.0")  # the build the book was run with
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI_JSON = "https://pypi.org/pypi/pip/json"


def say(message: str) -> None:
    print(f"tasks: {message}", flush=True)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(*command: str | Path, **kwargs) -> None:
    done = subprocess.run([str(part) for part in command], cwd=ROOT, **kwargs)
    if done.returncode:
        raise SystemExit(done.returncode)


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether ``url`` answers at all (any HTTP status) within ``timeout`` seconds."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                               timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


# --- the virtual environment ----------------------------------------------------------

def make_venv() -> None:
    if PY.is_file() and subprocess.run([PY, "-m", "pip", "--version"],
                                       capture_output=True).returncode == 0:
        return
    say(f"making a virtual environment in {VENV}")
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    except (subprocess.CalledProcessError, OSError):
        # Debian/Ubuntu ship Python without ensurepip unless python3-venv is installed
        say("this Python has no ensurepip: bootstrapping pip from its wheel on PyPI")
        venv.EnvBuilder(with_pip=False, clear=True).create(VENV)
        bootstrap_pip()


def bootstrap_pip() -> None:
    try:
        with urllib.request.urlopen(PYPI_JSON, timeout=30) as answer:
            files = json.load(answer)["urls"]
        wheel = next(f for f in files if f["filename"].endswith("-py3-none-any.whl"))
        url = urllib.parse.urljoin(PYPI_JSON, wheel["url"])  # mirrors answer relative
        with urllib.request.urlopen(url, timeout=120) as answer:
            data = answer.read()
    except (OSError, StopIteration, KeyError, ValueError) as error:
        fail(f"could not fetch pip from PyPI ({type(error).__name__}); install "
             "python3-venv (sudo apt-get install python3-venv) or go online")
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        fail("the pip wheel from PyPI does not match its SHA-256; retry later")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / wheel["filename"]
        path.write_bytes(data)
        # a wheel is a zip archive that Python can run: pip installs itself from it
        run(PY, path / "pip", "install", "--quiet", "--no-index", path)


def install_torch() -> None:
    if subprocess.run([PY, "-c", "import torch"], capture_output=True).returncode == 0:
        return
    gpu = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    if gpu:
        say(f"an NVIDIA GPU is present: installing {TORCH} from PyPI (CUDA build)")
        run(PY, "-m", "pip", "install", "--quiet", TORCH)
    elif answers(TORCH_CPU_INDEX + "/"):
        say(f"no NVIDIA GPU: the CPU build of {TORCH}, from {TORCH_CPU_INDEX}")
        run(PY, "-m", "pip", "install", "--quiet", TORCH, "--extra-index-url",
            TORCH_CPU_INDEX)
    else:
        say(f"no NVIDIA GPU, and {TORCH_CPU_INDEX} does not answer: installing {TORCH} "
            "from the configured package indexes (on plain PyPI: the CUDA build)")
        run(PY, "-m", "pip", "install", "--quiet", TORCH)


def setup(force: bool = False) -> None:
    if sys.version_info < (3, 10):
        fail(f"twotower needs Python 3.10 or newer, this is {sys.version.split()[0]}; "
             "run this file with a newer python3")
    pyproject = ROOT / "pyproject.toml"
    if not force and STAMP.is_file() and PY.is_file() and \
            STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    make_venv()
    install_torch()
    say("installing twotower with its book and test extras")
    run(PY, "-m", "pip", "install", "--quiet", "-e", ".[book,test]")
    run(PY, "-m", "twotower.book", "vendor")  # the HTML's assets, before any chapter
    STAMP.write_text("set up by tasks.py\n")
    say(f"environment ready: {VENV}")


# --- the tasks ------------------------------------------------------------------------

def browser() -> None:
    """Chromium and its WebDriver (Debian's chromium-driver), which Selenium drives."""
    if any(shutil.which(name) for name in ("chromium", "chromium-browser")) and \
            shutil.which("chromedriver"):
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        say("installing Chromium and chromedriver (Debian packages) for the browser "
            "tests")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        failed = subprocess.run(["apt-get", "update", "-q"], env=env).returncode or \
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium",
                            "chromium-driver"], env=env).returncode
        if not failed:
            return
    say("Chromium and chromedriver are not installed and cannot be installed here (it "
        "needs root: sudo apt-get install chromium chromium-driver): the browser tests "
        "will be skipped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=("setup", "book", "smoke-book", "test",
                                         "pytest", "browser", "student", "lab"))
    parser.add_argument("--preset", default=os.environ.get("PRESET", "small"),
                        help="preset of the book task (default small)")
    args = parser.parse_args(argv)
    if args.task == "browser":
        return browser()
    setup()
    book = [PY, "-m", "twotower.book"]
    if args.task == "book":
        run(*book, "build", "--preset", args.preset)
    elif args.task == "smoke-book":
        run(*book, "build", "--preset", "smoke")
    elif args.task == "pytest":
        run(PY, "-m", "pytest", "-q", "-rs")
    elif args.task == "test":
        browser()
        run(*book, "build", "--preset", "smoke")
        run(PY, "-m", "pytest", "-q", "-rs")
    elif args.task == "student":  # the committed copies: colab/reader, colab/student
        run(*book, "copies")
    elif args.task == "lab":
        run(PY, "-m", "pip", "install", "--quiet", "jupyterlab")
        run(PY, "-m", "jupyter", "lab", "book/")


if __name__ == "__main__":
    main()
