"""The run cache: one name for every run and its exact inverse, one test of "finished",
one ``ensure`` that trains each kind of run with its own trainer, once."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twotower.config import FAMILIES, PRESETS, config_to_dict, get_preset
from twotower.errors import TwotowerError
from twotower.experiments import pipeline, store
from twotower.experiments.store import (RunSpec, config_for, ensure_finished,
                                        width_factor, width_name, width_variant)
from twotower.training.run_folder import RESULTS, is_finished, save_results

PACKAGE = Path(__file__).resolve().parents[1] / "twotower"
PIPELINE_RUN = pipeline.run  # the real one, before a test stands in for it

# every variant a chapter or an experiment puts in a run's name
VARIANTS_IN_USE = ["", "independent", "split", "untrained", "reseeded", "width0.5",
                   "width2", "ckpts", "multi30k-en-de", "brief-single", "brief-two"]

presets = st.sampled_from(list(PRESETS)) | st.from_regex(r"[A-Za-z0-9_.]{1,12}",
                                                         fullmatch=True)
variants = st.sampled_from(VARIANTS_IN_USE) | st.from_regex(r"[A-Za-z0-9_.-]{1,20}",
                                                            fullmatch=True)
specs = st.builds(RunSpec, presets, st.sampled_from(FAMILIES),
                  st.integers(0, 10**6), variants)


def old_run_path_name(preset, family, seed, variant=""):
    """The name ``twotower.notebook.run_path`` gave a run before the run cache."""
    return f"{preset}-{family}-seed{seed}" + (f"-{variant}" if variant else "")


# --- the name and its inverse ---------------------------------------------------------

@given(specs)
def test_a_spec_comes_back_from_its_name(spec):
    assert RunSpec.matches(spec.name)
    assert RunSpec.parse(spec.name) == spec


@given(specs)
def test_names_are_byte_identical_to_the_old_run_paths(spec):
    assert spec.name == old_run_path_name(spec.preset, spec.family, spec.seed,
                                          spec.variant)


@given(st.from_regex(r"[A-Za-z0-9_.-]{0,12}-(causal|mlm|bilm|gpt)-seed[0-9]{1,3}"
                     r"(-[A-Za-z0-9_.-]{0,8})?", fullmatch=True) | st.text(max_size=30))
def test_a_name_that_parses_is_rebuilt_byte_for_byte_and_others_are_refused(name):
    if RunSpec.matches(name):
        assert RunSpec.parse(name).name == name
    else:
        with pytest.raises(TwotowerError, match="not a run's name"):
            RunSpec.parse(name)


@pytest.mark.parametrize("name", [
    "r-seed0", "step-0000080", "smoke-causal-seed01", "smoke-causal-seed0-",
    "smoke-gpt-seed0", "smoke-causal-seed-1", "planted-1a2b3c4d", "seed3",
    "smoke-causal-seed0/untrained"])
def test_what_is_not_a_run_name_does_not_parse(name):
    assert not RunSpec.matches(name)


@pytest.mark.parametrize("fields", [
    ("smoke", "gpt", 0, ""), ("smoke", "causal", -1, ""), ("smoke", "causal", 1.5, ""),
    ("smoke", "causal", True, ""), ("smo-ke", "causal", 0, ""), ("", "causal", 0, ""),
    ("smoke", "causal", 0, "a/b"), ("smoke", "causal", 0, "two words")])
def test_a_spec_that_would_not_round_trip_is_refused(fields):
    with pytest.raises(TwotowerError):
        RunSpec(*fields)


def test_a_spec_names_its_folder_in_the_runs_folder(tmp_path):
    spec = RunSpec("small", "mlm", 2, "untrained")
    assert spec.path(tmp_path) == tmp_path / "small-mlm-seed2-untrained"
    assert spec.path(str(tmp_path)) == spec.path(tmp_path)


@pytest.mark.parametrize("factor", [0.5, 2, 0.25, 1.5, 3])
def test_a_width_variant_names_its_factor(factor):
    assert width_name(factor) == f"width{factor:g}"
    assert width_factor(width_name(factor)) == factor
    assert width_factor("widthless") is None and width_factor("untrained") is None


# --- the config of a spec -------------------------------------------------------------

def _on(cfg, device):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device),
                               readout=dataclasses.replace(cfg.readout, device=device))


def test_the_config_of_each_variant_is_the_one_its_old_cache_built():
    preset = get_preset("smoke", "causal").with_seed(3)
    assert config_for(RunSpec("smoke", "causal", 3), device="cpu", baseline=True) == \
        _on(dataclasses.replace(preset, baseline=True), "cpu")
    assert config_for(RunSpec("smoke", "causal", 3, "split"), device="cpu") == \
        _on(dataclasses.replace(preset, control="split"), "cpu")
    assert config_for(RunSpec("smoke", "causal", 3, "width0.5")) == \
        _on(width_variant(preset, 0.5), "auto")
    assert config_for(RunSpec("smoke", "mlm", 1)) == \
        _on(get_preset("smoke", "mlm").with_seed(1), "auto")
    with pytest.raises(TwotowerError, match="'ckpts' run"):
        config_for(RunSpec("smoke", "causal", 0, "ckpts"))


# --- ensure: each kind with its trainer, once -----------------------------------------

@pytest.fixture
def trainers(monkeypatch):
    """Stand-ins for the pipeline and the control trainer that write a finished run."""
    calls = []

    def trainer(kind):
        def train(cfg, out, **kwargs):
            calls.append((kind, cfg, Path(out), kwargs.get("reuse_from")))
            Path(out).mkdir(parents=True)
            save_results(Path(out), {"scoring": {"version": pipeline.SCORING_VERSION}})
            return {}
        return train
    monkeypatch.setattr(pipeline, "run", trainer("main"))
    monkeypatch.setattr(store, "run_control", trainer("control"))
    return calls


def test_ensure_trains_each_kind_of_run_with_its_trainer_once(tmp_path, trainers):
    main = RunSpec("smoke", "causal", 0)
    kinds = [main, RunSpec("smoke", "causal", 0, "split"),
             RunSpec("smoke", "causal", 0, "width0.5")]
    for _ in range(2):  # the second time every run is found, nothing is trained
        paths = [ensure_finished(spec, tmp_path, device="cpu", baseline=spec == main)
                 for spec in kinds]
    assert paths == [spec.path(tmp_path) for spec in kinds]
    assert all(is_finished(p) for p in paths)
    assert [kind for kind, *_ in trainers] == ["main", "control", "main"]
    (_, first, _, _), (_, split, _, reuse), (_, wide, out, _) = trainers
    assert first.baseline and first.train.device == "cpu"
    assert split.control == "split" and reuse == main.path(tmp_path)
    assert wide == config_for(kinds[2], device="cpu") and out.name == \
        "smoke-causal-seed0-width0.5"


def test_train_run_sends_a_control_to_its_trainer(tmp_path, trainers):
    cfg = get_preset("smoke", "causal")
    store.train_run(cfg, tmp_path / "a")
    store.train_run(dataclasses.replace(cfg, control="untrained"), tmp_path / "b")
    assert [kind for kind, *_ in trainers] == ["main", "control"]
    with pytest.raises(TwotowerError, match="train_run"):  # not a two-tower run
        PIPELINE_RUN(dataclasses.replace(cfg, control="untrained"), tmp_path / "c")


def test_load_run_loads_a_control_as_a_control(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(store, "load_control", lambda p, c=None: loaded.append("ctl"))
    monkeypatch.setattr(pipeline, "load_run", lambda p, c=None: loaded.append("main"))
    for spec in (RunSpec("smoke", "causal", 0), RunSpec("smoke", "causal", 0, "split")):
        cfg = dataclasses.replace(get_preset("smoke", "causal"),
                                  control=spec.variant)
        folder = spec.path(tmp_path)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config_to_dict(cfg)))
        (folder / RESULTS).write_text("{}")
        store.load_run(folder)
    store.load_run(tmp_path / "missing")  # the main loader names what is missing
    assert loaded == ["main", "ctl", "main"]


# --- one home for the protocol --------------------------------------------------------

def _strings_outside_docstrings(tree: ast.AST) -> list[str]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_the_run_folder_module_names_the_results_file():
    """"Is this run finished?" has one answer (run_folder.is_finished): no other
    module looks for ``results.json`` itself."""
    named = [str(path.relative_to(PACKAGE.parent)) for path in PACKAGE.rglob("*.py")
             if any("results.json" in text for text in _strings_outside_docstrings(
                 ast.parse(path.read_text(encoding="utf-8"))))]
    assert named == ["twotower/training/run_folder.py"]
