"""The runs of Part 2: which ones, trained once into ``RUNS_DIR``, what they cost.

Introduced in chapter 9 (*Is the preference stable?*); chapters 10 and 11 read the same
runs. :func:`ensure_replication_runs` trains (or loads) several seeds of every family,
the controls of :mod:`twotower.experiments.controls` and narrower or wider towers, each
once, through the run cache (:mod:`twotower.experiments.store`);
:func:`replication_flops` says what that costs at any preset; :func:`plot_intervals`
draws the forest plots of the three chapters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from twotower.analysis import plotting
from twotower.analysis.stability import RunPreference, load_preference_run
from twotower.config import FAMILIES, RunConfig, get_preset
from twotower.experiments.store import (RunSpec, ensure_finished, width_name,
                                        width_variant)
from twotower.models.flops import preset_cost


CPU_SCALE_FLOPS = 1e15  # a preset whose phase 1 costs less is run on a CPU


def is_cpu_scale(preset: str) -> bool:
    """Whether one phase-1 run of ``preset`` (causal) costs under
    :data:`CPU_SCALE_FLOPS`: minutes on a CPU (smoke, small), not hours on a GPU."""
    cfg = get_preset(preset, "causal")
    return preset_cost(cfg, 1.0).total_flops < CPU_SCALE_FLOPS


PRIMARY_SEEDS = 5  # seeds of each side of claim 2's primary test


def part2_plan(quick: bool, seed: int = 0) -> dict:
    """Which runs chapters 9-11 compare: keyword arguments of
    :func:`ensure_replication_runs` and :func:`replication_flops`.

    Seeds are the unit of "stable across seeds", so claim 2's primary test (the causal
    two-tower model against the independent-towers control) gets :data:`PRIMARY_SEEDS`
    seeds on each side, and the untrained control (readouts only, cheap) at least
    ``twotower.analysis.across_seeds.MIN_SEEDS``. ``quick`` (CPU-scale presets, see
    :func:`is_cpu_scale`): 3 seeds of mlm, 2 of bilm (the slowest family on a CPU), one
    seed of the split control. Otherwise 3 seeds of mlm and bilm and 2 of the split
    control. Both add towers half as wide (first seed), and readouts retrained with
    another seed on the towers of the first seed (the ``reseeded`` control).
    """
    three = [seed + i for i in range(3)]
    primary = [seed + i for i in range(PRIMARY_SEEDS)]
    seeds = {family: three for family in FAMILIES}
    seeds["causal"] = primary
    control_seeds = {"split": three[:1 if quick else 2], "independent": primary,
                     "untrained": three, "reseeded": three[:1]}
    if quick:
        seeds["bilm"] = three[:2]
    return dict(seeds=seeds, control_seeds=control_seeds, widths=[0.5])


def ensure_replication_runs(runs_dir: str, preset: str, *,
                            seeds: dict[str, Sequence[int]],
                            control_seeds: dict[str, Sequence[int]],
                            widths: Sequence[float] = (), device: str = "auto",
                            progress: bool = False) -> list[RunPreference]:
    """Train (or load) the runs chapters 9-11 compare, and read them.

    The causal run of the first seed is the one of chapter 6, with its single-tower
    baseline (the split control of that seed reuses it). Controls and width variants
    (:func:`twotower.experiments.store.width_variant`) are causal; width variants use
    the first causal seed. Each run is trained only if its folder is not finished
    (:func:`twotower.experiments.store.ensure_finished`), and read without loading
    its model.

    Args:
        seeds: family -> seeds of its two-tower runs, e.g. ``{"causal": [0, 1, 2]}``.
        control_seeds: control name -> seeds, e.g. ``{"untrained": [0, 1]}``.
        widths: width factors of the size variants.

    Returns:
        Main runs (by family, then seed), then controls, then width variants.
    """
    first = seeds["causal"][0]
    specs = [RunSpec(preset, family, seed)
             for family, chosen in seeds.items() for seed in chosen]
    specs += [RunSpec(preset, "causal", seed, control)
              for control, chosen in control_seeds.items() for seed in chosen]
    specs += [RunSpec(preset, "causal", first, width_name(f)) for f in widths]
    main = RunSpec(preset, "causal", first)
    paths = [ensure_finished(spec, runs_dir, device=device, progress=progress,
                             baseline=spec == main) for spec in specs]
    return [load_preference_run(p) for p in paths]


def replication_flops(preset: str, *, seeds: dict[str, Sequence[int]],
                      control_seeds: dict[str, Sequence[int]],
                      widths: Sequence[float] = ()) -> float:
    """Approximate training FLOPs of :func:`ensure_replication_runs` for ``preset``.

    Counted with :func:`twotower.models.flops.preset_cost`: a main run, an
    independent-towers control or a width variant as one run; the baseline and each
    split control's single tower (except the first seed's, reused) as one phase 1; an
    untrained control as its readouts.
    """
    def cost(cfg: RunConfig) -> float:
        return preset_cost(cfg, 1.0).total_flops

    total = sum(len(chosen) * cost(get_preset(preset, family))
                for family, chosen in seeds.items())
    main_seeds = seeds["causal"]
    causal = get_preset(preset, "causal")
    readouts_only = cost(dataclasses.replace(
        causal, train=dataclasses.replace(causal.train, steps=0)))
    phase1 = cost(causal) - readouts_only
    total += phase1  # the single-tower baseline of the causal seed-0 run
    for control, chosen in control_seeds.items():
        for seed in chosen:
            if control == "independent":
                total += cost(causal)
            elif control == "split":  # the first seed's baseline is reused
                total += readouts_only + (phase1 if seed != main_seeds[0] else 0.0)
            elif control == "reseeded":  # the main run's phase 1 is reused
                total += readouts_only + (phase1 if seed not in main_seeds else 0.0)
            else:
                total += readouts_only
    total += sum(cost(width_variant(causal, f)) for f in widths)
    return float(total)


def run_commands(preset: str, plan: dict, runs_dir: str = "_build/runs") -> list[str]:
    """The shell commands that train the runs of ``plan`` at ``preset`` (say on a GPU
    machine), one per run, into the folders chapters 9-11 look in; the width variants
    are left to the chapter (it trains them itself)."""
    folder = f"{runs_dir}/{preset}"
    first = plan["seeds"]["causal"][0]
    lines = []
    for family, seeds in plan["seeds"].items():
        for seed in seeds:
            extra = " --baseline" if (family, seed) == ("causal", first) else ""
            lines.append(f"python -m twotower run --preset {preset} --family {family} "
                         f"--seed {seed}{extra} --out "
                         f"{RunSpec(preset, family, seed).path(folder)}")
    for control, seeds in plan["control_seeds"].items():
        for seed in seeds:
            lines.append(f"python -m twotower run --preset {preset} --control "
                         f"{control} --seed {seed} --out "
                         f"{RunSpec(preset, 'causal', seed, control).path(folder)}")
    return lines


# --- figure ---------------------------------------------------------------------------


def plot_intervals(ax, labels: Sequence[str], values, lows, highs, *,
                   colors: Sequence[str] | None = None, marks: dict | None = None,
                   xlabel: str = "", zero: bool = True):
    """A forest plot: one row per label, a dot at the value and a bar for its interval.

    Args:
        marks: optional ``{legend label: (values, marker)}`` drawn on the same rows
            (e.g. the noise ceiling as ``"|"``).
        zero: draw a vertical line at 0.
    """
    y = np.arange(len(labels))[::-1]
    colors = list(colors) if colors is not None else [plotting.SHARED_COLOR] * len(y)
    values, lows, highs = (np.asarray(v, float) for v in (values, lows, highs))
    for yi, v, lo, hi, c in zip(y, values, lows, highs, colors):
        ax.plot([lo, hi], [yi, yi], color=c, linewidth=2, alpha=0.7)
        ax.plot([v], [yi], "o", color=c, markersize=5)
    for label, (points, marker) in (marks or {}).items():
        ax.scatter(np.asarray(points, float), y, marker=marker, s=70, zorder=3,
                   color=plotting.ACCENT_COLOR if marker == "|" else "black",
                   label=label)
    if zero:
        ax.axvline(0, color="black", linewidth=0.6)
    ax.set_yticks(y, labels)
    ax.set_xlabel(xlabel)
    if marks:
        ax.legend(fontsize=8, loc="best")
    return ax
