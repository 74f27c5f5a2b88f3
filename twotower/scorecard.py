"""The replication scorecard, computed from the runs on disk, and the audit of the bugs.

Introduced in chapter 11 (*Replication scorecard*).

:func:`build_scorecard` reads every finished run of a preset (main runs, controls,
width variants, and the probe report chapter 10 leaves in the main run) and computes one
row per claim: the statistic that tests it, our value with its 95% interval, the scale,
and a verdict. Nothing in the table is typed by hand: change a run and the table
changes. The verdict rules are fixed in advance:

* a reliability (split-half r) *holds* when its interval lies above 0;
* a difference to a control (spread or cross-seed r) holds when its interval lies
  above 0;
* a cross-run correlation holds when its interval lies above the 95th percentile of
  ``|r|`` with shuffled tokens;
* a part-of-speech difference holds when its permutation p-value is below 0.05;
* a probe difference holds when its interval excludes 0 (and, for the agreement row,
  when it points to the tower that function words prefer).

A row whose runs or report are missing says "not measured at this scale".

:data:`BUG_AUDIT` maps each bug of the authors' code (PAPER.md section 1.4) to the tests
that show this package does not have it; :func:`audit_table` checks that every named
test exists in ``tests/``.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import stability, syntax
from .stability import RunPreference

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured at this scale"
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


def _above(low: float, bar: float = 0.0) -> str:
    if not np.isfinite(low):
        return NOT_MEASURED
    return HOLDS if low > bar else FAILS


def _find(runs, family=MAIN_FAMILY, seed=0, variant="") -> RunPreference | None:
    return next((r for r in runs if (r.family, r.seed, r.variant) ==
                 (family, seed, variant)), None)


# --- claim 2: a consistent preference, beyond the controls ----------------------------


def _claim2(runs, n_boot, seed) -> list[ScoreRow]:
    claim = "2. a consistent preference emerges"
    main = _find(runs, seed=seed)
    rows = []
    if main is not None:
        rel = stability.reliability(main, True, seed, n_boot)
        rows.append(ScoreRow(claim, f"within the run (causal, seed {seed})",
                             "split-half r of centred pref", rel.r, rel.low, rel.high,
                             verdict=_above(rel.low)))
    else:
        rows.append(ScoreRow(claim, f"within the run (causal, seed {seed})",
                             "split-half r of centred pref"))
    for name, label in CONTROL_NAMES.items():
        control = _find(runs, seed=seed, variant=name)
        row = ScoreRow(claim, f"larger than control {label}",
                       "replicable spread of centred pref, two-tower minus control "
                       "(nats)")
        if main is not None and control is not None:
            diff, lo, hi = stability.compare_spread(main, control, True, seed, n_boot)
            row = ScoreRow(row.claim, row.test, row.statistic, diff, lo, hi,
                           verdict=_above(lo))
        rows.append(row)
    reseeded = _find(runs, seed=seed, variant="reseeded")
    row = ScoreRow(claim, "it belongs to the towers (same towers, readouts of "
                   "another seed)", "sign-aligned r of centred pref (bar: shuffled-"
                   "token 95%)")
    if main is not None and reseeded is not None:
        c = stability.compare_runs(main, reseeded, centred=True, n_boot=n_boot,
                                   seed=seed)
        row = replace(row, value=c.r, low=c.low, high=c.high,
                      verdict=_above(c.low, c.null95))
    rows.append(row)
    for family in dict.fromkeys(r.family for r in runs if r.variant == ""):
        a, b = _find(runs, family, seed), _find(runs, family, seed + 1)
        row = ScoreRow(claim, f"across seeds {seed} and {seed + 1} ({family})",
                       "sign-aligned r of centred pref (bar: shuffled-token 95%)")
        if a is not None and b is not None:
            c = stability.compare_runs(a, b, centred=True, n_boot=n_boot, seed=seed)
            row = ScoreRow(row.claim, row.test, row.statistic, c.r, c.low, c.high,
                           verdict=_above(c.low, c.null95))
        rows.append(row)
    for name, label in CONTROL_NAMES.items():
        pair = (_find(runs, seed=seed), _find(runs, seed=seed + 1))
        control = (_find(runs, seed=seed, variant=name),
                   _find(runs, seed=seed + 1, variant=name))
        row = ScoreRow(claim, f"more stable across seeds than control {label}",
                       "cross-seed r, two-tower minus control")
        if None not in pair + control:
            diff, lo, hi = stability.compare_stability(pair, control, n_boot=n_boot,
                                                       seed=seed)
            row = ScoreRow(row.claim, row.test, row.statistic, diff, lo, hi,
                           verdict=_above(lo))
        rows.append(row)
    return rows


# --- claim 3: regardless of configuration and type ------------------------------------


def _claim3(runs, n_boot, seed) -> list[ScoreRow]:
    claim = "3. stable regardless of configuration and type"
    rows = []
    mains = [r for r in runs if r.variant == "" and r.seed == seed]
    for run in mains:
        rel = stability.reliability(run, True, seed, n_boot)
        rows.append(ScoreRow(claim, f"a preference emerges ({run.family}, seed {seed})",
                             "split-half r of centred pref", rel.r, rel.low, rel.high,
                             verdict=_above(rel.low)))
    pairs = stability.family_pairs(runs, seed)
    for kind, a, b in pairs:
        c = stability.compare_runs(a, b, centred=True, n_boot=n_boot, seed=seed)
        rows.append(ScoreRow(claim, f"across {kind}, seeds {a.seed} and {b.seed}",
                             "sign-aligned r of centred pref (bar: shuffled-token 95%)",
                             c.r, c.low, c.high, verdict=_above(c.low, c.null95)))
    if not pairs:
        rows.append(ScoreRow(claim, "across families",
                             "sign-aligned r of centred pref"))
    wide = [r for r in runs if r.variant.startswith("width") and r.seed == seed]
    main = _find(runs, seed=seed + 1)  # another seed: see stability.family_pairs
    for variant in wide or [None]:
        test = f"across sizes ({variant.variant if variant else 'width variant'}, " \
            f"seeds {seed} and {seed + 1})"
        row = ScoreRow(claim, test, "sign-aligned r of centred pref (bar: shuffled-"
                       "token 95%)")
        if variant is not None and main is not None:
            c = stability.compare_runs(main, variant, centred=True, n_boot=n_boot,
                                       seed=seed)
            row = ScoreRow(claim, test, row.statistic, c.r, c.low, c.high,
                           verdict=_above(c.low, c.null95))
        rows.append(row)
    return rows


# --- claim 4: syntax and semantics ----------------------------------------------------


def _claim4(main: RunPreference | None, effect, probes, n_boot, seed) -> list[ScoreRow]:
    claim = "4. the preference separates syntax and semantics"
    pos_test = f"function vs content words (causal, seed {seed})"
    rows = [ScoreRow(claim, pos_test, "Cohen's d of pref (permutation p)"),
            ScoreRow(claim, pos_test + ", within frequency bins",
                     "frequency-stratified d (permutation p within bins)")]
    if effect is not None:
        rows[0] = replace(rows[0], value=effect.cohens_d,
                                    p_value=effect.p_value,
                                    verdict=HOLDS if effect.p_value < 0.05 else FAILS)
        rows[1] = replace(rows[1], value=effect.binned_d,
                                    p_value=effect.p_binned,
                                    verdict=HOLDS if effect.p_binned < 0.05 else FAILS)
    probe_rows = [
        ScoreRow(claim, "one tower holds more of the parse tree",
                 "UUAS of tower A minus B at the best layer"),
        ScoreRow(claim, "... and it is the tower function words prefer",
                 "same difference, signed toward the function-word tower"),
        ScoreRow("book: the towers learn syntax", "trained towers beat an untrained "
                 "model", "UUAS (both towers) minus untrained, best layer")]
    if probes is not None and probes.get("trained") is not None:
        s = syntax.probe_summary(probes["trained"], probes.get("untrained"), n_boot,
                                 seed)
        differs = s["low"] > 0 or s["high"] < 0
        probe_rows[0] = replace(probe_rows[0], value=s["diff"], low=s["low"],
                                          high=s["high"],
                                          verdict=HOLDS if differs else FAILS)
        if effect is not None:
            sign = 1.0 if effect.function_tower == "A" else -1.0
            lo, hi = sorted((sign * s["low"], sign * s["high"]))
            probe_rows[1] = replace(
                probe_rows[1], value=sign * s["diff"], low=lo, high=hi,
                verdict=HOLDS if lo > 0 and effect.p_value < 0.05 else FAILS)
        if "vs_untrained" in s:
            probe_rows[2] = replace(
                probe_rows[2], value=s["vs_untrained"], low=s["vs_low"],
                high=s["vs_high"], verdict=_above(s["vs_low"]))
    return rows + probe_rows


def main_class_effect(main: RunPreference, upos: dict | None = None,
                      n_perm: int = 2000, n_bins: int = 5, seed: int = 0):
    """:class:`twotower.syntax.ClassEffect` of a run's raw pref.

    ``upos`` (id -> tag, see :func:`twotower.pos.dominant_upos`) defaults to UD English
    EWT (bundled with the package) mapped with the run's own tokenizer.
    """
    from . import pos
    from .data import prepare_data

    if upos is None:
        sentences = pos.load_ud(pos.ud_english_ewt_paths())
        upos = pos.dominant_upos(sentences, prepare_data(main.config.data).tokenizer)
    table = syntax.pos_table(main.preference, upos)
    return syntax.function_content_effect(table, n_perm, n_bins, seed)


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
    effect = main_class_effect(main, upos, n_perm, seed=seed) if main else None
    probes = syntax.load_probe_report(main.path) if main is not None else None
    rows = _claim2(runs, n_boot, seed) + _claim3(runs, n_boot, seed) + \
        _claim4(main, effect, probes, n_boot, seed)
    table = pd.DataFrame([asdict(r) for r in rows])
    table.insert(3, "scale", scale_of(preset))
    return table


# --- the authors' bugs ----------------------------------------------------------------


@dataclass(frozen=True)
class AuthorsBug:
    """A bug of the authors' code (PAPER.md section 1.4) and the tests that show ours
    does not have it (``file::test_name``)."""

    number: int
    bug: str
    changes: str
    tests: tuple[str, ...]


BUG_AUDIT = (
    AuthorsBug(1, "ELMo backward stream multiplied by an all-zero flipped identity",
               "the 'biLM' towers are forward-only: no right context at all",
               ("test_towers.py::test_bilm_forward_stream_sees_only_the_left_and_"
                "backward_only_the_right",
                "test_towers.py::test_bilm_streams_equal_nn_lstm_run_forward_and_on_"
                "the_reversed_sequence")),
    AuthorsBug(2, "joint LayerNorm over both towers applied before slicing one tower",
               "each readout sees the other tower's statistics: not tower-pure",
               ("test_readouts.py::test_each_readout_reads_its_own_tower_only",)),
    AuthorsBug(3, "frozen towers only under no_grad, still in the optimiser",
               "weight decay moves the 'frozen' towers during phases 2/3",
               ("test_readouts.py::test_readout_training_leaves_the_frozen_model_bit_"
                "identical_and_out_of_the_optimizer",)),
    AuthorsBug(4, "readouts A and B scored on different random subsets and masks",
               "pref compares different positions: unpaired and noisier",
               ("test_readouts.py::test_scores_are_fp32_log_probabilities_of_the_true_"
                "token_on_shared_positions",
                "test_readouts.py::test_swapping_towers_and_readouts_swaps_scores_and_"
                "flips_pref")),
    AuthorsBug(5, "unseen tokens read as log-prob 0, no minimum count, fp16 softmax",
               "rare tokens get spurious preferences of 0 or of pure noise",
               ("test_preference.py::test_rare_tokens_get_nan_never_zero_and_unseen_"
                "tokens_no_row",
                "test_preference.py::test_vectorised_preference_equals_the_naive_loop",
                "test_readouts.py::test_scores_are_fp32_log_probabilities_of_the_true_"
                "token_on_shared_positions")),
    AuthorsBug(6, "mask rate from the wrong key; special ids as random replacements; "
               "PAD targets in GPT/ELMo losses; windows across documents",
               "a different objective than the one described",
               ("test_authors_bugs.py::test_the_mask_rate_of_the_run_config_reaches_the_"
                "objective",
                "test_objectives.py::test_mlm_random_replacements_are_never_special_or_"
                "beyond_the_tokenizer",
                "test_objectives.py::test_causal_targets_are_the_next_token_and_never_"
                "padding",
                "test_objectives.py::test_bilm_targets_are_the_token_itself_except_pad_"
                "and_cls",
                "test_data.py::test_windows_never_cross_article_boundaries")),
    AuthorsBug(7, "GPT variant: patched transformers source, discarded per-tower "
               "losses, GPT-2 downloaded for a config",
               "not reproducible offline; wasted compute in phase 1",
               ("test_authors_bugs.py::test_every_preset_is_built_offline_without_"
                "huggingface_transformers",
                "test_authors_bugs.py::test_the_joint_loss_runs_the_head_once_and_only_"
                "where_there_is_a_target",
                "test_model.py::test_hooks_are_removed_after_the_with_block")),
)


def default_tests_dir() -> Path:
    """``tests/`` of the repository this package was installed from (editable)."""
    return Path(__file__).resolve().parent.parent / "tests"


def defined_tests(path: Path) -> set[str]:
    """Names of the test functions defined at the top level of a test file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test")}


