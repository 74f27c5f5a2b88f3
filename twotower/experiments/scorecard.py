"""The replication scorecard, computed from the runs on disk.

Introduced in chapter 11 (*Replication scorecard*).

:func:`build_scorecard` reads every finished run of a preset (main runs, controls,
width variants, and the probe report chapter 10 leaves in the main run) and computes one
row per claim: the statistic that tests it, our value with its 95% interval, the scale,
and a verdict. Nothing in the table is typed by hand: change a run and the table
changes. The verdict rules are fixed in advance:

* a reliability (split-half r, halves of whole articles) *holds* when its interval
  lies above 0;
* a difference to a control (replicable spread) holds when its interval lies above 0;
* a correlation of two runs (the disattenuated ``r_x`` of
  :func:`twotower.analysis.stability.compare_runs`) holds when its interval lies above
  the 95th percentile of ``|r_x|`` with shuffled tokens;
* stability across seeds (:mod:`twotower.analysis.across_seeds`; seeds are the unit, at
  least ``twotower.analysis.across_seeds.MIN_SEEDS`` of them) and the two-tower model's
  lead over a control across seeds hold when their interval over seeds lies above 0;
  with fewer seeds the row says so instead of a verdict;
* the part-of-speech test holds as its pre-registered rule says (chapter 10);
* a probe difference holds when its interval excludes 0 (and, for the agreement row,
  when it points to the tower that function words prefer), at the layer chosen on the
  probes' dev split; when every tower stays below the left-to-right chain tree, the
  probe rows say "instrument fails": the instrument cannot speak at this scale.

Every row with a p-value is corrected together by Holm's procedure (``p_holm``): such
a row holds only if the correction also rejects its null. A row whose runs or report
are missing says "not measured at this scale".

The audit of the authors' bugs, the other table of chapter 11, is
:mod:`twotower.experiments.authors_bugs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.analysis import across_seeds
from twotower.analysis import stability
from twotower.analysis import syntax
from twotower.analysis.stability import RunPreference
from twotower.data import ud as pos
from twotower.data.windows import prepare_data
from twotower.analysis.stats import holm_adjusted

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured at this scale"
TOO_FEW = "too few seeds for an interval over seeds"
INSTRUMENT_FAILS = "instrument fails"  # the probe does not beat a chain tree
CONTROL_NAMES = {"split": "(a) single tower split in two",
                 "independent": "(b) towers trained independently",
                 "untrained": "(c) untrained two-tower model"}
MAIN_FAMILY = "causal"  # claims 2 and 4 are tested on the causal run of chapter 6


def scale_of(preset: str) -> str:
    """What a preset's numbers can mean."""
    return {"smoke": "smoke (CI: tests the code only)",
            "small": "small (CPU)"}.get(preset, f"GPU preset ({preset})")


@dataclass(frozen=True)
class ScoreRow:
    """One line of the scorecard."""

    claim: str
    test: str
    statistic: str
    value: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")
    p_value: float = float("nan")
    verdict: str = NOT_MEASURED
    p_holm: float = float("nan")  # Holm-adjusted over every row with a p-value


def interval_verdict(low: float, bar: float = 0.0) -> str:
    """The verdict on an interval whose lower end is ``low``: it holds when ``low`` lies
    strictly above ``bar``; NaN (nothing measured) says so (chapter 11's exercise)."""
    if not np.isfinite(low):
        return NOT_MEASURED
    return HOLDS if low > bar else FAILS


