"""The whole replication run: data -> phase 1 -> readouts -> scores -> preference.

Introduced in chapter 6 (*Training on a GPU (or not)*) and used by every later chapter
through :func:`load_run`.

:func:`run` writes the run folder that :mod:`twotower.training.run_folder` describes;
every phase resumes from its newest checkpoint, so rerunning the same command after a
crash continues where it stopped. The controls of chapter 9 reuse its steps
(:func:`start_run`, :func:`score_and_save`) in :mod:`twotower.experiments.controls`, and
:mod:`twotower.experiments.store` chooses between the two.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from twotower import atomic
from twotower.analysis.preference import (preference_summary, split_half,
                                          token_preference)
from twotower.config import RunConfig, config_to_dict, read_run_config
from twotower.data.objectives import Objective
from twotower.data.windows import PreparedData, prepare_data
from twotower.errors import TwotowerError, require
from twotower.models.tower_lm import (SingleTowerLM, TwoTowerLM,
                                      matched_single_tower_config)
from twotower.training import checkpoint as ckpt
from twotower.training import distributed, run_folder
from twotower.training.readouts import (TokenScores, TowerReadouts, freeze,
                                        loss_summary, score_readouts, train_readouts)
from twotower.training.run_folder import (CONFIG, FILE_SHA256, MADE_FROM, PREFERENCE,
                                          PREFERENCE_COLUMNS, RESULTS, SCORES,
                                          is_finished, read_preference,
                                          read_results, read_scores, save_results)
from twotower.training.runtime import (computing_with_run_threads, reproducibility,
                                       resolve_device, resolve_precision,
                                       seed_everything)
from twotower.training.trainer import WindowBatches, evaluate, train

log = logging.getLogger(__name__)

# 2: every target position scored once (MLM: masked in one of several passes, always
# with [MASK]), masks from a seed shared by all runs, fp32, window and article kept
SCORING_VERSION = 2


def resolve_config(cfg: RunConfig, data: PreparedData) -> RunConfig:
    """Fill in what only the data knows: vocabulary size, window length, PAD id."""
    model = dataclasses.replace(cfg.model, vocab_size=data.vocab_size,
                                max_len=cfg.data.max_len, pad_id=data.special.pad)
    return dataclasses.replace(cfg, model=model.validate())


def make_objective(cfg: RunConfig, data: PreparedData) -> Objective:
    s = data.special
    return Objective(family=cfg.model.family, special_ids=s.all, pad_id=s.pad,
                     cls_id=s.cls, mask_id=s.mask,
                     n_tokens=data.tokenizer.get_vocab_size(),
                     mlm_probability=cfg.train.mlm_probability)


def _check_run_dir(out: Path, cfg: RunConfig) -> None:
    """Refuse a run directory made with another config; nothing in it is touched."""
    saved_path = out / CONFIG
    if not saved_path.exists():
        return
    saved = atomic.read_json(saved_path, "move the run directory away or use another "
                             "--out")
    now = json.loads(json.dumps(config_to_dict(cfg)))  # tuples as JSON has them
    saved.pop("preset", None), now.pop("preset", None)
    if saved != now:
        diffs = [f"{part}.{k}: {saved.get(part, {}).get(k)!r} -> {v!r}"
                 for part in now if isinstance(now[part], dict)
                 for k, v in now[part].items() if saved.get(part, {}).get(k) != v]
        diffs += [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items()
                  if not isinstance(v, dict) and saved.get(k) != v]
        raise TwotowerError(f"{out} holds a run made with another config ("
                            f"{'; '.join(diffs[:3])}); use a new --out directory")


def id_to_token(data: PreparedData, vocab_size: int) -> list[str]:
    """Token string of every id (padding rows beyond the tokenizer are empty)."""
    n = data.tokenizer.get_vocab_size()
    return [data.tokenizer.id_to_token(i) if i < n else "" for i in range(vocab_size)]



def start_run(cfg: RunConfig, out: Path, cache_dir: str | None = None):
    """Data, the config with the tokenizer's sizes filled in, checked against what
    ``out`` already holds and saved there (rank 0), and the train/validation batches.

    Returns:
        ``(cfg, data, train_batches, val_batches)``.
    """
    cfg.validate()
    resolve_device(distributed.device_for(distributed.current(), cfg.train.device))
    if out.exists() and not out.is_dir():
        raise TwotowerError(f"--out {out} is a file, not a run directory; choose "
                            "another --out")
    data = prepare_data(cfg.data, cache_dir)
    cfg = resolve_config(cfg, data)
    _check_run_dir(out, cfg)
    if distributed.current().is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / CONFIG, json.dumps(config_to_dict(cfg), indent=1))
    objective = make_objective(cfg, data)
    train_b = WindowBatches(data.train, objective, cfg.train.batch_size, cfg.train.seed)
    val_b = WindowBatches(data.val, objective, cfg.train.batch_size, cfg.train.seed)
    return cfg, data, train_b, val_b


@run_folder.owning_run_folder  # one process writes ``out`` at a time
@computing_with_run_threads  # cfg.threads, whatever OMP_NUM_THREADS says
def run(cfg: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
        callbacks: Iterable = (), progress: bool = True) -> dict:
    """Run (or resume) every phase of the two-tower model and write its run folder.

    Returns:
        The contents of ``results.json``.

    Raises:
        TwotowerError: for a control's config (chapter 9's controls train other
            models: :func:`twotower.experiments.store.train_run` runs either kind);
            for an empty ``out`` or one that another process is writing
            (:func:`twotower.training.run_folder.owned`).
    """
    require(not cfg.control, f"the control {cfg.control!r} trains another model: run "
            "it with twotower.experiments.store.train_run (python -m twotower run "
            "--control ...)")
    out = Path(out)
    started = time.perf_counter()
    world = distributed.current()
    cfg, data, train_b, val_b = start_run(cfg, out, cache_dir)
    timings = {}

    t = time.perf_counter()
    seed_everything(cfg.train.seed)
    model = TwoTowerLM(cfg.model)
    joint = train(model, model.loss, train_b,
                  cfg.train, phase="joint", val=val_b, run_dir=out, callbacks=callbacks,
                  meta={"n_towers": 2}, progress=progress)
    timings["joint"] = time.perf_counter() - t

    t = time.perf_counter()
    readout_b = dataclasses.replace(train_b, batch_size=cfg.readout.batch_size,
                                    seed=cfg.readout.seed)
    readouts, readout_summary = train_readouts(model, readout_b, cfg.readout, val=val_b,
                                               run_dir=out, callbacks=callbacks,
                                               progress=progress,
                                               towers_step=joint["steps"])
    timings["readouts"] = time.perf_counter() - t

    base = None
    if cfg.baseline:  # every process trains (DDP); rank 0 scores below
        t = time.perf_counter()
        base = _train_baseline(cfg, out, train_b, val_b, callbacks, progress)
        timings["baseline"] = time.perf_counter() - t
    if not world.is_main:  # scoring and the result files are rank 0's job
        return {}

    t = time.perf_counter()
    results = _scored_results(out, cfg, data, val_b, model, joint, readouts,
                              readout_summary, base)
    timings["scoring"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    results["seconds"] = timings
    results = run_folder.kept_phase_summaries(out, results)  # a rerun's train_loss
    save_results(out, results)
    return results


def _scored_results(out: Path, cfg: RunConfig, data: PreparedData, val_b: WindowBatches,
                    model: TwoTowerLM, joint: dict, readouts: TowerReadouts,
                    readout_summary: dict, base: tuple[SingleTowerLM, dict] | None
                    ) -> dict:
    """Score the validation windows and gather what ``results.json`` says of a run."""
    scored = val_b.score_batches(cfg.score_batches)
    results = {
        **score_and_save(out, cfg, data, model, readouts, scored,
                         towers_step=joint["steps"],
                         readouts_step=readout_summary["steps"]),
        "data": _data_summary(data, cfg),
        "parameters": {"two_tower": model.num_parameters()},
        "joint_training": joint, "readout_training": readout_summary,
    }
    if base is not None:  # the baseline's loss on exactly the scored positions
        single, base_summary = base
        results["baseline"] = _scored_baseline(single, base_summary, cfg, scored)
        results["parameters"]["single_tower"] = single.num_parameters()
        results[MADE_FROM]["baseline"] = weights_record(single, base_summary["steps"])
    return results


def _train_baseline(cfg: RunConfig, out: Path, train_b: WindowBatches,
                    val_b: WindowBatches, callbacks: Iterable, progress: bool
                    ) -> tuple[SingleTowerLM, dict]:
    """The parameter-matched single tower, trained on the same batches (chapter 6)."""
    seed_everything(cfg.train.seed)
    base = SingleTowerLM(matched_single_tower_config(cfg.model))
    return base, train(base, base.loss, train_b, cfg.train, phase="baseline", val=val_b,
                       run_dir=out, callbacks=callbacks, meta={"n_towers": 1},
                       progress=progress)


def _scored_baseline(base: SingleTowerLM, summary: dict, cfg: RunConfig,
                     scored: list) -> dict:
    """The baseline's training summary and its loss on the scored positions."""
    device = resolve_device(cfg.train.device)
    same = evaluate(base.loss, base, scored,
                    device, resolve_precision(cfg.train.precision, device))
    return {**summary, "scored_loss": same["val_loss"], "scored_ppl": same["val_ppl"],
            "d_model": base.cfg.d_model}


