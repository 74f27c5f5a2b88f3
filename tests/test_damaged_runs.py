"""A damaged run folder: one line naming the file, what is wrong, and the fix.

``book/when_things_go_wrong.md`` (section *A damaged run folder*) promises it, and that
the scores are never paired with weights other than the ones they were made from: every
run records in ``results.json`` the step and the SHA-256 of the towers and readouts that
made its ``scores.npz`` and ``preference.csv`` (and the files' own SHA-256), and
loading compares. One tiny run is trained once per module; each test damages a copy.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest

from twotower.analysis.stability import load_preference_run
from twotower.config import get_preset
from twotower.errors import TwotowerError
from twotower.experiments import pipeline
from twotower.training import checkpoint as ckpt

LOADERS = {"load_run": pipeline.load_run, "load_preference_run": load_preference_run}


def tiny_config(corpus: Path):
    """The smoke preset cut to 6 + 4 steps, a checkpoint every 2, fp32 on the CPU."""
    cfg = get_preset("smoke", "causal")
    fast = dict(precision="fp32", device="cpu", warmup_steps=1, eval_every=0,
                eval_batches=2, checkpoint_every=2, keep_checkpoints=2)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, corpus=str(corpus)),
        train=dataclasses.replace(cfg.train, steps=6, **fast),
        readout=dataclasses.replace(cfg.readout, steps=4, **fast))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_corpus) -> Path:
    out = tmp_path_factory.mktemp("damaged") / "run"
    pipeline.run(tiny_config(tiny_corpus), out, progress=False)
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A fresh copy of the finished run, to damage."""
    return Path(shutil.copytree(finished, tmp_path / finished.name))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(load, path: Path, *named: str) -> str:
    """Load ``path`` expecting one TwotowerError line that names each of ``named``;
    the folder is left exactly as it was."""
    before = snapshot(path)
    with pytest.raises(TwotowerError) as err:
        load(path)
    message = str(err.value)
    assert "\n" not in message, message
    for part in named:
        assert part in message, (part, message)
    assert snapshot(path) == before
    return message


@pytest.mark.parametrize("loader", LOADERS)
def test_a_truncated_scores_file_is_refused_in_one_line(loader, run_copy):
    scores = run_copy / "scores.npz"
    scores.write_bytes(scores.read_bytes()[:200])
    message = refused(LOADERS[loader], run_copy, str(scores), "truncated")
    assert "scored again" in message


def test_following_the_fix_for_damaged_scores_gives_the_same_scores_back(
        run_copy, tiny_corpus):
    scores = run_copy / "scores.npz"
    good = scores.read_bytes()
    scores.write_bytes(good[:200])
    (run_copy / "results.json").unlink()  # the fix the message gives, then a rerun
    pipeline.run(tiny_config(tiny_corpus), run_copy, progress=False)
    assert scores.read_bytes() == good
    pipeline.load_run(run_copy)


def test_deleted_readouts_are_refused_in_one_line(run_copy):
    shutil.rmtree(run_copy / "readouts")
    message = refused(pipeline.load_run, run_copy, str(run_copy / "readouts"))
    assert "trained again" in message


@pytest.mark.parametrize("loader", LOADERS)
def test_a_binary_preference_table_is_refused_in_one_line(loader, run_copy):
    table = run_copy / "preference.csv"
    table.write_bytes(b"\xff\xfe\x00" + random.Random(0).randbytes(4000))
    refused(LOADERS[loader], run_copy, str(table), "scored again")


@pytest.mark.parametrize("loader", LOADERS)
def test_an_edited_preference_table_is_refused_in_one_line(loader, run_copy):
    table = run_copy / "preference.csv"
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    table.write_text("".join(lines[:-1]), encoding="utf-8")  # one token fewer
    refused(LOADERS[loader], run_copy, str(table), "changed")


def test_weights_older_than_the_scores_are_refused_in_one_line(run_copy):
    shutil.rmtree(run_copy / "joint" / "step-0000006")
    message = refused(pipeline.load_run, run_copy,
                      str(run_copy / "joint" / "step-0000004"), "step 6")
    assert "gone" in message


@pytest.mark.parametrize("phase, older, newer", [
    ("joint", "step-0000004", "step-0000006"),
    ("readouts", "step-0000002", "step-0000004")])
def test_a_checkpoint_swapped_for_another_steps_is_refused_in_one_line(
        phase, older, newer, run_copy):
    folder = run_copy / phase
    shutil.copyfile(folder / older / ckpt.WEIGHTS, folder / newer / ckpt.WEIGHTS)
    message = refused(pipeline.load_run, run_copy, str(folder / newer))
    assert "replaced" in message


def test_readouts_trained_on_other_towers_are_refused_on_rerun(run_copy, tiny_corpus):
    joint = run_copy / "joint"
    shutil.copyfile(joint / "step-0000004" / ckpt.WEIGHTS,
                    joint / "step-0000006" / ckpt.WEIGHTS)
    (run_copy / "results.json").unlink()
    with pytest.raises(TwotowerError) as err:
        pipeline.run(tiny_config(tiny_corpus), run_copy, progress=False)
    message = str(err.value)
    assert "\n" not in message and str(run_copy / "readouts") in message
    assert "other towers" in message


def test_the_record_names_the_step_and_weights_of_every_artefact(finished):
    results = json.loads((finished / "results.json").read_text())
    made_from = results["made_from"]
    assert made_from["towers"]["step"] == 6 and made_from["readouts"]["step"] == 4
    assert all(len(made_from[k]["sha256"]) == 64 for k in ("towers", "readouts"))
    assert set(results["file_sha256"]) == {"scores.npz", "preference.csv"}
    meta = ckpt.load_meta(ckpt.latest_checkpoint(finished / "readouts"))
    assert meta["towers"] == made_from["towers"]  # what the readouts were trained on
    run = pipeline.load_run(finished)
    assert run.made_from == made_from


def test_a_run_made_before_the_record_loads_as_before(run_copy):
    results = json.loads((run_copy / "results.json").read_text())
    for key in ("made_from", "file_sha256"):
        del results[key]
    (run_copy / "results.json").write_text(json.dumps(results))
    shutil.rmtree(run_copy / "joint" / "step-0000006")  # unchecked: nothing to compare
    run = pipeline.load_run(run_copy)
    assert run.made_from["towers"]["step"] == 4
    pipeline.rescore(run)  # writes the record, for the weights it scored
    assert json.loads((run_copy / "results.json").read_text())["made_from"] == \
        run.made_from
    pipeline.load_run(run_copy)
