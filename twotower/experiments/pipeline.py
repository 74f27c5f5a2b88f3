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
from twotower.training import distributed
from twotower.training.readouts import (TokenScores, TowerReadouts, freeze,
                                        loss_summary, score_readouts, train_readouts)
from twotower.training.run_folder import (CONFIG, PREFERENCE, RESULTS, SCORES,
                                          is_finished, read_results, save_results)
from twotower.training.runtime import resolve_device, resolve_precision, seed_everything
from twotower.training.trainer import WindowBatches, evaluate, train

log = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("token", "id", "count", "ll_a", "ll_b", "pref", "pref_se")
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


def run(cfg: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
        callbacks: Iterable = (), progress: bool = True) -> dict:
    """Run (or resume) every phase of the two-tower model and write its run folder.

    Returns:
        The contents of ``results.json``.

    Raises:
        TwotowerError: for a control's config (chapter 9's controls train other
            models: :func:`twotower.experiments.store.train_run` runs either kind).
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
                                               progress=progress)
    timings["readouts"] = time.perf_counter() - t

    base = None
    if cfg.baseline:  # every process trains (DDP); rank 0 scores below
        t = time.perf_counter()
        base, base_summary = _train_baseline(cfg, out, train_b, val_b, callbacks,
                                             progress)
        timings["baseline"] = time.perf_counter() - t
    if not world.is_main:  # scoring and the result files are rank 0's job
        return {}

    t = time.perf_counter()
    scored = val_b.score_batches(cfg.score_batches)
    results = {
        **score_and_save(out, cfg, data, model, readouts, scored),
        "data": _data_summary(data, cfg),
        "parameters": {"two_tower": model.num_parameters()},
        "joint_training": joint, "readout_training": readout_summary,
    }
    if base is not None:  # the baseline's loss on exactly the scored positions
        results["baseline"] = _scored_baseline(base, base_summary, cfg, scored)
        results["parameters"]["single_tower"] = base.num_parameters()
    timings["scoring"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    results["seconds"] = timings
    save_results(out, results)
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


def score_and_save(out: Path, cfg: RunConfig, data: PreparedData, model: nn.Module,
                   readouts: TowerReadouts, scored: list) -> dict:
    """Score ``scored`` batches with each readout, write ``scores.npz`` and
    ``preference.csv`` (atomically), and return the results every run reports: family,
    seed, losses, the preference summary and its split-half reliability."""
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
    }


def scoring_is_current(path: str | Path) -> bool:
    """Whether a finished run was scored the way this version scores
    (:data:`SCORING_VERSION`); older runs are rescored by :func:`rescore`."""
    return read_results(path).get("scoring", {}).get("version") == SCORING_VERSION


def rescore(run: LoadedRun) -> dict:
    """Score a finished run again with the current scoring and rewrite its
    ``scores.npz``, ``preference.csv`` and the scoring part of ``results.json``.

    Nothing is trained: the towers and readouts on disk are scored as they are, so an
    old run gets today's instruments in seconds to minutes.

    Returns:
        The updated results.
    """
    cfg = run.config
    val_b = WindowBatches(run.data.val, make_objective(cfg, run.data),
                          cfg.train.batch_size, cfg.train.seed)
    log.info("rescoring %s (scoring version %d)", run.path, SCORING_VERSION)
    results = {**run.results, **score_and_save(run.path, cfg, run.data, run.model,
                                               run.readouts,
                                               val_b.score_batches(cfg.score_batches))}
    save_results(run.path, results)
    return results


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """A finished run, ready for analysis in a chapter."""

    path: Path
    config: RunConfig
    data: PreparedData
    model: TwoTowerLM
    readouts: TowerReadouts
    scores: TokenScores
    preference: pd.DataFrame
    results: dict


def load_run(path: str | Path, cache_dir: str | Path | None = None) -> LoadedRun:
    """Load a run directory written by :func:`run` (model and readouts frozen, on CPU).

    Raises:
        TwotowerError: when the directory is not a finished run.
    """
    path = Path(path)
    if not is_finished(path):
        raise TwotowerError(f"{path} is not a finished run (no {RESULTS}); run "
                            f"`python -m twotower run --out {path}` first")
    cfg = read_run_config(path)
    data = prepare_data(cfg.data, cache_dir)
    model = TwoTowerLM(cfg.model)
    last = ckpt.latest_checkpoint(path / "joint")
    if last is None:
        raise TwotowerError(f"{path}/joint has no checkpoint; rerun the run command")
    ckpt.load_weights(last, model)
    return loaded_run(path, cfg, data, model)


def loaded_run(path: Path, cfg: RunConfig, data, model: nn.Module) -> LoadedRun:
    """A finished run around its (already loaded) ``model``: the readouts, scores,
    preference table and results saved in ``path``, everything frozen."""
    readouts = TowerReadouts(model.cfg.d_model, cfg.model.vocab_size, 2)
    ckpt.load_weights(ckpt.latest_checkpoint(path / "readouts"), readouts)
    pref = pd.read_csv(path / PREFERENCE, keep_default_na=False,
                       na_values=[""]).set_index("id")
    return LoadedRun(path, cfg, data, freeze(model), freeze(readouts),
                     TokenScores.load(path / SCORES), pref,
                     read_results(path))
