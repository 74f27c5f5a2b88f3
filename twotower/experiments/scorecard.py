"""The replication scorecard, computed from the runs on disk, and the audit of the bugs.

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
  :func:`twotower.analysis.stability.compare_runs`) holds when its interval lies above the 95th
  percentile of ``|r_x|`` with shuffled tokens;
* stability across seeds (:mod:`twotower.analysis.across_seeds`; seeds are the unit, at least
  ``twotower.analysis.across_seeds.MIN_SEEDS`` of them) and the two-tower model's lead over
  a control across seeds hold when their interval over seeds lies above 0; with fewer
  seeds the row says so instead of a verdict;
* the part-of-speech test holds as its pre-registered rule says (chapter 10);
* a probe difference holds when its interval excludes 0 (and, for the agreement row,
  when it points to the tower that function words prefer), at the layer chosen on the
  probes' dev split; when every tower stays below the left-to-right chain tree, the
  probe rows say "instrument fails": the instrument cannot speak at this scale.

Every row with a p-value is corrected together by Holm's procedure (``p_holm``): such
a row holds only if the correction also rejects its null. A row whose runs or report
are missing says "not measured at this scale".

:data:`BUG_AUDIT` maps each bug of the authors' code (hezq06/twotower_lm) to tests:
first those that re-run the authors' logic next to ours on the same input, then those
that show this package does not have the bug; :func:`audit_table` checks that every
named test exists in ``tests/``.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.analysis import across_seeds
from twotower.analysis import stability
from twotower.analysis import syntax
from twotower.analysis.stability import RunPreference

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


def _above(low: float, bar: float = 0.0) -> str:
    if not np.isfinite(low):
        return NOT_MEASURED
    return HOLDS if low > bar else FAILS


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
                         verdict=_above(rel.low))
    rows = [within]
    for name, label in CONTROL_NAMES.items():
        control = _find(runs, seed=seed, variant=name)
        row = ScoreRow(claim, f"larger than control {label}",
                       "replicable spread of centred pref, two-tower minus control "
                       "(nats)")
        if main is not None and control is not None:
            diff, lo, hi = stability.compare_spread(main, control, True, seed, n_boot)
            row = replace(row, value=diff, low=lo, high=hi, verdict=_above(lo))
        rows.append(row)
    reseeded = _find(runs, seed=seed, variant="reseeded")
    row = ScoreRow(claim, "it belongs to the towers (same towers, readouts of "
                   "another seed)", "r_x of centred pref (bar: shuffled-token 95%)")
    if main is not None and reseeded is not None:
        c = stability.compare_runs(main, reseeded, n_boot=n_boot, seed=seed)
        row = replace(row, value=c.r_x, low=c.low, high=c.high,
                      verdict=_above(c.low, c.null95))
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
    return _above(low)


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
    statistic = "r_x of centred pref (bar: shuffled-token 95%)"
    pairs = stability.family_pairs(runs, seed)
    for kind, a, b in pairs:
        c = stability.compare_runs(a, b, n_boot=n_boot, seed=seed)
        rows.append(ScoreRow(claim, f"across {kind}, seeds {a.seed} and {b.seed}",
                             statistic, c.r_x, c.low, c.high,
                             verdict=_above(c.low, c.null95)))
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
                          verdict=_above(c.low, c.null95))
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
                high=s["vs_high"], verdict=_above(s["vs_low"]))
        if "vs_chain" in s:
            probe_rows[3] = replace(
                probe_rows[3], value=s["vs_chain"], low=s["vs_chain_low"],
                high=s["vs_chain_high"], verdict=_above(s["vs_chain_low"]))
        if s.get("instrument_fails"):  # below a tree that needs no vectors at all
            probe_rows = [replace(row, verdict=INSTRUMENT_FAILS) if
                          np.isfinite(row.value) else row for row in probe_rows]
    return rows + probe_rows


def run_upos(main: RunPreference, upos: dict | None = None) -> dict:
    """``upos`` if given, else UD English EWT (bundled with the package) mapped with
    the run's own tokenizer (id -> tag, see :func:`twotower.data.ud.dominant_upos`)."""
    from twotower.data import ud as pos
    from twotower.data.windows import prepare_data

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


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest p times ``m - k + 1``,
    made non-decreasing. A hypothesis is rejected at family-wise level ``alpha`` when
    its adjusted p is at most ``alpha``."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else p
    out = np.empty(m)
    out[order] = np.minimum(steps, 1.0)
    return out


