"""Runs that keep their checkpoints: how a model changes while it trains.

Introduced in chapter 12 (*Rare-token neurons in each tower*), which asks whether the
plateau of influential neurons emerges during training. The main run of a preset keeps
only its newest checkpoints; :func:`ensure_checkpoint_run` trains the same joint phase
again (same data, seed and schedule) and keeps evenly spaced checkpoints and the
initial weights. Those initial weights (step 0, :func:`initial_model`) are the null of
the chapter: whatever an untrained model's influence curve shows, training did not
make.

Its folder is named like a run (variant ``ckpts``) but holds no results: the
checkpoints, the model's config and ``done.json``, written last. So it keeps its own
cache: its config is the caller's (any run's, not only a preset's), and nothing is
trained once ``done.json`` is there.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from twotower import atomic
from twotower.config import ModelConfig
from twotower.data.windows import prepare_data
from twotower.errors import require
from twotower.experiments.pipeline import make_objective, resolve_config
from twotower.models.tower_lm import TwoTowerLM
from twotower.training import checkpoint as ckpt
from twotower.training.runtime import seed_everything
from twotower.training.trainer import WindowBatches, train

DONE = "done.json"  # written last: the checkpoints are all there
MODEL = "model.json"  # the ModelConfig of the checkpoints


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the joint-phase checkpoints kept in ``run_dir`` (0 = initialisation)."""
    run_dir = Path(run_dir)
    folders = [*(run_dir / "init").glob("step-*"), *(run_dir / "joint").glob("step-*")]
    return sorted(ckpt.load_meta(p)["step"] for p in folders
                  if (p / ckpt.META).exists())


def initial_model(cfg) -> TwoTowerLM:
    """The weights a run of ``cfg`` starts from: its step 0, without training.

    Seeds every generator with ``cfg.train.seed`` and builds the model, as
    :func:`twotower.experiments.pipeline.run` and :func:`ensure_checkpoint_run` do, so
    it equals their initial weights (the global generators are left seeded, as after
    theirs).

    Args:
        cfg: a resolved :class:`twotower.config.RunConfig`, e.g. ``run.config``.
    """
    seed_everything(cfg.train.seed)
    return TwoTowerLM(cfg.model)


def ensure_checkpoint_run(run_dir: str | Path, cfg, *, n_checkpoints: int = 6,
                          progress: bool = True) -> Path:
    """Train the joint phase of ``cfg`` keeping ``n_checkpoints`` checkpoints.

    Same data, seed and schedule as :func:`twotower.experiments.pipeline.run`, so the
    last checkpoint is the joint model of the full run; only the checkpoint spacing and
    the number kept differ. The initial weights are saved as step 0. Nothing is trained
    if the checkpoints are already there.

    Args:
        run_dir: where to keep it, e.g. the folder of
            ``RunSpec(preset, "causal", seed, "ckpts")``
            (:class:`twotower.training.run_folder.RunSpec`).
        cfg: the :class:`twotower.config.RunConfig` (a preset, seeded).
        n_checkpoints: checkpoints after step 0, evenly spaced.

    Returns:
        ``run_dir``.
    """
    run_dir = Path(run_dir)
    if (run_dir / DONE).exists():
        return run_dir
    data = prepare_data(cfg.data)
    cfg = resolve_config(cfg, data)
    every = max(1, cfg.train.steps // n_checkpoints)
    train_cfg = dataclasses.replace(cfg.train, checkpoint_every=every,
                                    keep_checkpoints=n_checkpoints + 2, eval_every=0)
    objective = make_objective(cfg, data)
    batches = WindowBatches(data.train, objective, cfg.train.batch_size, cfg.train.seed)
    model = initial_model(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / MODEL, json.dumps(dataclasses.asdict(cfg.model)))
    if not (run_dir / "init").exists():  # not in joint/: training would resume it
        ckpt.save_checkpoint(run_dir / "init", 0, model, {}, {"phase": "init"})
    summary = train(model, model.loss, batches,
                    train_cfg, phase="joint", run_dir=run_dir, progress=progress)
    atomic.write_text(run_dir / DONE, json.dumps(summary))
    return run_dir


def weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Largest absolute difference between the weights of two models of one config."""
    first, second = a.state_dict(), b.state_dict()
    require(first.keys() == second.keys(),
            "the two models have different parameters; compare models of one config")
    return max((float((first[name].double() - second[name].double()).abs().max())
                for name in first), default=0.0)


def load_checkpoint_model(run_dir: str | Path, step: int) -> TwoTowerLM:
    """The model saved at ``step`` by :func:`ensure_checkpoint_run`, in eval mode."""
    run_dir = Path(run_dir)
    model = TwoTowerLM(ModelConfig(**json.loads((run_dir / MODEL).read_text())))
    phase = "init" if step == 0 else "joint"
    ckpt.load_weights(run_dir / phase / f"step-{step:07d}", model)
    return model.requires_grad_(False).eval()
