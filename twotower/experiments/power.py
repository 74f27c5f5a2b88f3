"""What a null can rule out: the instruments on divisions of known strength.

Introduced in chapter 9 (*Is the preference stable?*); chapter 11 states its result.

Chapter 9's instrument (the mean aligned cross-seed r_x, with its interval over seeds
and its permutation p) can come out null at a small scale. A null means little unless
the instrument could have seen a division of labour of a given size. So we plant one,
of graded strength, and measure it with the same instrument at the same scale.

Where: the planted language of :mod:`twotower.data.synthetic` (a local and a topic
process; :data:`LANGUAGE`), with the *architecture and batch of the preset* (layers,
width, heads, batch, learning rate) and a share of its phase-1 steps. How: gradient
routing (:func:`twotower.experiments.planted.routed_loss`): at each position, with
probability ``strength``, only the tower that owns the target's process learns from its
loss. ``none`` (0) is the ordinary two-tower model. Which tower owns which process
alternates with the seed, so the alignment of signs across seeds is exercised as on
real text.

For each strength: the cross-seed statistic of chapter 9, whether it is detected (its
interval over seeds above 0 and p < 0.05), the planted-split |r| of chapter 2 (which
knows the answer), and the size of the division in nats: the owner-aligned gap between
the mean preference of the two processes' tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.analysis.across_seeds import seed_stability
from twotower.config import RunConfig, TrainConfig, get_preset
from twotower.experiments.planted import (PLANTED_PRESETS, PlantedRun,
                                          PlantedRunConfig, is_trained, owners,
                                          run_directory, run_planted)
from twotower.models.flops import preset_cost
from twotower.analysis.stability import RunPreference
from twotower.analysis.planted_split import local_topic_gap, planted_split_score
from twotower.data.synthetic import PlantedLanguage, PlantedLanguageConfig

STRENGTHS = {"none": 0.0, "weak": 0.01, "medium": 0.05, "strong": 0.2}
# Chapter 2's language with fewer, sharper and steadier topics: at a quarter of the
# preset's steps its towers learn them (with chapter 2's topics they learn little, and
# what is not learned cannot be divided). Routing every position (strength 1) stalls
# training, and half of them already divides the towers by several nats.
LANGUAGE = PlantedLanguageConfig(n_topics=4, topic_core=6, topic_core_mass=0.95,
                                 topic_switch=0.005)
# The fewest seeds that give an interval over seeds. Claim 2's primary test has more
# (twotower.experiments.replication.PRIMARY_SEEDS): what is detected here is a
# conservative estimate of what it detects.
POWER_SEEDS = 3
TOKEN_SHARE = 0.25  # of the preset's phase-1 steps (the planted language is simple)
ALPHA = 0.05


def power_config(preset: str, strength: float, token_share: float = TOKEN_SHARE
                 ) -> PlantedRunConfig:
    """The planted experiment on :data:`LANGUAGE` with ``preset``'s causal architecture
    (vocabulary and window from the language), its batch and learning rate, and
    ``token_share`` of its phase-1 steps; readouts as in chapter 2."""
    real = get_preset(preset, "causal")
    base = PLANTED_PRESETS["smoke" if preset == "smoke" else "small"]
    model = dataclasses.replace(real.model, family="causal", pad_id=0)
    t = real.train
    steps = max(1, int(round(t.steps * token_share)))
    joint = dataclasses.replace(base.joint, steps=steps, batch_size=t.batch_size,
                                lr=t.lr, warmup_steps=min(t.warmup_steps, steps // 4),
                                eval_every=0, log_every=max(1, steps // 40))
    return dataclasses.replace(base, language=LANGUAGE, model=model, joint=joint,
                               readout=dataclasses.replace(base.readout,
                                                           batch_size=t.batch_size),
                               division=float(strength))


def pending_flops(preset: str, strengths: dict[str, float] | None = None,
                  seeds: Sequence[int] | None = None,
                  runs_dir: str | Path | None = None) -> float:
    """Training FLOPs of the runs of :func:`ensure_power_runs` not yet in ``runs_dir``
    (all of them without one), counted by :func:`twotower.models.flops.preset_cost`."""
    total = 0.0
    for s in (STRENGTHS if strengths is None else strengths).values():
        cfg = power_config(preset, s)
        model = cfg.resolved_model(PlantedLanguage(cfg.language).vocab_size)
        cost = preset_cost(RunConfig(model=model, train=cfg.joint, readout=cfg.readout),
                           1.0).total_flops
        for seed in range(POWER_SEEDS) if seeds is None else seeds:
            done = runs_dir is not None and \
                is_trained(run_directory(cfg, seed, runs_dir))
            total += 0.0 if done else cost
    return total


def _as_run(run: PlantedRun) -> RunPreference:
    """What the instruments of chapter 9 read from a run, for a planted run."""
    cfg = RunConfig(model=run.cfg.resolved_model(run.language.vocab_size),
                    train=TrainConfig(seed=run.seed), min_count=run.cfg.min_count)
    return RunPreference(run.run_dir, cfg, {}, run.pref, run.scores, "")


def division_gap(run: PlantedRun) -> float:
    """Owner-aligned size of the division (nats): mean pref of the tokens tower A
    owns minus that of the tokens tower B owns (``pref = ll_A - ll_B``): the
    :func:`twotower.analysis.planted_split.local_topic_gap`, turned to the owner."""
    gap = local_topic_gap(run.pref, run.language.labels)
    a_owns_local = int(owners(run.language, run.seed)[run.language.local_ids[0]]) == 0
    return gap if a_owns_local else -gap


def ensure_power_runs(runs_dir: str | Path, preset: str,
                      strengths: dict[str, float] | None = None,
                      seeds: Sequence[int] | None = None, *,
                      device: str = "auto", progress: bool = False
                      ) -> dict[str, list[PlantedRun]]:
    """Train (or reload) every strength at every seed (default: :data:`POWER_SEEDS`):
    name -> runs."""
    strengths = STRENGTHS if strengths is None else strengths
    seeds = range(POWER_SEEDS) if seeds is None else seeds
    return {name: [run_planted(power_config(preset, s), seed, runs_dir, device=device,
                               control=False, progress=progress) for seed in seeds]
            for name, s in strengths.items()}


def power_table(runs: dict[str, list[PlantedRun]], *, centred: bool = True,
                n_perm: int = 1000, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per planted strength: the instrument of chapter 9 and what it found.

    ``centred`` (chapter 9's primary instrument) regresses difficulty and frequency
    out of every preference first; a division that follows them is removed with them.

    Columns: ``instrument``; ``strength``; ``gap`` (nats, :func:`division_gap`, mean
    over seeds: whether the planted direction won); ``|gap|`` (mean of its size,
    whichever tower won: also the size of a division the towers made themselves);
    ``mean r_x``, ``low``, ``high``, ``p`` (cross-seed, interval over
    seeds);
    ``detected`` (``low > 0`` and ``p < alpha``); ``planted |r|`` (mean over seeds of
    chapter 2's score against the planted labels); ``seeds``.
    """
    rows = []
    for name, group in runs.items():
        s = seed_stability([_as_run(r) for r in group], name, centred=centred,
                           n_perm=n_perm)
        labels = group[0].language.labels
        gaps = [division_gap(r) for r in group]
        planted = [planted_split_score(r.pref, labels, n_boot=200, n_perm=200,
                                       seed=r.seed).r for r in group]
        rows.append({"planted": name,
                     "instrument": "r_x centred" if centred else "r_x raw",
                     "strength": group[0].cfg.division,
                     "gap": float(np.mean(gaps)),
                     "|gap|": float(np.mean(np.abs(gaps))),
                     "mean r_x": s.mean, "low": s.low, "high": s.high,
                     "p": s.p_value,
                     "detected": bool(s.low > 0 and s.p_value < alpha),
                     "planted |r|": float(np.mean(planted)), "seeds": s.n_seeds})
    return pd.DataFrame(rows).set_index("planted")


def smallest_detected(table: pd.DataFrame) -> str | None:
    """The weakest planted strength above 0 that was detected, or None."""
    hits = table[(table["strength"] > 0) & table["detected"]]
    return None if hits.empty else str(hits["strength"].idxmin())
