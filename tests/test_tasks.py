"""tasks.py, the README's two commands: which torch it installs, how it makes the
virtual environment without ensurepip, when it skips, and what it says without root.

Nothing here installs anything: the commands tasks.py would run are recorded."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("tasks_under_test", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = tmp_path / ".venv"
    monkeypatch.setattr(module, "VENV", venv)
    monkeypatch.setattr(module, "PY", venv / "bin" / "python")
    monkeypatch.setattr(module, "STAMP", venv / ".twotower-setup")
    module.commands = []
    monkeypatch.setattr(module, "run", lambda *c, **k: module.commands.append(
        [str(part) for part in c]))
    return module


def test_without_a_gpu_torch_comes_from_the_cpu_index(tasks, monkeypatch, capsys):
    monkeypatch.setattr(tasks.subprocess, "run", lambda *a, **k:
                        subprocess.CompletedProcess(a, 1))  # torch not importable
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setattr(tasks, "answers", lambda url, timeout=5.0: True)
    tasks.install_torch()
    assert tasks.commands[-1][-2:] == ["--extra-index-url", tasks.TORCH_CPU_INDEX]
    assert "no NVIDIA GPU" in capsys.readouterr().out
    monkeypatch.setattr(tasks, "answers", lambda url, timeout=5.0: False)
    tasks.install_torch()  # the index does not answer: say so, use the configured ones
    assert tasks.commands[-1][-1] == tasks.TORCH
    assert "does not answer" in capsys.readouterr().out


def test_with_a_gpu_torch_comes_from_pypi(tasks, monkeypatch):
    monkeypatch.setattr(tasks.subprocess, "run", lambda args, **k:
                        subprocess.CompletedProcess(args, 0 if args[0] ==
                                                    "nvidia-smi" else 1))
    monkeypatch.setattr(tasks.shutil, "which", lambda name: "/usr/bin/" + name)
    tasks.install_torch()
    assert tasks.commands == [[str(tasks.PY), "-m", "pip", "install", "--quiet",
                               tasks.TORCH]]


def test_a_python_without_ensurepip_gets_pip_from_its_wheel(tasks, monkeypatch):
    made, bootstrapped = [], []

    class Builder:
        def __init__(self, with_pip, clear):
            self.with_pip = with_pip

        def create(self, folder):
            if self.with_pip:  # what Debian's python3 without python3-venv does
                raise subprocess.CalledProcessError(1, ["ensurepip"])
            made.append(folder)

    monkeypatch.setattr(tasks.venv, "EnvBuilder", Builder)
    monkeypatch.setattr(tasks, "bootstrap_pip", lambda: bootstrapped.append(True))
    tasks.make_venv()
    assert made == [tasks.VENV] and bootstrapped == [True]


def test_setup_is_skipped_until_pyproject_changes(tasks, monkeypatch):
    tasks.PY.parent.mkdir(parents=True)
    tasks.PY.write_text("")
    tasks.STAMP.write_text("done")
    monkeypatch.setattr(tasks, "make_venv", lambda: pytest.fail("set up again"))
    tasks.setup()
    assert tasks.commands == []


def test_without_root_and_chromium_the_browser_tests_are_skipped_with_a_reason(
        tasks, monkeypatch, capsys):
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 1000)
    tasks.browser()
    out = capsys.readouterr().out
    assert "needs root" in out and "will be skipped" in out


def test_an_old_python_is_refused_in_one_line(tasks, monkeypatch, capsys):
    monkeypatch.setattr(tasks.sys, "version_info", (3, 9, 0))
    with pytest.raises(SystemExit) as stop:
        tasks.setup()
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: twotower needs Python 3.10")


def test_tasks_needs_only_the_standard_library():
    tree = ast.parse((ROOT / "tasks.py").read_text(encoding="utf-8"))
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)
    done = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "tasks.py"), "-h"],
                          capture_output=True, text=True)  # no site-packages at all
    assert done.returncode == 0, done.stderr
    assert "{setup,book,smoke-book,test,pytest,browser,student,lab}" in done.stdout
