"""The authors' bugs, each with the tests that show it and show that we do not have it.

Introduced in chapter 11 (*Replication scorecard*), whose second table is
:func:`audit_table`. :data:`BUG_AUDIT` maps each bug of the authors' code
(hezq06/twotower_lm) to tests: first those that re-run the authors' logic next to ours
on the same input, then those that show this package does not have the bug;
:func:`audit_table` checks that every named test exists in ``tests/`` and
:func:`run_audit_tests` runs them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


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