def has_test(node_id: str, tests_dir: Path | None = None) -> bool:
    """True if ``file::name`` names a test function in ``tests_dir``."""
    tests_dir = Path(tests_dir) if tests_dir is not None else default_tests_dir()
    file, _, name = node_id.partition("::")
    path = tests_dir / file
    return path.is_file() and name in defined_tests(path)


def audit_table(tests_dir: Path | None = None,
                bugs: tuple[AuthorsBug, ...] = BUG_AUDIT) -> pd.DataFrame:
    """One row per (bug, test): what the bug changes and whether the test exists.

    ``exists`` is None when ``tests_dir`` is absent (a package installed without its
    repository, e.g. in Colab).
    """
    tests_dir = Path(tests_dir) if tests_dir is not None else default_tests_dir()
    present = tests_dir.is_dir()
    return pd.DataFrame([
        {"bug": b.number, "what the authors' code does": b.bug,
         "what it changes": b.changes, "test": f"tests/{t}",
         "exists": has_test(t, tests_dir) if present else None}
        for b in bugs for t in b.tests])


def holm(p_values, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses to reject at family-wise ``alpha``.

    Returns:
        (m,) booleans in the order of ``p_values``.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    reject = np.zeros(m, dtype=bool)
    for i, index in enumerate(np.argsort(p, kind="stable")):
        if p[index] > alpha / (m - i):
            break
        reject[index] = True
    return reject


def run_audit_tests(tests: list[str], tests_dir: Path | None = None) -> pd.DataFrame:
    """Run ``file::name`` tests (every parametrisation) with pytest in a subprocess.

    Returns:
        One row per test: ``test``, ``cases`` run, ``passed`` (all cases passed).
    """
    import subprocess
    import sys
    import tempfile
    import xml.etree.ElementTree as ET

    tests_dir = Path(tests_dir) if tests_dir is not None else default_tests_dir()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}", *[str(tests_dir / t) for t in tests]],
                       cwd=tests_dir.parent, capture_output=True, check=False)
        cases = ET.parse(report).getroot().iter("testcase") if report.exists() else []
        outcome: dict[str, list[bool]] = {}
        for case in cases:
            file = case.get("classname", "").split(".")[-1] + ".py"
            name = case.get("name", "").split("[")[0]
            failed = any(child.tag in ("failure", "error", "skipped") for child in case)
            outcome.setdefault(f"{file}::{name}", []).append(not failed)
    return pd.DataFrame([{"test": t, "cases": len(outcome.get(t, [])),
                          "passed": bool(outcome.get(t)) and all(outcome[t])}
                         for t in tests])
