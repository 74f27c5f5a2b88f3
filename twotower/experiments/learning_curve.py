"""Does the preference grow with training? Readouts at several points of one run.

Introduced in chapter 9 (*Is the preference stable?*).

A null at the end of training could mean that there is nothing to find, or that the
runs stopped before it appeared. The curve reads each run at :data:`CURVE_FRACTIONS` of
its phase 1: the towers as they were after that many steps, frozen, with readouts
trained and scored exactly as at the end (same readout settings and seed, same scored
positions). Each point is a run folder of its own (``<run>/curve/step-0000080/``) that
:func:`twotower.analysis.stability.load_preference_run` reads, so every instrument of
chapter 9 applies to it unchanged.

Weights at a step come from the run's own checkpoints when it kept them, else from
training phase 1 again up to that step (``<run>/curve/<phase>/``) on the full run's
schedule: the same computation, so the same weights (a test checks it). Step 0 of a
two-tower run is its untrained control when that run exists (the same initialisation
and readouts; its folder's :class:`~twotower.training.run_folder.RunSpec` has the
variant ``untrained``).

:func:`curve_table` gives the seed-level statistic of each condition at each point,
:func:`fit_trend` its trend in log training tokens with a jackknife interval over
seeds, and its value at another token count (an extrapolation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from twotower.analysis.across_seeds import (MIN_SEEDS, aligned_mean, seed_stability,
                                            stability_difference)
from twotower.analysis.stability import RunPreference, load_preference_run
from twotower.config import RunConfig, read_run_config
from twotower.errors import require
from twotower.experiments.controls import IndependentTowersLM, train_independent
from twotower.experiments.pipeline import score_and_save, start_run
from twotower.models.flops import preset_cost
from twotower.models.tower_lm import TwoTowerLM
from twotower.training import checkpoint as ckpt
from twotower.training.readouts import train_readouts
from twotower.training.run_folder import RunSpec, is_finished, save_results
from twotower.training.runtime import seed_everything
from twotower.training.trainer import train

CURVE_FRACTIONS = (0.0, 0.1, 0.3, 1.0)  # of phase 1's steps


def curve_steps(cfg: RunConfig, fractions: Sequence[float] = CURVE_FRACTIONS
                ) -> list[int]:
    """The phase-1 steps of ``fractions`` (rounded, without repeats)."""
    return sorted({int(round(f * cfg.train.steps)) for f in fractions})


def tokens_at(cfg: RunConfig, step: int) -> int:
    """Training tokens phase 1 has seen after ``step`` steps."""
    return int(step) * cfg.train.batch_size * cfg.data.max_len


def _phase(cfg: RunConfig) -> str:
    return "independent" if cfg.control == "independent" else "joint"


def _checkpoint(folder: Path, step: int) -> Path | None:
    path = folder / f"step-{step:07d}"
    return path if (path / ckpt.META).exists() else None


def _new_model(cfg: RunConfig):
    """The run's model exactly as its phase 1 initialises it."""
    seed_everything(cfg.train.seed)
    kind = IndependentTowersLM if cfg.control == "independent" else TwoTowerLM
    return kind(cfg.model)


