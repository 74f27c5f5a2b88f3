"""A run killed with SIGKILL (once in the middle of a checkpoint write, then at random
moments) and restarted with the same command each time ends bit-identical to an
uninterrupted run, and the last good checkpoint survives every crash."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _command(corpus: Path, out: Path, steps: int = 24, readout_steps: int = 8
             ) -> list[str]:
    return [sys.executable, "-m", "twotower", "run", "--preset", "smoke", "--family",
            "causal", "--corpus", str(corpus), "--steps", str(steps), "--readout-steps",
            str(readout_steps), "--checkpoint-every", "4", "--device", "cpu",
            "--precision", "fp32", "--threads", "1", "--out", str(out), "--quiet"]


def _env(tmp: Path, **extra) -> dict:
    return {**os.environ, "TWOTOWER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
            **extra}


def _run_to_end(cmd, env) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _final_files(out: Path) -> dict[str, bytes]:
    files = {}
    for phase in ("joint", "readouts"):
        latest = (out / phase / "latest").read_text().strip()
        files[phase] = (out / phase / latest / "model.safetensors").read_bytes()
    for name in ("preference.csv", "scores.npz"):
        files[name] = (out / name).read_bytes()
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    files["metrics.jsonl losses"] = [  # every logged loss; tokens/s is a timing
        (r["phase"], r["step"], r.get("loss"), r.get("val_loss")) for r in records]
    return files


@pytest.fixture
def corpus(tmp_path, corpus_writer) -> Path:
    return corpus_writer(tmp_path / "corpus.txt", n_articles=30, paragraphs=8)


def test_sigkill_during_a_save_and_at_random_moments_then_resume_is_bit_identical(
        tmp_path, corpus, kill_when):
    command = _command(corpus, tmp_path / "reference", steps=60, readout_steps=30)
    started = time.monotonic()
    _run_to_end(command, _env(tmp_path))
    whole = time.monotonic() - started
    crashed = tmp_path / "crashed"
    command = _command(corpus, crashed, steps=60, readout_steps=30)

    # 1. Killed while step 8's checkpoint is half written: step 4 must stay intact.
    joint = crashed / "joint"
    kill_when(command, _env(tmp_path, TWOTOWER_FAULT_PAUSE_SAVE="8"),
                         lambda: (joint / "PAUSED-IN-SAVE").exists())
    assert (joint / "latest").read_text().strip() == "step-0000004"
    assert list(joint.glob(".tmp-step-0000008.*"))  # the interrupted save (its pid)
    assert not (joint / "step-0000008").exists()
    (joint / "PAUSED-IN-SAVE").unlink()

    # 2. Killed at seeded random moments of the whole command (training, readouts,
    #    scoring, writing the results), each time restarted with the same command.
    rng = random.Random(7)
    landed = []
    for _ in range(4):
        proc = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.4, 0.85) * whole)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            saved = sorted(p.parent.name + "/" + p.name for p in
                           crashed.glob("*/step-*"))
            landed.append(saved[-1] if saved else "before the first checkpoint")
        else:
            assert proc.returncode == 0
            break
    print("killed after:", landed)
    assert len(landed) >= 2, f"only {len(landed)} kills landed mid-run"

    # 3. The same command finishes the run, bit for bit like the uninterrupted one.
    _run_to_end(command, _env(tmp_path))
    want, got = _final_files(tmp_path / "reference"), _final_files(crashed)
    for name in want:
        assert got[name] == want[name], f"{name} differs after kills + resume"