def _data_summary(data: PreparedData, cfg: RunConfig) -> dict:
    return {"corpus": data.corpus_name, "source": data.source,
            "train_tokens": data.n_train_tokens, "val_tokens": data.n_val_tokens,
            "vocab_size": cfg.model.vocab_size}


def weights_record(module: nn.Module, step: int | None) -> dict:
    """What a run records of the weights its scores came from: the step and
    :func:`twotower.training.checkpoint.weights_sha256` (chapter 6)."""
    return {"step": step, "sha256": ckpt.weights_sha256(module)}


def score_and_save(out: Path, cfg: RunConfig, data: PreparedData, model: nn.Module,
                   readouts: TowerReadouts, scored: list, *,
                   towers_step: int | None = None, readouts_step: int | None = None
                   ) -> dict:
    """Score ``scored`` batches with each readout, write ``scores.npz`` and
    ``preference.csv`` (atomically), and return the results every run reports: family,
    seed, losses, the preference summary and its split-half reliability, and the
    record of what made both files (``made_from``: the step and weights' SHA-256 of
    the towers and the readouts; ``file_sha256``: each file's), which loading
    compares (:func:`load_run`)."""
    scores = score_readouts(model, readouts, scored, cfg.train.device)  # fp32
    if data.val_article is not None:
        scores = dataclasses.replace(scores, article=data.val_article[scores.window])
    scores.save(out / SCORES)
    df = token_preference(scores, cfg.model.vocab_size, cfg.min_count,
                          id_to_token(data, cfg.model.vocab_size))
    with atomic.replacing(out / PREFERENCE) as tmp:
        df.reset_index()[list(PREFERENCE_COLUMNS)].to_csv(tmp, index=False)
    return {
        "family": cfg.model.family, "preset": cfg.preset, "seed": cfg.train.seed,
        "scoring": {"version": SCORING_VERSION},
        "scores": loss_summary(scores), "preference": preference_summary(df, scores),
        "split_half": dataclasses.asdict(split_half(scores, cfg.model.vocab_size,
                                                    cfg.min_count)),
        MADE_FROM: {"towers": weights_record(model, towers_step),
                    "readouts": weights_record(readouts, readouts_step)},
        FILE_SHA256: {name: atomic.file_sha256(out / name)
                      for name in (SCORES, PREFERENCE)},
        "reproducibility": reproducibility(cfg.train.device),  # threads, CPU, torch
    }