def ensure_snapshots(run: str | Path, steps: Sequence[int], *, progress: bool = False
                     ) -> dict[int, Path]:
    """Checkpoints of phase 1 at ``steps`` (0 < step < the run's steps), from the run
    or trained again up to the last one missing. Returns step -> checkpoint folder."""
    run = Path(run)
    cfg = read_run_config(run)
    phase, curve = _phase(cfg), run / "curve"
    inner = [s for s in steps if 0 < s < cfg.train.steps]
    missing = [s for s in inner if _checkpoint(run / phase, s) is None
               and _checkpoint(curve / phase, s) is None]
    if missing:
        last = ckpt.latest_checkpoint(curve / phase)
        require(last is None or ckpt.load_meta(last)["step"] <= min(missing),
                f"{curve / phase} has gone past step {min(missing)}, whose snapshot is "
                f"missing; delete that folder to train the snapshots again")
        every = math.gcd(*missing)
        again = dataclasses.replace(cfg.train, checkpoint_every=every,
                                    keep_checkpoints=max(missing) // every + 1)
        cfg, _, train_b, _ = start_run(cfg, curve)
        model = _new_model(cfg)
        if phase == "independent":
            train_independent(model, train_b, again, run_dir=curve,
                              progress=progress, until=max(missing))
        else:
            train(model, model.loss, train_b, again, phase=phase, run_dir=curve,
                  meta={"n_towers": 2}, progress=progress, until=max(missing))
    return {s: _checkpoint(run / phase, s) or _checkpoint(curve / phase, s)
            for s in inner}


def _untrained_control(run: Path) -> Path | None:
    """The folder of a main run's untrained control, beside it (None for a folder
    that is not named as a main run)."""
    if not RunSpec.matches(run.name):
        return None
    spec = RunSpec.parse(run.name)
    if spec.variant:
        return None
    return dataclasses.replace(spec, variant="untrained").path(run.parent)


def point_dir(run: str | Path, step: int) -> Path:
    """The run folder of the curve point at ``step`` (see the module docstring)."""
    run = Path(run)
    cfg = read_run_config(run)
    if step == cfg.train.steps:
        return run
    untrained = _untrained_control(run)
    if step == 0 and not cfg.control and untrained and is_finished(untrained):
        return untrained
    return run / "curve" / f"step-{step:07d}"


def ensure_point(run: str | Path, step: int, *, progress: bool = False
                 ) -> RunPreference:
    """The curve point of ``run`` at ``step``: read, or made (snapshot, readouts,
    scores) and then read."""
    out = point_dir(run, step)
    if not is_finished(out):
        cfg = read_run_config(run)
        model = _new_model(cfg)
        if step > 0:
            ckpt.load_weights(ensure_snapshots(run, [step], progress=progress)[step],
                              model)
        cfg, data, train_b, val_b = start_run(cfg, out)
        readout_b = dataclasses.replace(train_b, batch_size=cfg.readout.batch_size,
                                        seed=cfg.readout.seed)
        readouts, summary = train_readouts(model, readout_b, cfg.readout, val=val_b,
                                           run_dir=out, progress=progress,
                                           towers_step=step)
        scored = val_b.score_batches(cfg.score_batches)
        save_results(out, {**score_and_save(out, cfg, data, model, readouts, scored,
                                            towers_step=step,
                                            readouts_step=summary["steps"]),
                           "control": cfg.control, "curve_step": step,
                           "train_tokens_seen": tokens_at(cfg, step),
                           "readout_training": summary})
    return load_preference_run(out)


def ensure_curve(runs: Sequence[str | Path],
                 fractions: Sequence[float] = CURVE_FRACTIONS, *,
                 untrained: int = MIN_SEEDS, progress: bool = False
                 ) -> dict[int, list[RunPreference]]:
    """Every point of every run (runs of one preset): step -> one point per run.

    Step 0 (untrained towers) is read for the first ``untrained`` runs only, as many
    seeds as chapter 9 gives its untrained control (the fewest that give an interval
    over seeds); the trend is fitted to the other points, which every run has.
    Snapshots are made once per run, for all its missing points together."""
    require(len(runs) > 0, "ensure_curve needs at least one run directory")
    steps = curve_steps(read_run_config(runs[0]), fractions)
    for run in runs:
        todo = [s for s in steps if not is_finished(point_dir(run, s))]
        ensure_snapshots(run, todo, progress=progress)
    return {s: [ensure_point(run, s, progress=progress)
                for run in (runs[:untrained] if s == 0 else runs)] for s in steps}


def pending_flops(runs: Sequence[str | Path],
                  fractions: Sequence[float] = CURVE_FRACTIONS, *,
                  untrained: int = MIN_SEEDS) -> float:
    """Training FLOPs :func:`ensure_curve` still needs for ``runs``
    (:func:`twotower.models.flops.preset_cost`): phase 1 again up to each run's last
    missing snapshot, and one readout training per missing point."""
    total = 0.0
    for k, run in enumerate(map(Path, runs)):
        cfg = read_run_config(run)
        todo = [s for s in curve_steps(cfg, fractions) if (s > 0 or k < untrained)
                and not is_finished(point_dir(run, s))]
        readouts = preset_cost(dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, steps=0)), 1.0).total_flops
        phase1 = preset_cost(cfg, 1.0).total_flops - readouts
        again = [s for s in todo if 0 < s < cfg.train.steps
                 and _checkpoint(run / _phase(cfg), s) is None
                 and _checkpoint(run / "curve" / _phase(cfg), s) is None]
        total += len(todo) * readouts + phase1 * max(again, default=0) / cfg.train.steps
    return total


