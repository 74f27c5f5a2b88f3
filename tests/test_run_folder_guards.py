"""A run folder under concurrency and damage: one writer at a time, no empty path, a
rerun keeps what the first run measured, and plain words for a full disk, a damaged
``state.pt`` and the files' permissions (issue #15, items 2, 5, 8 and 9)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from torch import nn

from cli_helpers import cli, lines
from twotower import atomic
from twotower.cli import build_parser, config_from_args
from twotower.errors import TwotowerError
from twotower.experiments import controls, pipeline
from twotower.training import checkpoint as ckpt


def fast_args(corpus: Path, out, *extra) -> list[str]:
    return ["run", "--preset", "smoke", "--corpus", str(corpus), "--steps", "6",
            "--readout-steps", "4", "--precision", "fp32", "--device", "cpu", "--quiet",
            "--out", str(out), *extra]


def fast_config(corpus: Path, out: Path, *extra):
    return config_from_args(build_parser().parse_args(fast_args(corpus, out, *extra)))


_PROBE = ("import sys\nfrom filelock import FileLock, Timeout\ntry:\n"
          "    FileLock(sys.argv[1]).acquire(timeout=0)\nexcept Timeout:\n"
          "    sys.exit(3)\n")


def lock_is_free(folder: Path) -> bool:
    """Whether another process can take the run folder's lock right now."""
    if not folder.exists():
        return True
    probe = subprocess.run([sys.executable, "-c", _PROBE, str(folder / ".run.lock")],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode in (0, 3), probe.stderr
    return probe.returncode == 0


# --- (2) one process writes a run folder at a time ------------------------------------

@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line_naming_the_first(
        tmp_path, tiny_corpus, capsys):
    """The first run is stopped inside its step-2 save (holding the folder); the same
    command started beside it ends in one line naming the first one's pid and writes
    nothing. Then the first is killed with SIGKILL: the lock it leaves behind does not
    block the same command, which finishes the run with each metrics line once."""
    out = tmp_path / "run"
    args = fast_args(tiny_corpus, out, "--checkpoint-every", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOTOWER_FAULT_PAUSE_SAVE": "2"}
    first = subprocess.Popen([sys.executable, "-m", "twotower", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    paused = out / "joint" / "PAUSED-IN-SAVE"
    try:
        deadline = time.monotonic() + 300
        while not paused.exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first run never reached its save"
            time.sleep(0.1)
        before = (out / "metrics.jsonl").read_bytes()
        code, _, err = cli(args, capsys)
        assert code == 2 and len(lines(err)) == 1, f"exit status {code}: {err}"
        assert f"in use by process {first.pid}" in err and "rerun" in err
        assert (out / "metrics.jsonl").read_bytes() == before
        assert not (out / "results.json").exists()
    finally:
        first.kill()
        first.wait()
    paused.unlink()
    code, _, err = cli(args, capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text()
               .splitlines()]
    keys = collections.Counter((r["phase"], r["step"], "loss" in r) for r in records)
    assert max(keys.values()) == 1, keys
    assert lock_is_free(out)


@pytest.mark.parametrize("failure", [RuntimeError("a bug in a phase"),
                                     KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_the_run_folder_is_held_while_a_run_works_and_free_after_it_fails(
        failure, tmp_path, tiny_corpus, monkeypatch):
    out = tmp_path / "run"
    held = []

    def fails(*args, **kwargs):
        held.append(not lock_is_free(out))
        raise failure

    monkeypatch.setattr(pipeline, "prepare_data", fails)
    with pytest.raises(type(failure)):
        pipeline.run(fast_config(tiny_corpus, out), out, progress=False)
    assert held == [True], "the run did not hold its folder"
    assert lock_is_free(out)
    assert not (out / ".run.owner").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, tiny_corpus,
                                                       monkeypatch):
    """``kill -9`` leaves the lock file and an owner file naming a dead pid; the next
    run takes the folder (and says who holds it, itself, while it works)."""
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".run.lock").write_text("")
    owner = {"pid": dead.pid, "host": socket.gethostname()}
    (out / ".run.owner").write_text(json.dumps(owner))
    seen = []

    def stop(*args, **kwargs):
        seen.append(json.loads((out / ".run.owner").read_text())["pid"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(pipeline, "prepare_data", stop)
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.run(fast_config(tiny_corpus, out), out, progress=False)
    assert seen == [os.getpid()]


# --- (5) an empty path is refused -----------------------------------------------------

@pytest.mark.parametrize("option", ["--out", "--cache-dir", "--corpus"])
@pytest.mark.parametrize("empty", ["", "   "], ids=["empty", "blank"])
def test_an_empty_path_on_the_command_line_is_refused_in_one_line(
        option, empty, tmp_path, tiny_corpus, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run started with an empty path")

    monkeypatch.setattr(pipeline, "run", refuse)
    monkeypatch.chdir(tmp_path)
    argv = [*fast_args(tiny_corpus, tmp_path / "run"), option, empty]  # the last wins
    code, out, err = cli(argv, capsys)
    assert code == 2 and len(lines(err)) == 1 and out == ""
    assert option in err and "empty" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("empty", ["", "  "], ids=["empty", "blank"])
@pytest.mark.parametrize("entry", ["run", "run_control"])
def test_an_empty_run_folder_is_refused_by_the_run_functions(
        entry, empty, tmp_path, tiny_corpus, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run started with an empty path")

    monkeypatch.setattr(pipeline, "prepare_data", refuse)
    monkeypatch.chdir(tmp_path)
    cfg = fast_config(tiny_corpus, tmp_path / "run")
    run = pipeline.run if entry == "run" else controls.run_control
    if entry == "run_control":
        cfg = dataclasses.replace(cfg, control="untrained")
    with pytest.raises(TwotowerError, match="empty") as err:
        run(cfg, empty, progress=False)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# --- (8) a rerun keeps what the first run measured ------------------------------------

@pytest.mark.slow
def test_rerunning_a_finished_run_keeps_each_phases_training_loss(tmp_path,
                                                                  tiny_corpus):
    out = tmp_path / "run"
    cfg = fast_config(tiny_corpus, out)
    first = pipeline.run(cfg, out, progress=False)
    phases = ("joint_training", "readout_training")
    losses = {p: first[p]["train_loss"] for p in phases}
    again = pipeline.run(cfg, out, progress=False)  # nothing left to train
    saved = json.loads((out / "results.json").read_text())
    for phase in phases:
        assert again[phase]["train_loss"] == saved[phase]["train_loss"] == losses[phase]
        assert saved[phase]["tokens_per_s"] == first[phase]["tokens_per_s"]
    (out / "results.json").unlink()  # as if killed after the last phase trained
    pipeline.run(cfg, out, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert {p: saved[p]["train_loss"] for p in phases} == losses


# --- (9) plain words: a full disk, a damaged state.pt, permissions -------------------

def _tiny_state() -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    return model, {"optimizer": {"moments": [torch.ones(64, 64)]}, "step": 1}


def _save(folder: Path, step: int) -> Path:
    model, state = _tiny_state()
    return ckpt.save_checkpoint(folder, step, model, state, {"phase": "joint"})


def _has_dev_full() -> bool:
    """``/dev/full`` (a device that answers every write with ENOSPC, as a full disk
    does) is there. Only writers that open the path itself may use it: safetensors
    writes a temporary file beside its target and renames it onto it, which would
    replace the device."""
    return os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def _real_torch_full_disk_error() -> RuntimeError:
    """What torch.save itself raises when the disk is full: ``[enforce fail at
    inline_container.cc:...] . unexpected pos ...``, no errno."""
    try:
        _real_torch_save(torch.zeros(100_000), "/dev/full")
    except RuntimeError as err:
        return err
    raise AssertionError("torch.save into /dev/full did not fail")


_real_torch_save = torch.save


def _torch_writes_to_a_full_disk(obj, f, *args, **kwargs):
    """torch.save into a file object on /dev/full (a real ENOSPC from write())."""
    with open("/dev/full", "wb") as full:
        return _real_torch_save(obj, full, *args, **kwargs)


def _torch_file_writer_fails(obj, f, *args, **kwargs):
    err = _real_torch_full_disk_error()
    assert "inline_container" in str(err), err  # torch's own words, no errno
    raise err


def _safetensors_writes_to_a_full_disk(tensors, filename, metadata=None):
    """safetensors' own error, as it words a failed write (its text for a file over
    RLIMIT_FSIZE is "... I/O error: File too large (os error 27)"), for ENOSPC."""
    raise SafetensorError("Error while serializing: I/O error: No space left on device "
                          "(os error 28)")


@pytest.mark.skipif(not _has_dev_full(), reason="needs the device /dev/full")
@pytest.mark.parametrize("where", ["torch-file-writer", "torch-write-call",
                                   "safetensors"])
def test_a_full_disk_during_a_checkpoint_is_one_plain_line(where, tmp_path,
                                                           monkeypatch):
    good = _save(tmp_path, 2)
    if where == "torch-file-writer":  # torch's own text hides the errno: "[enforce
        monkeypatch.setattr(torch, "save", _torch_file_writer_fails)  # fail at ...]"
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda path: usage._replace(free=20_000))
    elif where == "torch-write-call":
        monkeypatch.setattr(torch, "save", _torch_writes_to_a_full_disk)
    else:
        monkeypatch.setattr(ckpt, "save_file", _safetensors_writes_to_a_full_disk)
    with pytest.raises(TwotowerError) as err:
        _save(tmp_path, 3)
    message = str(err.value)
    assert "\n" not in message and "enforce fail" not in message
    assert message.startswith("No space left on device: could not write checkpoint")
    assert f"or more in {tmp_path}" in message and "step-0000003" in message
    assert f"last good checkpoint: {good}" in message
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert not list(tmp_path.glob(".tmp-step-*"))


def test_a_random_bytes_state_pt_is_called_damaged_not_code(tmp_path):
    path = _save(tmp_path, 1)
    (path / ckpt.STATE).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(TwotowerError) as err:
        ckpt.load_state(path)
    message = str(err.value)
    assert "\n" not in message and "run code" not in message
    assert "damaged or not a checkpoint" in message and str(path) in message


def _run_code():
    return "ran"


class _Payload:
    def __reduce__(self):
        return (_run_code, ())


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "older-format"])
def test_a_state_pt_with_a_pickled_call_is_still_refused_as_code(zipped, tmp_path):
    path = _save(tmp_path, 1)
    torch.save({"extra": _Payload()}, path / ckpt.STATE,
               _use_new_zipfile_serialization=zipped)
    with pytest.raises(TwotowerError, match="would run code"):
        ckpt.load_state(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664),
                                         (0o077, 0o600)])
def test_run_files_get_the_users_umask(umask, mode, tmp_path):
    before = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "results.json", "{}")
        saved = _save(tmp_path / "joint", 1)
    finally:
        os.umask(before)
    files = [tmp_path / "results.json", tmp_path / "joint" / ckpt.LATEST,
             *(saved / name for name in (ckpt.WEIGHTS, ckpt.STATE, ckpt.META))]
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == mode, file
    assert stat.S_IMODE(saved.stat().st_mode) == 0o777 & ~umask


def test_two_processes_saving_a_step_never_share_a_temporary_folder(tmp_path,
                                                                    monkeypatch):
    """The temporary folder is named after the process; a save removes what crashed
    saves left behind but never another live process's save in progress."""
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        writing = tmp_path / f".tmp-step-0000009.{alive.pid}"
        crashed = tmp_path / f".tmp-step-0000009.{gone.pid}"
        for folder in (writing, crashed):
            folder.mkdir()
        names = []
        monkeypatch.setattr(ckpt, "_fault_injection_pause",
                            lambda tmp, step: names.append(tmp.name))
        _save(tmp_path, 9)
        assert names == [f".tmp-step-0000009.{os.getpid()}"]
        assert writing.is_dir() and not crashed.exists()
    finally:
        alive.kill()
        alive.wait()
