"""The book's answer to each of the paper's four claims, with the power behind it.

Introduced in chapter 11 (*Replication scorecard*), whose first screen shows it.

:func:`claim_answers` condenses the scorecard (:mod:`twotower.experiments.scorecard`) to
one row per claim of the paper: the answer at the scale measured, the numbers it rests
on, and what a "does not hold" can and cannot rule out there: the power of the
cross-seed instrument on planted divisions (:mod:`twotower.experiments.power`) and the
trend of claim 2's primary test along training
(:mod:`twotower.experiments.learning_curve`). Nothing is trained here: what chapter 9
did not leave on disk is reported as not measured.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.analysis.stability import collect_runs
from twotower.config import get_preset
from twotower.experiments import learning_curve as lc
from twotower.experiments import power, scorecard
from twotower.experiments.replication import is_cpu_scale, part2_plan
from twotower.experiments.scorecard import FAILS, HOLDS, NOT_MEASURED
from twotower.training.run_folder import RunSpec, is_finished

CLAIMS = {
    "1": "two identical towers train side by side through one fused head",
    "2": "a consistent preference emerges (beyond the controls)",
    "3": "it is stable regardless of configuration and type",
    "4": "the preference separates syntax from semantics",
}


def _interval(row) -> str:
    return f"{row.value:+.3f} [{row.low:+.3f}, {row.high:+.3f}]"


def _claim1(runs) -> tuple[str, str]:
    main = scorecard._find(runs)
    untrained = scorecard._find(runs, variant="untrained")
    if main is None or untrained is None:
        return NOT_MEASURED, "needs chapter 9's main run and untrained control"
    trained = main.results["scores"]["joint_loss"]
    start = untrained.results["scores"]["joint_loss"]
    text = f"fused-head loss {trained:.3f} nats after training, {start:.3f} untrained"
    single = main.results.get("baseline", {}).get("scored_loss")
    if single is not None:
        text += f"; the parameter-matched single tower {single:.3f}"
    return (HOLDS if trained < start else FAILS), text


def _claim2(card: pd.DataFrame) -> tuple[str, str]:
    primary = card[card["test"].str.contains("primary test")]
    if primary.empty or not np.isfinite(primary["value"].iloc[0]):
        return NOT_MEASURED, "the primary test needs chapter 9's seeds"
    row = primary.iloc[0]
    seeds = re.search(r"(\d+) seeds", row.test)
    return row.verdict, (f"two-tower minus independent towers, mean aligned r_x "
                         f"over seeds: {_interval(row)}"
                         + (f" ({seeds.group(1)} seeds a side)" if seeds else ""))


def _claim3(card: pd.DataFrame) -> tuple[str, str]:
    rows = card[card["claim"].str.startswith("3.") & card["test"].str.startswith(
        "across") & card["value"].notna()]
    if rows.empty:
        return NOT_MEASURED, "needs runs of several families or sizes"
    verdict = HOLDS if (rows["verdict"] == HOLDS).all() else FAILS
    parts = [f"{re.sub(r', seeds? [0-9 and]+', '', row.test)}: r_x {_interval(row)}"
             for row in rows.itertuples()]
    return verdict, "; ".join(parts)


def _claim4(card: pd.DataFrame) -> tuple[str, str]:
    pos = card[card["test"].str.startswith("function vs content")]
    probe = card[card["test"].str.startswith("one tower holds more")]
    measured = [r for r in (pos, probe) if not r.empty and
                np.isfinite(r["value"].iloc[0])]
    if not measured:
        return NOT_MEASURED, "needs chapter 10's probe report and UD data"
    verdict = HOLDS if all(r["verdict"].iloc[0] == HOLDS for r in measured) else FAILS
    text = "; ".join(f"{r['test'].iloc[0].split(' (')[0]}: {_interval(r.iloc[0])} "
                     f"({r['verdict'].iloc[0]})" for r in measured)
    return verdict, text


def power_note(runs_dir: str | Path, preset: str, n_perm: int = 1000) -> str:
    """What the cross-seed instrument detects at ``preset``, from chapter 9's
    planted runs (or why it is not known)."""
    if power.pending_flops(preset, runs_dir=runs_dir) > 0:
        return "power not measured at this scale (chapter 9 trains the planted runs)"
    table = power.power_table(power.ensure_power_runs(runs_dir, preset),
                              n_perm=n_perm)
    weakest = power.smallest_detected(table)
    seeds = int(table["seeds"].iloc[0])
    if weakest is None:
        found = (f"the instrument detects none of the planted divisions at {seeds} "
                 f"seeds (up to a gap of {table['|gap|'].max():.2f} nats): this null "
                 "rules out nothing")
    else:
        found = (f"the instrument detects a planted division from {weakest!r} (gap "
                 f"{table.loc[weakest, '|gap|']:.2f} nats) at {seeds} seeds; weaker "
                 "ones would go unseen")
    if "none" in table.index and power.STRENGTHS.get("none") == 0.0:
        seen = "detects" if table.loc["none", "detected"] else "misses"
        found += (f"; with nothing planted it {seen} the towers' own division "
                  f"(|gap| {table.loc['none', '|gap|']:.2f} nats)")
    return found


def trend_note(runs_dir: str | Path, preset: str, seed: int = 0,
               n_perm: int = 200) -> str:
    """The trend of claim 2's primary difference along training (chapter 9's
    learning curve), or why it is not known."""
    plan = part2_plan(is_cpu_scale(preset), seed)
    paths = {"two-tower": [RunSpec(preset, "causal", s).path(runs_dir)
                           for s in plan["seeds"]["causal"]],
             "independent": [RunSpec(preset, "causal", s, "independent").path(runs_dir)
                             for s in plan["control_seeds"]["independent"]]}
    if not all(is_finished(p) for ps in paths.values() for p in ps) \
            or any(lc.pending_flops(ps) > 0 for ps in paths.values()):
        return "trend along training not measured (chapter 9 makes the curve)"
    table, found = lc.curve_table({k: lc.ensure_curve(v) for k, v in paths.items()},
                                  n_perm=n_perm)
    tokens = dict(zip(table["step"], table["tokens"]))
    colab = get_preset("colab")
    t = lc.fit_trend(found, "two-tower", tokens, lc.tokens_at(colab, colab.train.steps),
                     minus="independent")
    return (f"along training the difference moves {t.slope:+.3f} per decade of tokens "
            f"[{t.low:+.3f}, {t.high:+.3f}] ({t.direction}); at colab's "
            f"{t.at_tokens:.2g} tokens, if the line held: {t.at:+.2f} "
            f"[{t.at_low:+.2f}, {t.at_high:+.2f}] (an extrapolation)")


def claim_answers(card: pd.DataFrame, runs_dir: str | Path, preset: str, *,
                  seed: int = 0, n_perm: int = 1000) -> pd.DataFrame:
    """One row per claim of the paper: ``answer``, ``evidence`` and ``power`` (what a
    "does not hold" can rule out), at the scale of ``card``
    (:func:`twotower.experiments.scorecard.build_scorecard` of the same runs)."""
    runs = collect_runs(runs_dir, preset)
    found = {"1": _claim1(runs), "2": _claim2(card), "3": _claim3(card),
             "4": _claim4(card)}
    detects = power_note(runs_dir, preset, n_perm)
    notes = {"1": "", "2": f"{detects}; {trend_note(runs_dir, preset, seed)}",
             "3": f"the same r_x instrument: {detects}",
             "4": "see the probe's chain-tree and untrained baselines in the table "
                  "below (the probe rows say 'instrument fails' when it cannot speak)"}
    return pd.DataFrame([{"claim": f"{k}. {CLAIMS[k]}", "answer": found[k][0],
                          "evidence": found[k][1],
                          "power": notes[k] if found[k][0] != HOLDS else ""}
                         for k in CLAIMS]).set_index("claim")
