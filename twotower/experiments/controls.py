"""The three controls a division of labour has to beat.

Introduced in chapter 9 (*Is the preference stable?*).

Two towers that differ in *anything* give every token a reliable preference: a
preference alone is no evidence of cooperation. Each control keeps the measurement (two
readouts on the same positions, ``pref = ll_A - ll_B``) and removes one ingredient of
the claim:

``split``
    (a) no second tower: a parameter-matched
    :class:`~twotower.models.tower_lm.SingleTowerLM` (the chapter 6 baseline), whose D'
    output units are split at random into two halves of D'/2; a readout is trained on
    each half alone (:class:`SplitSingleTower`).
``independent``
    (b) no cooperation: two towers of the same shape, each with its *own* embedding and
    its own head, trained on the same batches with ``loss = loss_A + loss_B``
    (:class:`IndependentTowersLM`). No parameter is shared, and gradients are clipped
    per tower, so no gradient path joins them. (Keeping the shared embedding would
    let the towers talk through it, which is exactly what this control must rule out;
    the price is an embedding of width D per tower instead of one of width 2D.)
``untrained``
    (c) no training: the two-tower model at initialisation (the same init as the run of
    the same seed), frozen; only the readouts are trained.
``reseeded``
    (d) not a control to beat but a decomposition: the *same* trained towers with
    readouts of another seed. How far its preference correlates with the main run's
    says how much of the preference belongs to the towers and how much to the readouts'
    random initialisation and batch order.

A control is a run like any other: ``python -m twotower run --control split ...`` or
``RunConfig(control=...)`` through :func:`twotower.experiments.store.train_run`, written
to a run folder with the same ``scores.npz``, ``preference.csv`` and ``results.json``;
:func:`twotower.experiments.store.ensure` trains it once, named by its
:class:`~twotower.training.run_folder.RunSpec` (the control is its variant).
Shapes: K towers (2), B windows, T positions, D features per tower, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from twotower import config
from twotower.config import ModelConfig, RunConfig, read_run_config
from twotower.data.windows import prepare_data
from twotower.errors import require
from twotower.experiments.pipeline import (LoadedRun, load_newest, load_run,
                                           loaded_run, score_and_save, start_run)
from twotower.models.hooks import HookedModule
from twotower.models.tower_lm import (SingleTowerLM, TwoTowerLM,
                                      matched_single_tower_config)
from twotower.training import checkpoint as ckpt
from twotower.training import distributed, run_folder
from twotower.training.readouts import TowerReadouts, train_readouts
from twotower.training.run_folder import (RESULTS, is_finished, read_results,
                                          save_results)
from twotower.training.runtime import computing_with_run_threads, seed_everything
from twotower.training.trainer import WindowBatches, train

CONTROLS = tuple(c for c in config.CONTROLS if c)  # "" is the two-tower model itself
RESEED_OFFSET = 1000  # readout seed of the "reseeded" control: the run's seed + this


# --- (b) two towers trained independently ------------------------------------------


class IndependentTowersLM(HookedModule):
    """Two complete single-tower LMs of tower width D side by side; nothing shared.

    It offers what readouts and scoring use from a two-tower model (``cfg``,
    ``n_towers``, :meth:`features`, :meth:`fuse`, :meth:`head_logits`), so phases 2/3
    run unchanged. The "joint" prediction is the average of the two heads'
    probabilities.

    Args:
        cfg: the two-tower model's configuration (``d_model`` is one tower's width).
    """

    n_towers = 2

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.models = nn.ModuleList(SingleTowerLM(cfg) for _ in range(2))
        self.name_hook_points()

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Each tower's output. ``(B, T) -> (2, B, T, D)``."""
        return torch.cat([m.features(input_ids) for m in self.models], dim=0)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """``(2, ..., D) -> (..., 2D)``, tower A first."""
        return torch.cat(features.unbind(0), dim=-1)

    def head_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """Log of the mean of both heads' probabilities: ``(..., 2D) -> (..., V)``."""
        halves = fused.split(self.cfg.d_model, dim=-1)
        logp = [m.head_logits(h).float().log_softmax(-1)
                for m, h in zip(self.models, halves)]
        return torch.logsumexp(torch.stack(logp), dim=0) - math.log(2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, T, V)`` ensemble log-probabilities."""
        return self.head_logits(self.fuse(self.features(input_ids)))

    def tower_losses(self, batch) -> torch.Tensor:
        """``(2,)``: each tower's own head's mean cross-entropy on ``batch``."""
        return torch.stack([m.loss(batch) for m in self.models])

    def loss(self, batch) -> torch.Tensor:
        """``loss_A + loss_B`` of a :class:`twotower.data.objectives.Batch`: the
        gradient of each term reaches its own tower only."""
        return self.tower_losses(batch).sum()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def train_independent(model: IndependentTowersLM, batches: WindowBatches, cfg,
                      **train_kwargs) -> dict:
    """Train both towers on the same batches, each as if it were alone.

    AdamW updates every parameter from its own gradient, and the gradient norm is
    clipped per tower (a global norm would let one tower's gradient shrink the
    other's step). ``cfg`` is a :class:`~twotower.config.TrainConfig`; other keyword
    arguments go to :func:`twotower.training.trainer.train`.
    """
    return train(model, model.loss, batches, cfg,
                 phase="independent", meta={"n_towers": 2},
                 clip_groups=[list(m.parameters()) for m in model.models],
                 **train_kwargs)


# --- (a) one tower split in two halves ----------------------------------------------


class SplitSingleTower(nn.Module):
    """A single tower's D' output units, split at random into two "towers" of D'/2.

    :meth:`features` returns ``(2, B, T, D'/2)``: half A then half B, in the order of
    :attr:`halves`; :meth:`fuse` puts the units back in their places, so the "joint"
    prediction is the single tower's own head.

    Args:
        single: the (trained) single-tower model; D' must be even.
        seed: seed of the random split.
    """

    n_towers = 2

    def __init__(self, single: SingleTowerLM, seed: int = 0):
        super().__init__()
        width = single.cfg.d_model
        require(width % 2 == 0, f"the single tower's width {width} is odd; the split "
                "control needs two equal halves (use an even d_model)")
        generator = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(width, generator=generator)
        self.register_buffer("halves", order.view(2, width // 2))  # (2, D'/2) units
        self.single = single
        self.cfg = dataclasses.replace(single.cfg, d_model=width // 2)

    @property
    def device(self) -> torch.device:
        return self.single.device

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (2, B, T, D'/2)``."""
        full = self.single.features(input_ids)[0]  # (B, T, D')
        return full[..., self.halves].movedim(-2, 0)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """Undo the split: ``(2, ..., D'/2) -> (..., D')``, units in their places."""
        joined = torch.cat(features.unbind(0), dim=-1)
        out = torch.empty_like(joined)
        out[..., self.halves.flatten()] = joined
        return out

    def head_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """The single tower's head: ``(..., D') -> (..., V)``."""
        return self.single.head_logits(fused)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.fuse(self.features(input_ids)))


def split_single_tower_readouts(single: SingleTowerLM, batches: WindowBatches,
                                cfg, *, seed: int = 0, **train_kwargs
                                ) -> tuple[SplitSingleTower, TowerReadouts, dict]:
    """Split ``single`` at random and train one readout (input D'/2) per half.

    ``cfg`` is the readout :class:`~twotower.config.TrainConfig`; other keyword
    arguments go to :func:`twotower.training.readouts.train_readouts`.

    Returns:
        ``(split model, readouts, training summary)``.
    """
    split = SplitSingleTower(single, seed)
    readouts, summary = train_readouts(split, batches, cfg, **train_kwargs)
    return split, readouts, summary


# --- (c) the untrained model ----------------------------------------------------------


def untrained_model(cfg: ModelConfig, seed: int) -> TwoTowerLM:
    """The two-tower model exactly as the run of ``seed`` initialises it."""
    seed_everything(seed)
    return TwoTowerLM(cfg)


# --- running a control ----------------------------------------------------------------


def _finished_phase(source: Path, cfg: RunConfig, phase: str) -> Path | None:
    """The final ``phase`` checkpoint of a main run made with ``cfg``'s settings."""
    last = ckpt.latest_checkpoint(source / phase)
    if not (source / "config.json").exists() or last is None:
        return None
    theirs = read_run_config(source)
    same = dataclasses.replace(theirs, control="", baseline=False, preset="") == \
        dataclasses.replace(cfg, control="", baseline=False, preset="")
    done = ckpt.load_meta(last)["step"] == cfg.train.steps
    return last if same and done else None


def _trained_or_reused(model: nn.Module, phase: str, cfg: RunConfig, out: Path,
                       source: Path | None, **train_kwargs) -> dict:
    """Load ``phase`` of the main run ``source`` into ``model`` if it was made with the
    same settings (it is the same computation), else train it into ``out``."""
    found = _finished_phase(source, cfg, phase) if source is not None else None
    if found is None:
        return train(model, model.loss,
                     cfg=cfg.train, phase=phase, run_dir=out, **train_kwargs)
    ckpt.load_weights(found, model)
    # relative to this run, so that a copied runs directory still finds it
    return {"phase": phase, "steps": cfg.train.steps,
            "reused": os.path.relpath(found, out)}


def _control_model(cfg: RunConfig, out: Path, train_b: WindowBatches,
                   val_b: WindowBatches, source: Path | None,
                   callbacks: Iterable, progress: bool) -> tuple[nn.Module, dict]:
    seed = cfg.train.seed
    common = dict(batches=train_b, val=val_b, callbacks=callbacks, progress=progress)
    if cfg.control == "untrained":
        model = untrained_model(cfg.model, seed)
        if distributed.current().is_main:  # saved so that load_control finds it
            ckpt.save_checkpoint(out / "joint", 0, model, {}, {"phase": "joint",
                                                             "n_towers": 2})
        return model, {"phase": "joint", "steps": 0}
    if cfg.control == "independent":
        seed_everything(seed)
        model = IndependentTowersLM(cfg.model)
        summary = train_independent(model, train_b, cfg.train, val=val_b, run_dir=out,
                                    callbacks=callbacks, progress=progress)
        return model, summary
    seed_everything(seed)
    if cfg.control == "reseeded":
        model = TwoTowerLM(cfg.model)
        return model, _trained_or_reused(model, "joint", cfg, out, source,
                                         meta={"n_towers": 2}, **common)
    single = SingleTowerLM(matched_single_tower_config(cfg.model))
    summary = _trained_or_reused(single, "baseline", cfg, out, source,
                                 meta={"n_towers": 1}, **common)
    return SplitSingleTower(single, seed), summary


@run_folder.owning_run_folder  # one process writes ``out`` at a time
@computing_with_run_threads  # cfg.threads, whatever OMP_NUM_THREADS says
def run_control(cfg: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
                callbacks: Iterable = (), progress: bool = True,
                reuse_from: str | Path | None = None) -> dict:
    """Train and score the control ``cfg.control`` into the run directory ``out``.

    The same data, batches, readout training and paired scoring as
    :func:`twotower.experiments.pipeline.run`; only the model behind the readouts
    changes.

    ``reseeded`` trains phase 1 exactly as the main run does (or reuses it), then
    readouts whose seed is the run's seed + :data:`RESEED_OFFSET`: how much of the
    preference belongs to the towers rather than to the readouts' initialisation and
    batch order.

    Args:
        reuse_from: a main run directory of the same config whose finished single
            tower (``split``, from ``--baseline``) or phase 1 (``reseeded``) is loaded
            instead of being trained again.

    Returns:
        The contents of ``results.json``.

    Raises:
        TwotowerError: for an unknown control; for an empty ``out`` or one that
            another process is writing (:func:`twotower.training.run_folder.owned`).
    """
    require(cfg.control in CONTROLS, f"unknown control {cfg.control!r}; choose one "
            f"of {', '.join(CONTROLS)}")
    out, started, world = Path(out), time.perf_counter(), distributed.current()
    cfg, data, train_b, val_b = start_run(cfg, out, cache_dir)
    source = Path(reuse_from) if reuse_from else None
    model, trained = _control_model(cfg, out, train_b, val_b, source, callbacks,
                                    progress)
    readout_cfg = cfg.readout if cfg.control != "reseeded" else dataclasses.replace(
        cfg.readout, seed=cfg.readout.seed + RESEED_OFFSET)
    readout_b = dataclasses.replace(train_b, batch_size=readout_cfg.batch_size,
                                    seed=readout_cfg.seed)
    readouts, readout_summary = train_readouts(model, readout_b, readout_cfg, val=val_b,
                                               run_dir=out, callbacks=callbacks,
                                               progress=progress,
                                               towers_step=trained["steps"])
    if not world.is_main:
        return {}
    results = {
        **score_and_save(out, cfg, data, model, readouts,
                         val_b.score_batches(cfg.score_batches),
                         towers_step=trained["steps"],
                         readouts_step=readout_summary["steps"]),
        "control": cfg.control, "model_training": trained,
        "readout_training": readout_summary,
        "parameters": {"control": sum(p.numel() for p in model.parameters())},
        "seconds": {"total": time.perf_counter() - started},
    }
    if isinstance(model, SplitSingleTower):
        results["halves"] = model.halves.tolist()
    results = run_folder.kept_phase_summaries(out, results)  # a rerun's train_loss
    save_results(out, results)
    return results


def load_control(path: str | Path, cache_dir: str | Path | None = None) -> LoadedRun:
    """Load a finished control run, its model frozen, like
    :func:`twotower.experiments.pipeline.load_run` loads a main run (every file
    checked, the weights against the record of what made the scores).

    Raises:
        TwotowerError: when it is not a finished run, or a file is missing, damaged,
            or not the one the scores were made from (one line).
    """
    path = Path(path)
    require(is_finished(path), f"{path} is not a finished control run (no {RESULTS}); "
            f"run `python -m twotower run --control ... --out {path}` first")
    cfg = read_run_config(path)
    if cfg.control == "untrained":
        return load_run(path, cache_dir)
    data = prepare_data(cfg.data, cache_dir)
    if cfg.control == "independent":
        model = IndependentTowersLM(cfg.model)
        return loaded_run(path, cfg, data, model,
                          load_newest(path, "independent", model))
    # split or reseeded: the model may live in the main run (reused)
    reseeded = cfg.control == "reseeded"
    inner = TwoTowerLM(cfg.model) if reseeded else \
        SingleTowerLM(matched_single_tower_config(cfg.model))
    source = (read_results(path).get("model_training") or {}).get("reused")
    if source:
        loaded_from = path / source
        ckpt.load_weights(loaded_from, inner)
    else:
        loaded_from = load_newest(path, "joint" if reseeded else "baseline", inner)
    model = inner if reseeded else SplitSingleTower(inner, cfg.train.seed)
    return loaded_run(path, cfg, data, model, loaded_from)