def scoring_is_current(path: str | Path) -> bool:
    """Whether a finished run was scored the way this version scores
    (:data:`SCORING_VERSION`); older runs are rescored by :func:`rescore`."""
    return read_results(path).get("scoring", {}).get("version") == SCORING_VERSION


def rescore(run: LoadedRun) -> dict:
    """Score a finished run again with the current scoring and rewrite its
    ``scores.npz``, ``preference.csv`` and the scoring part of ``results.json``.

    Nothing is trained: the towers and readouts on disk are scored as they are, so an
    old run gets today's instruments in seconds to minutes. The record of what made
    the scores names the checkpoints ``run`` was loaded from (a run made before the
    record gets one).

    Returns:
        The updated results.
    """
    cfg = run.config
    val_b = WindowBatches(run.data.val, make_objective(cfg, run.data),
                          cfg.train.batch_size, cfg.train.seed)
    log.info("rescoring %s (scoring version %d)", run.path, SCORING_VERSION)
    scored = score_and_save(run.path, cfg, run.data, run.model, run.readouts,
                            val_b.score_batches(cfg.score_batches),
                            towers_step=run.made_from["towers"]["step"],
                            readouts_step=run.made_from["readouts"]["step"])
    scored[MADE_FROM] = {**run.results.get(MADE_FROM, {}), **scored[MADE_FROM]}
    results = {**run.results, **scored}
    save_results(run.path, results)
    return results


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """A finished run, ready for analysis in a chapter.

    ``made_from`` holds the step and weights' SHA-256 of the towers and readouts that
    were loaded: the record in ``results`` when the run has one (:func:`load_run`
    refuses any other weights), what :func:`rescore` records when it scores them.
    """

    path: Path
    config: RunConfig
    data: PreparedData
    model: TwoTowerLM
    readouts: TowerReadouts
    scores: TokenScores
    preference: pd.DataFrame
    results: dict
    made_from: dict = dataclasses.field(default_factory=dict)


