"""``python -m twotower``: argument errors, an end-to-end run, resume, refusal, offline.

The CLI runs in-process (``twotower.cli.main``); the end-to-end runs use a ~30-paragraph
local corpus and the ``smoke`` preset cut to a few steps, in fp32 on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_helpers import cli, lines
from twotower.training import checkpoint as ckpt
from twotower.experiments import pipeline
from twotower.cli import build_parser, config_from_args, main
from twotower.config import PRESETS
from twotower.errors import TwotowerError
from twotower.models.tower_lm import TwoTowerLM
from twotower.training.readouts import TokenScores


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fast_args(corpus: Path, out: Path, *extra) -> list[str]:
    return ["run", "--preset", "smoke", "--corpus", str(corpus), "--steps", "6",
            "--readout-steps", "4", "--precision", "fp32", "--device", "cpu", "--quiet",
            "--out", str(out), *extra]


# --- argument errors ------------------------------------------------------------------

BAD_ARGUMENTS = [
    (["--steps", "-5"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--readout-steps", "-1"], "--readout-steps"),
    (["--seed", "-1"], "--seed"),
    (["--lr", "-0.1"], "--lr"),
    (["--steps", "ten"], "--steps"),
    (["--preset", "huge"], "huge"),
    (["--family", "rnn"], "rnn"),
]


@pytest.fixture
def no_pipeline(monkeypatch):
    """A bad argument that slipped through must fail fast, not start a real run."""
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline started although an argument was bad")

    monkeypatch.setattr(pipeline, "run", refuse)


@pytest.mark.parametrize("extra, named", BAD_ARGUMENTS)
def test_bad_arguments_exit_2_naming_the_argument_without_a_traceback(
        extra, named, tmp_path, capsys, no_pipeline):
    code, out, err = cli(["run", "--out", tmp_path / "run", *extra], capsys)
    assert code == 2
    assert "Traceback" not in err and out == ""
    assert "error" in lines(err)[-1] and named in lines(err)[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [["--steps", "-5"], ["--preset", "huge"],
                                   ["--family", "rnn"]])
def test_bad_arguments_print_exactly_one_line(extra, tmp_path, capsys, no_pipeline):
    code, _, err = cli(["run", "--out", tmp_path / "run", *extra], capsys)
    assert code == 2 and len(lines(err)) == 1 and lines(err)[0].startswith("error")


def test_a_missing_corpus_is_one_error_line_and_exit_2(tmp_path, capsys):
    code, out, err = cli(fast_args(tmp_path / "nowhere.txt", tmp_path / "run"), capsys)
    assert code == 2
    assert lines(err) == [lines(err)[0]] and lines(err)[0].startswith("error: ")
    assert "nowhere.txt" in err and "Traceback" not in err


def test_an_interrupted_run_says_how_to_resume(tmp_path, capsys, monkeypatch,
                                               tiny_corpus):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run", interrupted)
    code, _, err = cli(fast_args(tiny_corpus, tmp_path / "run"), capsys)
    assert code == 130 and "rerun the same command" in err and "Traceback" not in err


def test_presets_lists_every_preset_and_family(capsys):
    code, out, _ = cli(["presets"], capsys)
    assert code == 0
    for name in PRESETS:
        assert name in out
    assert all(family in out for family in ("causal", "mlm", "bilm"))


def test_command_line_overrides_reach_the_config(tmp_path):
    args = build_parser().parse_args(fast_args(Path("c.txt"), tmp_path, "--seed", "3",
                                               "--family", "mlm"))
    cfg = config_from_args(args)
    assert cfg.model.family == "mlm" and cfg.train.seed == cfg.readout.seed == 3
    assert cfg.train.steps == 6 and cfg.readout.steps == 4
    assert cfg.train.precision == cfg.readout.precision == "fp32"
    assert cfg.train.warmup_steps < 6 and cfg.readout.warmup_steps < 4
    assert cfg.data.corpus == "c.txt"
    assert not cfg.train.detect_anomaly
    args = build_parser().parse_args(fast_args(Path("c.txt"), tmp_path,
                                               "--detect-anomaly"))
    assert config_from_args(args).train.detect_anomaly


def test_dropout_override_reaches_the_model_config(tmp_path):
    args = build_parser().parse_args(fast_args(Path("c.txt"), tmp_path, "--dropout",
                                               "0"))
    assert config_from_args(args).model.dropout == 0.0


@pytest.mark.parametrize("extra, named", [
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--dropout", "1"], "dropout"),
    (["--seed", str(2**31)], "seed"), (["--steps", str(10**10)], "steps"),
], ids=["lr-nan", "lr-inf", "dropout-1", "seed-too-big", "steps-too-many"])
def test_values_out_of_range_are_refused_in_one_line(extra, named, tmp_path, capsys,
                                                      no_pipeline):
    code, out, err = cli(["run", "--out", tmp_path / "run", *extra], capsys)
    assert code == 2 and out == "" and len(lines(err)) == 1
    assert lines(err)[0].startswith("error") and named in lines(err)[0]
    assert not (tmp_path / "run").exists()


NUMERIC_OPTIONS = ["--seed", "--steps", "--readout-steps", "--batch-size", "--lr",
                   "--checkpoint-every", "--dropout"]
number_text = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1e309", "-0", "0x10", "1_000", "٣", "1.5", "nan",
                     "-inf", "\x00", "9" * 400]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC_OPTIONS), value=number_text)
def test_any_value_of_a_numeric_option_gives_a_valid_config_or_one_error_line(
        option, value, tmp_path, capsys, monkeypatch):
    """Property: whatever text follows a numeric option, the CLI either builds a config
    that passes validation (and would start the run) or exits 2 with one line naming
    the option, never a traceback; nothing is written before the arguments are good."""
    started = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, *a, **k: started.append(cfg) or
                        (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "never"
    code, _, err = cli(["run", "--out", out, f"{option}={value}"], capsys)
    assert "Traceback" not in err
    if started:
        assert code == 130
        started[0].validate()  # what reached the pipeline is a valid config
    else:
        assert code == 2 and len(lines(err)) == 1 and lines(err)[0].startswith("error")
        named = option.lstrip("-").replace("-", "_").split("_")[0]
        assert named in lines(err)[0].replace("-", "_")
    assert not out.exists()


@pytest.mark.parametrize("failure, expected", [
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 98304000000 bytes."),
     "out of memory"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "out of memory"),
    (OSError(28, "No space left on device", "runs/x/scores.npz"),
     "(No space left on device); free disk space"),
    (PermissionError(13, "Permission denied", "runs/x"),
     "(Permission denied); choose a folder you can write to"),
], ids=["python-memory", "cpu-allocator", "cuda-oom", "disk-full", "no-permission"])
def test_resource_failures_end_in_one_line_that_says_how_to_go_on(
        failure, expected, tmp_path, capsys, monkeypatch, tiny_corpus):
    def fails(*args, **kwargs):
        raise failure

    monkeypatch.setattr(pipeline, "run", fails)
    code, _, err = cli(fast_args(tiny_corpus, tmp_path / "run"), capsys)
    assert code == 2 and len(lines(err)) == 1 and "Traceback" not in err
    assert expected in err and "rerun the same command" in err


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys,
                                                          tiny_corpus):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, _, err = cli(fast_args(tiny_corpus, target), capsys)
    assert code == 2 and lines(err) == [lines(err)[0]]
    assert "is a file, not a run directory" in err
    assert target.read_text() == "keep me"


def test_an_unexpected_runtime_error_is_not_disguised(tmp_path, capsys, monkeypatch,
                                                      tiny_corpus):
    """A bug is a bug: only resource failures become one-line messages."""
    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(pipeline, "run", bug)
    with pytest.raises(RuntimeError, match="shapes"):
        main(fast_args(tiny_corpus, tmp_path / "run"))


# --- an end-to-end run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_corpus):
    """One CLI run on the tiny corpus: ``(run directory, stdout, metrics after it)``."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(fast_args(tiny_corpus, out))
    assert code == 0
    return out, (out / "metrics.jsonl").read_text(encoding="utf-8")


