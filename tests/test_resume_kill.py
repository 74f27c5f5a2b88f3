"""A run killed with SIGKILL (once in the middle of a checkpoint write, once between
checkpoints) and restarted with the same command ends bit-identical to an uninterrupted
run, and the last good checkpoint survives the crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDS = ("the a river city north south old new king queen built flows near over "
         "war peace song album band played early late stone bridge great small").split()


def _corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for article in range(30):
        lines += ["", f" = Article {article} = ", ""]
        for _ in range(8):
            words = rng.choice(WORDS, size=60)
            lines.append(" " + " ".join(words) + " . ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _command(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "twotower", "run", "--preset", "smoke", "--family",
            "causal", "--corpus", str(corpus), "--steps", "24", "--readout-steps", "8",
            "--checkpoint-every", "4", "--device", "cpu", "--precision", "fp32",
            "--out", str(out), "--quiet"]


def _env(tmp: Path, **extra) -> dict:
    return {**os.environ, "TWOTOWER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
            **extra}


def _run_to_end(cmd, env) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _start_and_kill_when(cmd, env, ready, timeout=300.0) -> None:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "run never reached the kill point"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _final_files(out: Path) -> dict[str, bytes]:
    files = {}
    for phase in ("joint", "readouts"):
        latest = (out / phase / "latest").read_text().strip()
        files[phase] = (out / phase / latest / "model.safetensors").read_bytes()
    files["preference"] = (out / "preference.csv").read_bytes()
    return files


def test_sigkill_during_a_save_and_between_saves_then_resume_is_bit_identical(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    _run_to_end(_command(corpus, reference), _env(tmp_path))

    # 1. Killed while step 8's checkpoint is half written: step 4 must stay intact.
    joint = crashed / "joint"
    _start_and_kill_when(_command(corpus, crashed),
                         _env(tmp_path, TWOTOWER_FAULT_PAUSE_SAVE="8"),
                         lambda: (joint / "PAUSED-IN-SAVE").exists())
    assert (joint / "latest").read_text().strip() == "step-0000004"
    assert (joint / ".tmp-step-0000008").exists()  # the interrupted save
    assert not (joint / "step-0000008").exists()
    (joint / "PAUSED-IN-SAVE").unlink()

    # 2. Killed between checkpoints, after step 12 was saved.
    _start_and_kill_when(_command(corpus, crashed), _env(tmp_path),
                         lambda: (joint / "step-0000012" / "meta.json").exists())
    assert not (crashed / "results.json").exists()

    # 3. The same command finishes the run.
    _run_to_end(_command(corpus, crashed), _env(tmp_path))
    want, got = _final_files(reference), _final_files(crashed)
    for name in want:
        assert got[name] == want[name], f"{name} differs after kill + resume"