def load_run(path: str | Path, cache_dir: str | Path | None = None) -> LoadedRun:
    """Load a run directory written by :func:`run` (model and readouts frozen, on CPU).

    Every file is checked, and the weights against the record of what made the
    scores (:func:`score_and_save`): a missing or damaged file, or a checkpoint
    deleted or replaced since, ends in one line naming it and the fix
    (``book/when_things_go_wrong.md``, *A damaged run folder*).

    Raises:
        TwotowerError: when the directory is not a finished run, or a file is missing,
            damaged, or not the one the scores were made from.
    """
    path = Path(path)
    if not is_finished(path):
        raise TwotowerError(f"{path} is not a finished run (no {RESULTS}); run "
                            f"`python -m twotower run --out {path}` first")
    cfg = read_run_config(path)
    data = prepare_data(cfg.data, cache_dir)
    model = TwoTowerLM(cfg.model)
    return loaded_run(path, cfg, data, model, load_newest(path, "joint", model))


def load_newest(path: Path, phase: str, module: nn.Module) -> Path:
    """Load the newest checkpoint of the run ``path``'s ``phase`` into ``module``.

    Returns:
        The checkpoint's folder.
    """
    last = ckpt.latest_checkpoint(path / phase)
    if last is None:
        raise TwotowerError(f"{path / phase} holds no checkpoint (deleted?); "
                            f"{_fix(path, phase)}")
    ckpt.load_weights(last, module)
    return last


def loaded_run(path: Path, cfg: RunConfig, data, model: nn.Module,
               towers_from: Path) -> LoadedRun:
    """A finished run around its ``model``, loaded from the checkpoint
    ``towers_from``: the readouts, scores, preference table and results saved in
    ``path``, each checked against the record of what made the scores, everything
    frozen."""
    results = read_results(path)
    readouts = TowerReadouts(model.cfg.d_model, cfg.model.vocab_size, 2)
    made_from = {
        "towers": _checked(path, results, "towers", model, towers_from),
        "readouts": _checked(path, results, "readouts", readouts,
                             load_newest(path, "readouts", readouts))}
    return LoadedRun(path, cfg, data, freeze(model), freeze(readouts),
                     read_scores(path, results), read_preference(path, results),
                     results, made_from)


def _checked(path: Path, results: dict, role: str, module: nn.Module,
             loaded_from: Path) -> dict:
    """The record of ``module`` (``"towers"`` or ``"readouts"``) as loaded from the
    checkpoint ``loaded_from``, refused unless the run recorded these weights for
    its scores (a run made before the record is not checked)."""
    loaded = weights_record(module, int(ckpt.load_meta(loaded_from)["step"]))
    recorded = (results.get(MADE_FROM) or {}).get(role)
    if recorded is None or recorded.get("sha256") == loaded["sha256"]:
        return loaded
    step = recorded.get("step")
    why = ("its weights were replaced" if step == loaded["step"] else
           f"the checkpoint of step {step} is gone")
    raise TwotowerError(
        f"{loaded_from} (step {loaded['step']}) does not hold the {role} that "
        f"{path / SCORES} was made from (step {step}, sha256 "
        f"{str(recorded.get('sha256'))[:12]}): {why}; {_fix(path, role)}")


def _fix(path: Path, part: str) -> str:
    """How to make the run ``path`` whole again when ``part`` is missing or wrong."""
    if part == "readouts":
        return (f"delete {path / 'readouts'} and {path / RESULTS}, then rerun the "
                "command or chapter that made the run: the readouts are trained "
                "again, the towers are kept")
    return (f"put back the checkpoint the scores were made from, or delete {path} and "
            "rerun the command or chapter that made the run, to train it again")