def holm(p_values, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses to reject at family-wise ``alpha``.

    Returns:
        (m,) booleans in the order of ``p_values``.
    """
    return holm_adjusted(p_values) <= alpha


# --- the authors' bugs ----------------------------------------------------------------


@dataclass(frozen=True)
class AuthorsBug:
    """A bug of the authors' code (hezq06/twotower_lm) and its tests (``file::name``).

    The first tests (``test_authors_*`` in test_authors_bugs.py) re-run a few-line
    re-implementation of the authors' logic next to ours on the same input: the
    authors' logic fails the check, ours passes it. The others show that this package
    does not have the bug.
    """

    number: int
    bug: str
    changes: str
    tests: tuple[str, ...]


_DEMO = "test_authors_bugs.py::test_authors_"  # tests that re-run the authors' logic

BUG_AUDIT = (
    AuthorsBug(1, "ELMo backward stream multiplied by the diagonal of a flipped "
               "identity: all zeros for an even window",
               "the 'biLM' towers are forward-only: no right context at all",
               (_DEMO + "flip_zeroes_the_elmo_backward_stream_ours_reads_the_right_"
                "context",
                "test_towers.py::test_bilm_forward_stream_sees_only_the_left_and_"
                "backward_only_the_right",
                "test_towers.py::test_bilm_streams_equal_nn_lstm_run_forward_and_on_"
                "the_reversed_sequence")),
    AuthorsBug(2, "joint LayerNorm over both towers applied before slicing one tower",
               "each readout sees the other tower's statistics: not tower-pure",
               (_DEMO + "readout_a_input_moves_with_tower_b_ours_does_not",
                "test_readouts.py::test_each_readout_reads_its_own_tower_only")),
    AuthorsBug(3, "frozen towers only under no_grad, still in the optimiser",
               "weight decay moves the 'frozen' towers during phases 2/3",
               (_DEMO + "frozen_towers_move_under_weight_decay_ours_stay_bit_"
                "identical",
                "test_readouts.py::test_readout_training_leaves_the_frozen_model_bit_"
                "identical_and_out_of_the_optimizer")),
    AuthorsBug(4, "readouts A and B scored in separate runs, on different random "
               "subsets and masks",
               "pref compares different positions: unpaired and noisier",
               (_DEMO + "readouts_are_scored_on_different_blocks_and_masks_ours_on_"
                "the_same",
                "test_readouts.py::test_scores_are_fp32_log_probabilities_of_the_true_"
                "token_on_shared_positions",
                "test_readouts.py::test_swapping_towers_and_readouts_swaps_scores_and_"
                "flips_pref")),
    AuthorsBug(5, "unseen tokens read as log-prob 0, no minimum count, fp16 softmax",
               "rare tokens get spurious preferences of 0 or of pure noise",
               (_DEMO + "unseen_tokens_get_log_prob_zero_and_single_ones_a_pref_ours_"
                "do_not",
                _DEMO + "log_softmax_in_fp16_rounds_log_probs_ours_keeps_fp32",
                "test_preference.py::test_rare_tokens_get_nan_never_zero_and_unseen_"
                "tokens_no_row",
                "test_preference.py::test_vectorised_preference_equals_the_naive_loop",
                "test_readouts.py::test_scores_are_fp32_log_probabilities_of_the_true_"
                "token_on_shared_positions")),
    AuthorsBug(6, "a misnamed config key sets the random/unchanged split of the "
               "masking (latent: never set); special ids as random replacements; PAD "
               "targets in GPT/ELMo losses; windows across documents",
               "a different objective than the one described",
               (_DEMO + "misnamed_key_sets_the_random_and_unchanged_split_not_the_"
                "mask_rate",
                _DEMO + "random_replacements_include_special_and_unused_ids_ours_never",
                _DEMO + "gpt_and_elmo_losses_average_over_pad_targets_ours_never",
                _DEMO + "windows_cross_document_boundaries_ours_never",
                "test_authors_bugs.py::test_the_mask_rate_of_the_run_config_reaches_"
                "the_objective",
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
               (_DEMO + "gpt_needs_the_patched_library_and_discards_two_vocabulary_"
                "heads",
                "test_authors_bugs.py::test_every_preset_is_built_offline_without_"
                "huggingface_transformers",
                "test_authors_bugs.py::test_the_joint_loss_runs_the_head_once_and_only_"
                "where_there_is_a_target",
                "test_model.py::test_hooks_are_removed_after_the_with_block")),
    AuthorsBug(8, "weight decay on biases and norms (ELMo, GPT) and on BERT's "
               "layer_norm_*.weight, which escape its no-decay name patterns",
               "norm scales (and ELMo/GPT biases) are pulled toward 0",
               (_DEMO + "no_decay_patterns_leave_norm_weights_decayed_ours_never",
                "test_training.py::test_weight_decay_is_on_weight_matrices_only")),
    AuthorsBug(9, "eval_mem keeps per-token log-probabilities for BERT only",
               "the released code gives no preference for the ELMo or GPT families",
               (_DEMO + "evaluation_keeps_log_probabilities_for_bert_only_ours_for_"
                "every_family",
                "test_readouts.py::test_scores_are_fp32_log_probabilities_of_the_true_"
                "token_on_shared_positions")),
    AuthorsBug(10, "train_batch_size 5120 is not 128 x 10 x 3 (micro-batch x "
               "accumulation x GPUs); the accumulation key is misspelt",
               "DeepSpeed rejects the config on the 3 GPUs assumed: the batch size "
               "of the runs is unknown",
               (_DEMO + "batch_size_fails_deepspeeds_rule_on_three_gpus_ours_splits_"
                "any_batch",
                "test_distributed.py::test_two_gloo_processes_match_one_process_with_"
                "the_same_global_batch")),
)


def default_tests_dir() -> Path:
    """``tests/`` of the repository this package was installed from (editable)."""
    return Path(__file__).resolve().parents[2] / "tests"


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