# --- the statistic along the curve ----------------------------------------------------


def curve_table(conditions: dict[str, dict[int, list[RunPreference]]], *,
                n_perm: int = 200) -> tuple[pd.DataFrame, dict]:
    """The seed-level statistic of every condition at every point.

    Args:
        conditions: label -> the output of :func:`ensure_curve` (one list of runs
            per step, the same seeds in the same order at every step).

    Returns:
        ``(table, stabilities)``: one row per (condition, step) with training tokens,
        mean aligned r_x, its interval over seeds and p; and (label, step) ->
        :class:`~twotower.analysis.across_seeds.SeedStability`.
    """
    rows, found = [], {}
    for label, points in conditions.items():
        for step, runs in sorted(points.items()):
            s = seed_stability(runs, label, n_perm=n_perm)
            found[label, step] = s
            rows.append({"condition": label, "step": step,
                         "tokens": tokens_at(runs[0].config, step),
                         "seeds": s.n_seeds, "mean r_x": s.mean, "low": s.low,
                         "high": s.high, "p": s.p_value})
    return pd.DataFrame(rows), found


def difference_table(found: dict, x: str, y: str, tokens: dict[int, int]
                     ) -> pd.DataFrame:
    """``x`` minus ``y`` at every step both have (:func:`stability_difference`), in
    the layout of :func:`curve_table` (the difference in ``mean r_x``)."""
    steps = sorted({s for (label, s) in found if label == x} &
                   {s for (label, s) in found if label == y})
    rows = []
    for step in steps:
        d = stability_difference(found[x, step], found[y, step])
        rows.append({"condition": f"{x} minus {y}", "step": step,
                     "tokens": tokens[step], "mean r_x": d.value, "low": d.low,
                     "high": d.high, "p": d.p_value})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Trend:
    """A straight line through the mean aligned r_x against log10(training tokens)
    (the points with tokens > 0), with jackknife intervals over seeds.

    ``direction`` is "up" or "down" when the slope's interval excludes 0, else
    "flat"; ``at``/``at_low``/``at_high`` is the line's value at ``at_tokens`` (an
    extrapolation when that lies beyond the points).
    """

    label: str
    slope: float  # per decade of training tokens
    low: float
    high: float
    at_tokens: float
    at: float
    at_low: float
    at_high: float
    n_points: int
    n_seeds: int

    @property
    def direction(self) -> str:
        if not np.isfinite(self.low):
            return "unknown (too few seeds)"
        return "up" if self.low > 0 else "down" if self.high < 0 else "flat"


def _line(x: np.ndarray, y: np.ndarray, at: float) -> np.ndarray:
    """Slope and the value at ``at`` of the least-squares line through (x, y)."""
    slope, intercept = np.polyfit(x, y, 1)
    return np.array([slope, intercept + slope * at])


def _lines(found: dict, label: str, tokens: dict[int, int], at: float):
    """The full line and each leave-one-seed-out line of ``label``'s curve."""
    steps = sorted(s for (name, s) in found if name == label and tokens[s] > 0)
    require(len(steps) >= 2, f"a trend needs 2 points after training began; "
            f"{label!r} has {len(steps)}")
    results = [found[label, s] for s in steps]
    x = np.log10([tokens[s] for s in steps])
    full = _line(x, np.array([r.mean for r in results]), at)
    n = min(r.n_seeds for r in results)
    leave = np.array([_line(x, np.array([aligned_mean(r.matrix, r.signs,
                                                      np.arange(r.n_seeds) != k)
                                         for r in results]), at)
                      for k in range(n)]) if n >= MIN_SEEDS else None
    return full, leave, len(steps), n