@pytest.mark.slow
def test_run_writes_the_whole_run_directory(finished_run):
    out, _ = finished_run
    for name in ("config.json", "metrics.jsonl", "scores.npz", "preference.csv",
                 "results.json"):
        assert (out / name).is_file(), name
    for phase in ("joint", "readouts"):
        last = ckpt.latest_checkpoint(out / phase)
        assert last is not None and (last / ckpt.WEIGHTS).is_file()
    assert ckpt.latest_checkpoint(out / "joint").name == "step-0000006"
    assert ckpt.latest_checkpoint(out / "readouts").name == "step-0000004"
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["family"] == "causal" and config["train"]["steps"] == 6
    df = pd.read_csv(out / "preference.csv", keep_default_na=False, na_values=[""])
    assert list(df.columns) == ["token", "id", "count", "ll_a", "ll_b", "pref",
                                "pref_se"]
    assert len(df) > 10 and (df["count"] >= 1).all()
    assert df.loc[df["count"] < config["min_count"], "pref"].isna().all()
    assert df.loc[df["count"] >= config["min_count"], "pref"].notna().all()
    results = json.loads((out / "results.json").read_text())
    for key in ("scores", "preference", "split_half", "joint_training",
                "readout_training", "parameters", "data"):
        assert key in results, key
    scores = TokenScores.load(out / "scores.npz")
    assert results["scores"]["scored_tokens"] == scores.target.size == df["count"].sum()
    metrics = [json.loads(line)
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {m["phase"] for m in metrics} == {"joint", "readouts"}


@pytest.mark.slow
def test_rerunning_the_same_command_resumes_without_training_again(finished_run,
                                                                   tiny_corpus, capsys):
    out, metrics_before = finished_run
    weights = (ckpt.latest_checkpoint(out / "joint") / ckpt.WEIGHTS).read_bytes()
    scores = TokenScores.load(out / "scores.npz")
    code, stdout, err = cli(fast_args(tiny_corpus, out), capsys)
    assert code == 0, err
    metrics_after = (out / "metrics.jsonl").read_text(encoding="utf-8")
    assert metrics_after == metrics_before  # no new training-step lines
    last = ckpt.latest_checkpoint(out / "joint")
    assert (last / ckpt.WEIGHTS).read_bytes() == weights
    again = TokenScores.load(out / "scores.npz")
    np.testing.assert_array_equal(again.ll, scores.ll)


@pytest.mark.slow
def test_a_run_directory_made_with_another_config_is_refused_untouched(
        finished_run, tiny_corpus, capsys):
    out, _ = finished_run
    before = snapshot(out)
    code, _, err = cli(fast_args(tiny_corpus, out, "--seed", "1"), capsys)
    assert code == 2
    assert len(lines(err)) == 1 and lines(err)[0].startswith("error: ")
    assert "another config" in err and "seed" in err and "Traceback" not in err
    assert snapshot(out) == before


@pytest.mark.slow
def test_load_run_gives_back_the_model_readouts_and_preference(finished_run):
    out, _ = finished_run
    loaded = pipeline.load_run(out)
    assert isinstance(loaded.model, TwoTowerLM) and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    saved = TwoTowerLM(loaded.config.model)
    ckpt.load_weights(ckpt.latest_checkpoint(out / "joint"), saved)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                 loaded.model.state_dict().values()))
    assert list(loaded.preference.columns) == ["token", "count", "ll_a", "ll_b", "pref",
                                               "pref_se"]
    assert loaded.results["family"] == "causal"