def with_interval(table: pd.DataFrame, value: str = "value", low: str = "low",
                  high: str = "high", *, fmt: str = "+.3f",
                  name: str | None = None) -> pd.DataFrame:
    """``table`` with its ``value``, ``low`` and ``high`` columns shown as one text
    column, e.g. ``-0.051 [-0.096, -0.006]`` (chapters 9 and 11).

    Three bare columns of numbers make a table too wide for the page and run
    together when squeezed; one formatted column does neither. A narrow column
    breaks only between the value and its interval (the interval's own space is
    non-breaking), so a table fits the page by putting the interval under its value.
    A missing value leaves the cell empty, a missing interval the value alone.

    Args:
        fmt: format of each number.
        name: the new column's name (default ``"<value> [95% interval]"``); it takes
            the place of ``value``.
    """
    def text(v: float, lo: float, hi: float) -> str:
        if not np.isfinite(v):
            return ""
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return format(v, fmt)
        return f"{v:{fmt}} [{lo:{fmt}},\u00a0{hi:{fmt}}]"

    numbers = table[[value, low, high]].to_numpy(dtype=float)
    shown = table.drop(columns=[low, high])
    shown[value] = [text(*row) for row in numbers]
    return shown.rename(columns={value: name or f"{value} [95% interval]"})


def _find(runs, family=MAIN_FAMILY, seed=0, variant="") -> RunPreference | None:
    return next((r for r in runs if (r.family, r.seed, r.variant) ==
                 (family, seed, variant)), None)


# --- claim 2: a consistent preference, beyond the controls ----------------------------


def _claim2(runs, n_boot, n_perm, seed) -> list[ScoreRow]:
    claim = "2. a consistent preference emerges"
    main = _find(runs, seed=seed)
    within = ScoreRow(claim, f"within the run (causal, seed {seed})",
                      "split-half r of centred pref (halves: whole articles)")
    if main is not None:
        rel = stability.reliability(main, True, seed, n_boot)
        within = replace(within, value=rel.r, low=rel.low, high=rel.high,
                         verdict=interval_verdict(rel.low))
    rows = [within]
    for name, label in CONTROL_NAMES.items():
        control = _find(runs, seed=seed, variant=name)
        row = ScoreRow(claim, f"larger than control {label}",
                       "replicable spread of centred pref, two-tower minus control "
                       "(nats)")
        if main is not None and control is not None:
            diff, lo, hi = stability.compare_spread(main, control, True, seed, n_boot)
            row = replace(row, value=diff, low=lo, high=hi, verdict=interval_verdict(lo))
        rows.append(row)
    reseeded = _find(runs, seed=seed, variant="reseeded")
    row = ScoreRow(claim, "it belongs to the towers (same towers, readouts of "
                   "another seed)", "r_x of centred pref (bar: shuffled-token 95%)")
    if main is not None and reseeded is not None:
        c = stability.compare_runs(main, reseeded, n_boot=n_boot, seed=seed)
        row = replace(row, value=c.r_x, low=c.low, high=c.high,
                      verdict=interval_verdict(c.low, c.null95))
    rows.append(row)
    return rows + _across_seeds(runs, claim, n_perm, seed)


def _across_seeds(runs, claim, n_perm, seed) -> list[ScoreRow]:
    """Seeds as the unit: each family's stability over all its seeds, and the
    two-tower model's against each control's (the independent towers: claim 2's
    primary test)."""
    rows, main = [], None
    statistic = ("mean aligned r_x of centred pref over all seed pairs (interval: "
                 "jackknife over seeds; p: the procedure on shuffled tokens)")
    for family, group in stability.seed_groups(runs).items():
        row = ScoreRow(claim, f"stable across seeds ({family}, {len(group)} seeds)",
                       statistic)
        if len(group) >= 2:
            res = across_seeds.seed_stability(group, family, n_perm=n_perm, seed=seed)
            row = replace(row, value=res.mean, low=res.low, high=res.high,
                          p_value=res.p_value, verdict=_seed_verdict(res.low,
                                                                     len(group)))
            main = res if family == MAIN_FAMILY else main
        rows.append(row)
    for name, label in CONTROL_NAMES.items():
        group = stability.seed_groups(runs, name).get(MAIN_FAMILY, [])
        primary = " (primary test)" if name == "independent" else ""
        row = ScoreRow(claim, f"more stable across seeds than control {label}, "
                       f"{len(group)} seeds{primary}", "mean aligned r_x, two-tower "
                       "minus control (t over seeds)")
        if main is not None and len(group) >= 2:
            control = across_seeds.seed_stability(group, name, n_perm=0)
            d = across_seeds.stability_difference(main, control)
            row = replace(row, value=d.value, low=d.low, high=d.high,
                          p_value=d.p_value,
                          verdict=_seed_verdict(d.low, min(len(group),
                                                           main.n_seeds)))
        rows.append(row)
    return rows