def _jack_var(leave: np.ndarray | None) -> np.ndarray:
    if leave is None:
        return np.full(2, np.nan)
    n = len(leave)
    return (n - 1) / n * np.sum((leave - leave.mean(0)) ** 2, axis=0)


def fit_trend(found: dict, label: str, tokens: dict[int, int], at_tokens: float, *,
              minus: str | None = None, level: float = 0.95) -> Trend:
    """The trend of ``label``'s curve (or of ``label`` minus ``minus``: independent
    seed sets, so the jackknife variances add, with the smaller set's degrees of
    freedom).

    Args:
        found: the second output of :func:`curve_table`.
        tokens: step -> training tokens (the table's ``tokens`` column).
        at_tokens: where to read the line off (e.g. another preset's token count).
    """
    at = math.log10(at_tokens)
    full, leave, n_points, n = _lines(found, label, tokens, at)
    var = _jack_var(leave)
    if minus is not None:
        other, leave_other, _, n_other = _lines(found, minus, tokens, at)
        full, var, n = full - other, var + _jack_var(leave_other), min(n, n_other)
    se = np.sqrt(var)
    t = stats.t.ppf((1 + level) / 2, n - 1) if n >= 2 else np.nan
    low, high = full - t * se, full + t * se
    name = label if minus is None else f"{label} minus {minus}"
    return Trend(name, float(full[0]), float(low[0]), float(high[0]), float(at_tokens),
                 float(full[1]), float(low[1]), float(high[1]), n_points, n)


def trend_table(trends: Sequence[Trend], reached: float) -> pd.DataFrame:
    """One row per trend: slope per decade of tokens with its interval, direction,
    and the extrapolated value (marked as such when ``at_tokens > reached``)."""
    return pd.DataFrame([{
        "trend of": t.label, "slope / decade": t.slope, "low": t.low, "high": t.high,
        "direction": t.direction,
        ("extrapolated" if t.at_tokens > reached else "value") +
        f" at {t.at_tokens:.3g} tokens": t.at,
        "at low": t.at_low, "at high": t.at_high, "points": t.n_points,
        "seeds": t.n_seeds} for t in trends])


def plot_curve(ax, table: pd.DataFrame, colors: dict[str, str] | None = None):
    """Mean aligned r_x (dots, bars: interval over seeds) against training tokens,
    with each condition's fitted line; step 0 is drawn at the left edge."""
    positive = table.loc[table["tokens"] > 0, "tokens"]
    zero_at = positive.min() / 4
    groups = list(table.groupby("condition", sort=False))
    for k, (label, part) in enumerate(groups):
        part = part.sort_values("tokens")
        dodge = 1.07 ** (k - (len(groups) - 1) / 2)  # side by side, not on top
        x = np.where(part["tokens"] > 0, part["tokens"], zero_at) * dodge
        color = (colors or {}).get(label)
        line = ax.errorbar(x, part["mean r_x"], yerr=[part["mean r_x"] - part["low"],
                                                      part["high"] - part["mean r_x"]],
                           fmt="o", capsize=3, color=color, label=label)
        trained = part["tokens"] > 0
        if trained.sum() >= 2:
            lx = np.log10(part.loc[trained, "tokens"])
            slope, intercept = np.polyfit(lx, part.loc[trained, "mean r_x"], 1)
            grid = np.linspace(lx.min(), lx.max(), 20)
            ax.plot(10 ** grid * dodge, intercept + slope * grid, "--",
                    color=line[0].get_color())
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ticks = [zero_at, *sorted(positive.unique())]
    ax.set_xticks(ticks, ["0"] + [f"{t:.2g}" for t in ticks[1:]])
    ax.minorticks_off()
    ax.set(xlabel="training tokens of phase 1", ylabel="mean aligned r_x over seeds")
    ax.legend(fontsize=8)
    return ax