def test_load_run_of_an_unfinished_directory_is_refused(tmp_path):
    with pytest.raises(TwotowerError, match="not a finished run"):
        pipeline.load_run(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [("d_model", 128), ("n_layers", 3),
                                          ("vocab_size", 4096)])
def test_a_run_whose_config_does_not_match_its_weights_is_refused(
        field, value, finished_run, tmp_path):
    """Someone edited config.json (or copied another run's): the weights no longer fit
    and loading refuses in one line instead of building a half-loaded model."""
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    config = json.loads((out / "config.json").read_text())
    config["model"][field] = value
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(TwotowerError) as err:
        pipeline.load_run(out)
    assert "\n" not in str(err.value) and "does not fit this model" in str(err.value)


DAMAGED_RUN_FILES = [
    ("config.json", None, "is missing"),
    ("config.json", b'{"model": {"family": "cau', "is unreadable"),
    ("config.json", b"\xff\xfe not utf-8", "is unreadable"),
    ("config.json", b"[1, 2]", "not an object"),
    ("config.json", ("model", []), "not an object"),
    ("config.json", ("model", "n_layers", "two"), "wrong type"),
    ("config.json", ("model", "dropout", 5.0), "dropout must be in [0, 1)"),
    ("config.json", ("train", "lr", -1.0), "train.lr must be"),
    ("config.json", ("model", "width", 3), "unknown ModelConfig fields"),
    ("results.json", b"", "is unreadable"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, damage, message", DAMAGED_RUN_FILES,
                         ids=[f"{n}-{m.split()[0]}-{i}" for i, (n, _, m) in
                              enumerate(DAMAGED_RUN_FILES)])
def test_a_damaged_or_edited_run_directory_is_refused_in_one_line(
        name, damage, message, finished_run, tmp_path):
    import shutil
    out = tmp_path / "copy"
    shutil.copytree(finished_run[0], out)
    file = out / name
    if damage is None:
        file.unlink()
    elif isinstance(damage, bytes):
        file.write_bytes(damage)
    else:  # (section, [field,] value): an edited value
        data = json.loads(file.read_text())
        *keys, value = damage
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
        file.write_text(json.dumps(data))
    with pytest.raises(TwotowerError) as err:
        pipeline.load_run(out)
    assert "\n" not in str(err.value) and message in str(err.value)
    assert name in str(err.value)


@pytest.mark.slow
def test_pipeline_run_is_reproducible_for_a_seed_and_differs_across_seeds(
        finished_run, tiny_corpus, tmp_path):
    out, _ = finished_run
    cfg = config_from_args(build_parser().parse_args(fast_args(tiny_corpus, out)))
    pipeline.run(cfg, tmp_path / "same", progress=False)
    for name in ("scores.npz", "preference.csv"):
        mine = (tmp_path / "same" / name).read_bytes()
        assert mine == (out / name).read_bytes(), name
    for phase in ("joint", "readouts"):
        mine = ckpt.latest_checkpoint(tmp_path / "same" / phase) / ckpt.WEIGHTS
        theirs = ckpt.latest_checkpoint(out / phase) / ckpt.WEIGHTS
        assert mine.read_bytes() == theirs.read_bytes(), phase
    pipeline.run(cfg.with_seed(1), tmp_path / "other", progress=False)
    other = TokenScores.load(tmp_path / "other" / "scores.npz")
    assert not np.array_equal(other.ll, TokenScores.load(out / "scores.npz").ll)


@pytest.mark.slow
def test_bundled_corpus_runs_with_the_network_blocked(tmp_path, capsys, no_network):
    code, stdout, err = cli(["run", "--preset", "smoke", "--source", "bundled",
                             "--corpus", "wikitext-2", "--steps", "2",
                             "--readout-steps", "2", "--precision", "fp32",
                             "--device", "cpu", "--quiet", "--out", tmp_path / "run"],
                            capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["source"] == "bundled"
    assert results["data"]["corpus"] == "wikitext-2"
    assert (tmp_path / "run" / "preference.csv").is_file()


def test_a_real_write_failure_during_a_save_is_one_line_and_the_rerun_finishes(
        tmp_path, tiny_corpus):
    """Not a mock: the operating system refuses to write files over 64 kB
    (``RLIMIT_FSIZE``, as a full disk would refuse any write), so the first checkpoint
    fails inside safetensors' own writer. The command ends in one line, leaves no
    half-written checkpoint, and once the limit is gone the same command finishes."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def small_files_only():  # in the child: writes past 64 kB fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    out = tmp_path / "run"
    command = [sys.executable, "-m", "twotower", *fast_args(tiny_corpus, out,
                                                            "--checkpoint-every", "2")]
    env = {**os.environ, "TWOTOWER_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    failed = subprocess.run(command, env=env, capture_output=True, text=True,
                            timeout=300, preexec_fn=small_files_only)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    last = lines(failed.stderr)[-1]
    assert last.startswith("error: could not write checkpoint") and "step-0000002" in last
    assert "File too large" in last and "last good checkpoint: none yet" in last
    assert not list((out / "joint").iterdir())  # nothing half-written left behind
    finished = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (out / "results.json").exists()