def _seed_verdict(low: float, n_seeds: int) -> str:
    if n_seeds < across_seeds.MIN_SEEDS:
        return f"{TOO_FEW} ({n_seeds})"
    return interval_verdict(low)


# --- claim 3: regardless of configuration and type ------------------------------------


def _claim3(runs, n_boot, seed) -> list[ScoreRow]:
    claim = "3. stable regardless of configuration and type"
    rows = []
    mains = [r for r in runs if r.variant == "" and r.seed == seed]
    for run in mains:
        rel = stability.reliability(run, True, seed, n_boot)
        rows.append(ScoreRow(claim, f"a preference emerges ({run.family}, seed {seed})",
                             "split-half r of centred pref", rel.r, rel.low, rel.high,
                             verdict=interval_verdict(rel.low)))
    statistic = "r_x of centred pref (bar: shuffled-token 95%)"
    pairs = stability.family_pairs(runs, seed)
    for kind, a, b in pairs:
        c = stability.compare_runs(a, b, n_boot=n_boot, seed=seed)
        rows.append(ScoreRow(claim, f"across {kind}, seeds {a.seed} and {b.seed}",
                             statistic, c.r_x, c.low, c.high,
                             verdict=interval_verdict(c.low, c.null95)))
    if not pairs:
        rows.append(ScoreRow(claim, "across families", statistic))
    wide = [r for r in runs if r.variant.startswith("width") and r.seed == seed]
    main = _find(runs, seed=seed + 1)  # another seed: see stability.family_pairs
    for variant in wide or [None]:
        test = f"across sizes ({variant.variant if variant else 'width variant'}, " \
            f"seeds {seed} and {seed + 1})"
        row = ScoreRow(claim, test, statistic)
        if variant is not None and main is not None:
            c = stability.compare_runs(main, variant, n_boot=n_boot, seed=seed)
            row = replace(row, value=c.r_x, low=c.low, high=c.high,
                          verdict=interval_verdict(c.low, c.null95))
        rows.append(row)
    return rows


# --- claim 4: syntax and semantics ----------------------------------------------------


