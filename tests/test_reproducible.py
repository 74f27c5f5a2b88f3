"""The same command gives the same bits on a CPU whatever the environment says about
threads: a run fixes its own thread count (``--threads``, by default this machine's
cores) and records it (``book/when_things_go_wrong.md``, *Same command, same bits*)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from twotower.cli import build_parser, config_from_args
from twotower.config import RunConfig, config_to_dict, run_config_from_dict
from twotower.errors import TwotowerError
from twotower.experiments import pipeline
from twotower.training import runtime
# the function itself: conftest makes this process's runs use one thread
from twotower.training.runtime import machine_threads


def _command(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "twotower", "run", "--preset", "smoke", "--corpus",
            str(corpus), "--steps", "4", "--readout-steps", "2", "--precision", "fp32",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


def _run(command: list[str], cache: Path, threads: str) -> None:
    env = {**os.environ, "TWOTOWER_CACHE": str(cache), "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    proc = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _fingerprint(out: Path) -> dict[str, str]:
    """sha256 of the final weights of each phase, the scores and preference.csv."""
    files = [out / phase / (out / phase / "latest").read_text().strip() /
             "model.safetensors" for phase in ("joint", "readouts")]
    files += [out / "scores.npz", out / "preference.csv"]
    return {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in files}


@pytest.mark.slow
def test_the_same_command_gives_the_same_bits_whatever_omp_num_threads_says(
        tmp_path, corpus_writer):
    corpus = corpus_writer(tmp_path / "corpus.txt", n_articles=12, paragraphs=6)
    cache = tmp_path / "cache"  # one tokenizer for both runs
    prints = {}
    for threads in ("1", "2"):
        out = tmp_path / f"omp{threads}"
        _run(_command(corpus, out), cache, threads)
        prints[threads] = _fingerprint(out)
    assert prints["1"] == prints["2"]
    recorded = [json.loads((tmp_path / f"omp{n}" / "results.json").read_text())
                ["reproducibility"] for n in ("1", "2")]
    assert recorded[0] == recorded[1] and recorded[0]["threads"] >= 1


def test_the_default_thread_count_comes_from_the_machine_not_the_environment(
        monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cores = machine_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 3))
    monkeypatch.setenv("MKL_NUM_THREADS", str(cores + 3))
    assert machine_threads() == cores >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: two processes share them
    assert machine_threads() == max(1, cores // 2)


def test_a_default_thread_count_leaves_saved_configs_as_they_were():
    # config.json of runs made before the field existed must still match a rerun's
    default = config_to_dict(RunConfig())
    assert "threads" not in default
    assert run_config_from_dict(default) == RunConfig()
    pinned = RunConfig(threads=3)
    assert config_to_dict(pinned)["threads"] == 3
    assert run_config_from_dict(config_to_dict(pinned)) == pinned
    with pytest.raises(TwotowerError, match="threads"):
        RunConfig(threads=-1).validate()


@pytest.mark.slow
def test_a_run_resumed_on_a_machine_with_other_cores_keeps_its_thread_count(
        tmp_path, tiny_corpus, monkeypatch):
    args = ["run", "--preset", "smoke", "--corpus", str(tiny_corpus), "--steps", "4",
            "--readout-steps", "2", "--checkpoint-every", "2", "--precision", "fp32",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "whole")]
    cfg = config_from_args(build_parser().parse_args(args))
    monkeypatch.setattr(runtime, "machine_threads", lambda: 2)
    pipeline.run(cfg, tmp_path / "whole", progress=False)
    # a crash after step 2's checkpoint, then the same run on a 1-core machine
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "whole", crashed)
    for later in ("readouts", "joint/step-0000004", "results.json", "scores.npz",
                  "preference.csv"):
        path = crashed / later
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (crashed / "joint" / "latest").write_text("step-0000002")
    monkeypatch.setattr(runtime, "machine_threads", lambda: 1)
    resumed = pipeline.run(cfg, crashed, progress=False)
    assert resumed["reproducibility"]["threads"] == 2
    assert _fingerprint(crashed) == _fingerprint(tmp_path / "whole")
