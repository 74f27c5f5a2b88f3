"""Two processes (gloo on CPU) train exactly like one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = r'''
import json, sys
import numpy as np, torch
from twotower.training import distributed
from twotower.config import ModelConfig, TrainConfig
from twotower.data.windows import batch_windows
from twotower.models.tower_lm import TwoTowerLM
from twotower.data.objectives import Objective
from twotower.training.trainer import WindowBatches, train

family, out = sys.argv[1], sys.argv[2]
dropout = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
stop_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # die after this step
world = distributed.init_from_env()
torch.manual_seed(0)
cfg = ModelConfig(family=family, n_layers=1, d_model=16, n_heads=2, d_ff=32,
                  vocab_size=64, max_len=12, dropout=dropout)
model = TwoTowerLM(cfg)
init = {k: v.tolist() for k, v in model.state_dict().items()}
rng = np.random.default_rng(0)
windows = rng.integers(5, 64, size=(40, 12))
windows[:, 0] = 2
windows[::3, 9:] = 0  # padding: processes hold different numbers of targets
# The windows rank 1 of 2 gets at step 0 become [CLS] + padding: that process has no
# target at all (its loss is 0 with zero gradients, and DDP's gradient exchange must
# still happen, or the run hangs).
windows[:, 1] = np.arange(40) + 5  # a marker: which window is which
# With dropout: 9 rows, so the processes hold 5 and 4 rows, draw different numbers of
# random numbers, and their random states differ.
batch = 9 if dropout else 8
windows[batch_windows(windows, 0, batch, 1)[1::2, 1] - 5, 1:] = 0
obj = Objective(family, (0, 1, 2, 3, 4), 0, 2, 4, 64)
batches = WindowBatches(windows, obj, batch_size=batch, seed=1)
assert batches.train_batch(0).rows(slice(1, None, 2)).n_targets == 0
tcfg = TrainConfig(steps=6, batch_size=batch, lr=3e-3, warmup_steps=2, precision="fp32",
                   device="cpu", log_every=1, eval_every=0, checkpoint_every=2)


class Die:
    def on_step_end(self, state):
        if state["step"] == stop_at:
            sys.exit(0)  # every process, after the checkpoint of step 2, before 4's


train(model, model.loss, batches, tcfg,
      run_dir=out, progress=False, callbacks=[Die()])
if world.is_main:
    w = {k: v.tolist() for k, v in model.state_dict().items()}
    json.dump({"final": w, "init": init}, open(out + "/weights.json", "w"))
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp: Path, family: str, nproc: int, *extra, name: str = ""
         ) -> tuple[list[float], dict]:
    out = tmp / (name or f"{family}-{nproc}")
    out.mkdir(exist_ok=True)
    script = tmp / "train_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), family, str(out), *map(str, extra)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *cmd[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    weights = out / "weights.json"
    return losses, json.loads(weights.read_text()) if weights.exists() else {}


def test_two_processes_resumed_with_dropout_end_bit_identical(tmp_path):
    """Each process's own random state (its dropout masks) is saved and restored: two
    processes stopped after step 3 and restarted end exactly like two that never
    stopped."""
    whole, w_whole = _run(tmp_path, "causal", 2, 0.3, name="whole")
    _, nothing = _run(tmp_path, "causal", 2, 0.3, 3, name="cut")
    assert nothing == {} and (tmp_path / "cut" / "joint" / "step-0000002").exists()
    resumed, w_resumed = _run(tmp_path, "causal", 2, 0.3, name="cut")
    assert resumed == whole  # metrics.jsonl: the same lines, bit for bit
    assert w_resumed["final"] == w_whole["final"]


@pytest.mark.parametrize("family", ["causal", "mlm"])
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path,
                                                                           family):
    one, w_one = _run(tmp_path, family, 1)
    two, w_two = _run(tmp_path, family, 2)
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=1e-5, abs=1e-6)
    moved = max(np.abs(np.subtract(w_one["final"][n], w_one["init"][n])).max()
                for n in w_one["init"])
    assert moved > 1e-3  # it trained: the comparison is not between two no-ops
    w_one, w_two = w_one["final"], w_two["final"]
    for name in w_one:
        np.testing.assert_allclose(w_two[name], w_one[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def _cli(corpus: Path, out: Path, family: str) -> list[str]:
    return ["-m", "twotower", "run", "--preset", "smoke", "--family", family,
            "--corpus", str(corpus), "--steps", "12", "--readout-steps", "6",
            "--checkpoint-every", "4", "--dropout", "0", "--device", "cpu",
            "--precision", "fp32", "--quiet", "--out", str(out)]


@pytest.mark.parametrize("family", ["bilm"])
def test_the_run_command_resumed_under_torchrun_matches_one_process(
        tmp_path, tiny_corpus, family, kill_when):
    """A run started as one process and killed in the middle of a checkpoint write is
    finished by ``torchrun --nproc_per_node=2 -m twotower run ...`` (the same command):
    every phase's losses and the preference table follow the uninterrupted 1-process
    run, and only rank 0 reports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TWOTOWER_CACHE": str(tmp_path / "c")}
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, *_cli(tiny_corpus, one, family)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]

    kill_when([sys.executable, *_cli(tiny_corpus, two, family)],
              {**env, "TWOTOWER_FAULT_PAUSE_SAVE": "8"},
              lambda: (two / "joint" / "PAUSED-IN-SAVE").exists())
    assert (two / "joint" / "latest").read_text().strip() == "step-0000004"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    proc = subprocess.run([*torchrun, *_cli(tiny_corpus, two, family)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert log.count("done in") == 1 and log.count("data: tiny.txt") == 1, log

    curves = {}
    for out in (one, two):
        records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        curves[out] = [(r["phase"], r["step"], r.get("loss", r.get("val_loss")))
                       for r in records]
    assert [c[:2] for c in curves[two]] == [c[:2] for c in curves[one]]  # no duplicates
    assert [c[2] for c in curves[two]] == pytest.approx([c[2] for c in curves[one]],
                                                        rel=1e-4)
    pref = {out: np.genfromtxt(out / "preference.csv", delimiter=",", names=True,
                               usecols=("id", "pref"), dtype=float) for out in (one, two)}
    np.testing.assert_array_equal(pref[two]["id"], pref[one]["id"])
    np.testing.assert_allclose(pref[two]["pref"], pref[one]["pref"], atol=1e-3)