def _claim4(verdict, probes, n_boot, seed) -> list[ScoreRow]:
    claim = "4. the preference separates syntax and semantics"
    n = len(verdict.seeds) if verdict is not None else 0
    rows = [ScoreRow(claim, f"function vs content words ({n} causal seeds, "
                     "pre-registered test)", "stratified d of centred pref, word-"
                     "initial pieces, frequency x difficulty strata (range over "
                     "aligned seeds; p: the largest seed's)")]
    if verdict is not None:
        rows[0] = replace(rows[0], value=verdict.value, low=verdict.low,
                          high=verdict.high, p_value=verdict.p_value,
                          verdict=HOLDS if verdict.holds else FAILS)
    effect = verdict.tests[0] if verdict is not None else None  # the main run's
    probe_rows = [
        ScoreRow(claim, "one tower holds more of the parse tree",
                 "UUAS of tower A minus B at the layer chosen on probe-dev"),
        ScoreRow(claim, "... and it is the tower function words prefer",
                 "same difference, signed toward the function-word tower"),
        ScoreRow("book: the towers learn syntax", "trained towers beat an untrained "
                 "model", "UUAS (both towers) minus untrained, layer chosen on dev"),
        ScoreRow("book: the probe can speak", "the probe clears the left-to-right "
                 "chain", "UUAS (both towers) minus the chain tree, chosen layer")]
    if probes is not None and probes.get("trained") is not None:
        s = syntax.probe_summary(probes["trained"], probes.get("untrained"), n_boot,
                                 seed, baselines=probes.get("baselines"))
        differs = s["low"] > 0 or s["high"] < 0
        probe_rows[0] = replace(probe_rows[0], value=s["diff"], low=s["low"],
                                          high=s["high"],
                                          verdict=HOLDS if differs else FAILS)
        if effect is not None:
            sign = 1.0 if effect.diff > 0 else -1.0  # the function-word tower: A?
            lo, hi = sorted((sign * s["low"], sign * s["high"]))
            probe_rows[1] = replace(
                probe_rows[1], value=sign * s["diff"], low=lo, high=hi,
                verdict=HOLDS if lo > 0 and effect.p_value < 0.05 else FAILS)
        if "vs_untrained" in s:
            probe_rows[2] = replace(
                probe_rows[2], value=s["vs_untrained"], low=s["vs_low"],
                high=s["vs_high"], verdict=interval_verdict(s["vs_low"]))
        if "vs_chain" in s:
            probe_rows[3] = replace(
                probe_rows[3], value=s["vs_chain"], low=s["vs_chain_low"],
                high=s["vs_chain_high"], verdict=interval_verdict(s["vs_chain_low"]))
        if s.get("instrument_fails"):  # below a tree that needs no vectors at all
            probe_rows = [replace(row, verdict=INSTRUMENT_FAILS) if
                          np.isfinite(row.value) else row for row in probe_rows]
    return rows + probe_rows


def run_upos(main: RunPreference, upos: dict | None = None) -> dict:
    """``upos`` if given, else UD English EWT (bundled with the package) mapped with
    the run's own tokenizer (id -> tag, see :func:`twotower.data.ud.dominant_upos`)."""
    if upos is not None:
        return upos
    sentences = pos.load_ud(pos.ud_english_ewt_paths())
    return pos.dominant_upos(sentences, prepare_data(main.config.data).tokenizer)


def build_scorecard(runs_dir: str | Path, preset: str, *, n_boot: int = 1000,
                    n_perm: int = 2000, seed: int = 0,
                    upos: dict | None = None) -> pd.DataFrame:
    """The scorecard of every finished run of ``preset`` in ``runs_dir``.

    Args:
        seed: the seed of the main run (chapter 6's; seeds ``seed`` and ``seed + 1``
            are compared) and of the bootstraps and permutations.
        upos: WordPiece id -> (UPOS, share, count) for the part-of-speech rows
            (default: UD English EWT with the main run's tokenizer, if on disk).

    Returns:
        One row per :class:`ScoreRow`, with the ``scale`` column added.
    """
    runs = stability.collect_runs(runs_dir, preset)
    main = _find(runs, seed=seed)
    causal = stability.seed_groups(runs).get(MAIN_FAMILY, [])
    verdict = syntax.pos_verdict(causal, run_upos(main, upos), n_perm, seed) \
        if main is not None else None
    probes = syntax.load_probe_report(main.path) if main is not None else None
    rows = _claim2(runs, n_boot, n_perm, seed) + _claim3(runs, n_boot, seed) + \
        _claim4(verdict, probes, n_boot, seed)
    table = pd.DataFrame([asdict(r) for r in with_holm(rows)])
    table.insert(3, "scale", scale_of(preset))
    return table


def with_holm(rows: list[ScoreRow], alpha: float = 0.05) -> list[ScoreRow]:
    """Holm-adjust the p-values of every row that has one; a row that holds by its
    own rule but whose adjusted p is not below ``alpha`` does not hold."""
    tested = [i for i, row in enumerate(rows) if np.isfinite(row.p_value)]
    adjusted = holm_adjusted([rows[i].p_value for i in tested])
    out = list(rows)
    for i, p in zip(tested, adjusted):
        verdict = FAILS if rows[i].verdict == HOLDS and p > alpha else rows[i].verdict
        out[i] = replace(rows[i], p_holm=float(p), verdict=verdict)
    return out
