"""The one run cache: every run of the book trained once, then found by its name.

Introduced in chapter 6 (*Training on a GPU (or not)*), whose run every later chapter
loads with :func:`ensure`; chapter 9 (*Is the preference stable?*) adds the controls and
the towers of other widths.

A :class:`~twotower.training.run_folder.RunSpec` names a run. :func:`ensure` loads it
when its folder holds a finished run, and trains (or resumes) it first when not, with
the trainer its variant asks for: ``""`` the two-tower run of
:func:`twotower.experiments.pipeline.run`, a control's name
:func:`twotower.experiments.controls.run_control`, ``width<factor>`` the two-tower run
of :func:`width_variant`. A finished run that an older version scored is rescored
(:func:`ensure_scored`), never trained again.

Runs of other kinds use the naming but keep their own folders, because their config is
not a preset's: chapter 12's checkpoint runs
(:func:`twotower.experiments.history.ensure_checkpoint_run`), chapter 13's bilingual
runs (:func:`twotower.experiments.bilingual.ensure_bilingual_run`: the model's
vocabulary comes from the tokenizer trained on Multi30k) and chapter 2's planted runs
(:func:`twotower.experiments.planted.run_planted`, named by a hash of their config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from twotower.config import RunConfig, get_preset, read_run_config
from twotower.errors import TwotowerError
from twotower.experiments import pipeline
from twotower.experiments.controls import CONTROLS, load_control, run_control
from twotower.experiments.pipeline import LoadedRun, rescore, scoring_is_current
from twotower.training.run_folder import RunSpec, is_finished
from twotower.training.runtime import fixed_threads, run_threads

#: Prefix of the variants with towers of another width (``width0.5``, ``width2``...).
WIDTH = "width"


def width_name(factor: float) -> str:
    """The variant of towers ``factor`` times as wide: ``0.5 -> "width0.5"``."""
    return f"{WIDTH}{factor:g}"


def width_factor(variant: str) -> float | None:
    """The factor of a :func:`width_name` variant (``"width0.5" -> 0.5``), else None."""
    if not variant.startswith(WIDTH):
        return None
    try:
        return float(variant[len(WIDTH):])
    except ValueError:
        return None


def width_variant(cfg: RunConfig, factor: float) -> RunConfig:
    """The same run with towers ``factor`` times as wide (d_model and d_ff).

    The width stays a multiple of ``n_heads`` (transformers) or of 2 (biLM).
    """
    m = cfg.model
    step = 2 if m.family == "bilm" else m.n_heads
    width = max(step, int(round(m.d_model * factor / step)) * step)
    model = dataclasses.replace(m, d_model=width,
                                d_ff=max(1, int(round(m.d_ff * factor))))
    return dataclasses.replace(cfg, model=model.validate())


def config_for(spec: RunSpec, *, device: str = "auto", baseline: bool = False
               ) -> RunConfig:
    """The config of the run ``spec`` names: its preset's, seeded, with the variant.

    Args:
        device: where to train both phases.
        baseline: also train the matched single tower (the main run only; the split
            control of the same seed reuses it).

    Raises:
        TwotowerError: for a variant that this cache does not train (see the module
            docstring for the runs that keep their own folders).
    """
    cfg = get_preset(spec.preset, spec.family).with_seed(spec.seed)
    factor = width_factor(spec.variant)
    if spec.variant in CONTROLS:
        cfg = dataclasses.replace(cfg, control=spec.variant)
    elif factor is not None:
        cfg = width_variant(cfg, factor)
    elif spec.variant:
        raise TwotowerError(
            f"{spec.name}: the run cache trains the main run, the controls "
            f"({', '.join(CONTROLS)}) and {WIDTH}<factor> variants, not a "
            f"{spec.variant!r} run; use the function of the chapter that makes it")
    else:
        cfg = dataclasses.replace(cfg, baseline=baseline or cfg.baseline)
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, device=device),
        readout=dataclasses.replace(cfg.readout, device=device))


def train_run(cfg: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
              callbacks: Iterable = (), progress: bool = True,
              reuse_from: str | Path | None = None) -> dict:
    """Run (or resume) ``cfg`` into the run folder ``out``: a control with
    :func:`twotower.experiments.controls.run_control` (``reuse_from`` goes to it),
    anything else with :func:`twotower.experiments.pipeline.run`.

    Returns:
        The contents of ``results.json``.
    """
    if cfg.control:
        return run_control(cfg, out, cache_dir=cache_dir, callbacks=callbacks,
                           progress=progress, reuse_from=reuse_from)
    return pipeline.run(cfg, out, cache_dir=cache_dir, callbacks=callbacks,
                        progress=progress)


def load_run(path: str | Path, cache_dir: str | Path | None = None) -> LoadedRun:
    """A finished run folder loaded, its model frozen: a main run with
    :func:`twotower.experiments.pipeline.load_run`, a control with
    :func:`twotower.experiments.controls.load_control`.

    Raises:
        TwotowerError: when ``path`` is not a finished run.
    """
    if is_finished(path) and read_run_config(path).control:
        return load_control(path, cache_dir)
    return pipeline.load_run(path, cache_dir)


def ensure_scored(path: str | Path) -> None:
    """Rescore a finished run (main or control) that an older version scored, so that
    every analysis reads today's scores (:func:`twotower.experiments.pipeline.rescore`).
    """
    if not scoring_is_current(path):
        with fixed_threads(run_threads(read_run_config(path).threads, path)):
            rescore(load_run(path))


def ensure_finished(spec: RunSpec, runs_dir: str | Path, *, device: str = "auto",
                    baseline: bool = False, callbacks: Iterable = (),
                    progress: bool = True) -> Path:
    """The folder of the run ``spec`` in ``runs_dir``, trained (or resumed) first when
    it is not finished, and rescored when an older version scored it.

    A control reuses what the main run of its seed already trained: the split
    control its single tower (when that run was made with ``baseline=True``), the
    reseeded control its phase 1. Arguments as in :func:`ensure`.
    """
    cfg = config_for(spec, device=device, baseline=baseline)
    path = spec.path(runs_dir)
    if not is_finished(path):
        main = dataclasses.replace(spec, variant="").path(runs_dir) \
            if cfg.control else None
        train_run(cfg, path, callbacks=callbacks, progress=progress, reuse_from=main)
    ensure_scored(path)
    return path


def ensure(spec: RunSpec, runs_dir: str | Path, *, device: str = "auto",
           baseline: bool = False, callbacks: Iterable = (),
           progress: bool = True) -> LoadedRun:
    """The finished run ``spec``: loaded from ``runs_dir`` if it is there, else
    trained (or resumed) first (:func:`ensure_finished`).

    Args:
        spec: which run, e.g. ``RunSpec(PRESET, "causal", SEED)``, or a control
            ``RunSpec(PRESET, "causal", SEED, "untrained")``.
        runs_dir: the folder that holds every run of the book.
        device: where to train, if it has to be trained.
        baseline: also train the matched single tower (main run only).
        callbacks: passed to the training loop (e.g. a
            :class:`twotower.book.live.LiveLossPlot`).
        progress: print training progress.

    Returns:
        :class:`twotower.experiments.pipeline.LoadedRun`.
    """
    return load_run(ensure_finished(spec, runs_dir, device=device, baseline=baseline,
                                    callbacks=callbacks, progress=progress))
