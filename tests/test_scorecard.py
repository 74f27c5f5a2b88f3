"""The scorecard is computed from the run directories (change a run, the table changes)
and the bug audit names tests that exist."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twotower.experiments import authors_bugs, scorecard
from twotower.analysis import stats, syntax
from twotower.config import config_to_dict, get_preset
from twotower.analysis.preference import split_half, token_preference
from twotower.training.readouts import TokenScores
from twotower.training.run_folder import RunSpec

PRESET = "smoke"


def scores_with(pref, seed, per_token=30, noise=0.8):
    rng = np.random.default_rng(seed)
    target = np.repeat(np.arange(len(pref)), per_token)
    rng.shuffle(target)
    ll = np.stack([-3 + pref[target] / 2 + noise * rng.standard_normal(target.size),
                   -3 - pref[target] / 2 + noise * rng.standard_normal(target.size)])
    return TokenScores(target.astype(np.int32), ll.astype(np.float32),
                       np.full(target.size, -2.5, np.float32))


def write_run(runs_dir, family, seed, pref, variant=""):
    """A finished run directory with the files that stability reads."""
    cfg = get_preset(PRESET, family).with_seed(seed)
    folder = RunSpec(PRESET, family, seed, variant).path(runs_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    scores = scores_with(pref, seed + 17 * len(variant))
    vocab = cfg.model.vocab_size
    df = token_preference(scores, vocab, cfg.min_count, [f"t{i}" for i in range(vocab)])
    df.reset_index().to_csv(folder / "preference.csv", index=False)
    scores.save(folder / "scores.npz")
    results = {"scores": {"joint_loss": 2.5, "readout_a_loss": 3.0,
                          "readout_b_loss": 3.0},
               "preference": {"n_tokens": int(df["pref"].notna().sum()), "sd": 0.3},
               "split_half": vars(split_half(scores, vocab, cfg.min_count))}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


N = 200  # token ids 0..199 carry a preference
rng = np.random.default_rng(0)
SHARED = rng.normal(0, 0.5, N)
UPOS = {i: (("DET", 1.0, 10) if i < 60 else ("NOUN", 1.0, 10)) for i in range(N)}


@pytest.fixture
def runs_dir(tmp_path):
    planted = SHARED + 0.8 * (np.arange(N) < 60)  # "function words" prefer tower A
    for seed in (0, 1, 2):
        write_run(tmp_path, "causal", seed, planted)
        write_run(tmp_path, "causal", seed, rng.normal(0, 0.5, N), "independent")
    for seed in (0, 1):
        write_run(tmp_path, "mlm", seed, planted)
    write_run(tmp_path, "causal", 0, 0.05 * rng.normal(size=N), "split")
    write_run(tmp_path, "causal", 0, planted, "width0.5")
    write_run(tmp_path, "causal", 0, planted, "reseeded")
    return tmp_path


def row(table, test):
    hits = table[table["test"] == test]
    if hits.empty:
        hits = table[table["test"].str.startswith(test)]
    assert len(hits) == 1, (test, list(table["test"]))
    return hits.iloc[0]


def test_scorecard_is_computed_from_the_runs_on_disk(runs_dir):
    table = scorecard.build_scorecard(runs_dir, PRESET, n_boot=200, n_perm=300,
                                      upos=UPOS)
    assert set(table["scale"]) == {scorecard.scale_of(PRESET)}
    too_few = f"{scorecard.TOO_FEW} (2)"
    assert set(table["verdict"]) <= {scorecard.HOLDS, scorecard.FAILS,
                                     scorecard.NOT_MEASURED, too_few}
    assert row(table, "within the run")["verdict"] == scorecard.HOLDS
    split = row(table, "larger than control (a)")
    assert split["verdict"] == scorecard.HOLDS and split["low"] > 0
    for missing in ("larger than control (c)",
                    "more stable across seeds than control (a)",
                    "one tower holds more"):
        assert row(table, missing)["verdict"] == scorecard.NOT_MEASURED
    seeds = row(table, "stable across seeds (causal, 3 seeds)")
    assert seeds["verdict"] == scorecard.HOLDS and seeds["p_holm"] < 0.05
    primary = row(table, "more stable across seeds than control (b)")
    assert "(primary test)" in primary["test"] and primary["verdict"] == scorecard.HOLDS
    assert row(table, "it belongs to the towers")["verdict"] == scorecard.HOLDS
    assert row(table, "stable across seeds (mlm, 2 seeds)")["verdict"] == too_few
    assert row(table, "across families (causal/mlm), seeds 0 and 1")["verdict"] == \
        scorecard.HOLDS
    assert row(table, "across sizes (width0.5")["verdict"] == scorecard.HOLDS
    pos = row(table, "function vs content words (3 causal seeds, pre-registered")
    assert pos["value"] > 1 and pos["low"] > 1 and pos["verdict"] == scorecard.HOLDS


def test_changing_a_run_changes_the_table(runs_dir):
    before = scorecard.build_scorecard(runs_dir, PRESET, n_boot=100, n_perm=100,
                                       upos=UPOS)
    for seed in (1, 2):  # seeds 1 and 2 now unrelated to seed 0 and to each other
        write_run(runs_dir, "causal", seed, rng.normal(0, 0.5, N))
    after = scorecard.build_scorecard(runs_dir, PRESET, n_boot=100, n_perm=100,
                                      upos=UPOS)
    test = "stable across seeds (causal, 3 seeds)"
    assert row(before, test)["verdict"] == scorecard.HOLDS
    assert row(after, test)["verdict"] == scorecard.FAILS
    assert row(after, test)["value"] < row(before, test)["value"] - 0.3


def test_probe_rows_come_from_the_report_of_chapter_10(runs_dir):
    counts = {("A", 1): np.tile([[8, 10]], (40, 1)),
              ("B", 1): np.tile([[4, 10]], (40, 1))}
    base = {key: np.tile([[2, 10]], (40, 1)) for key in counts}
    table = pd.DataFrame([{"tower": t, "layer": 1, "task": "distance",
                           "spearman": 0.5, "uuas": c[0, 0] / 10, "root_accuracy": 0}
                          for (t, _), c in counts.items()])
    syntax.save_probe_report(runs_dir / f"{PRESET}-causal-seed0", (table, counts),
                             (table, base))
    card = scorecard.build_scorecard(runs_dir, PRESET, n_boot=100, n_perm=100,
                                     upos=UPOS)
    more = row(card, "one tower holds more")
    assert more["value"] == pytest.approx(0.4) and more["verdict"] == scorecard.HOLDS
    agree = row(card, "... and it is the tower function words prefer")
    assert agree["value"] == pytest.approx(0.4) and agree["verdict"] == scorecard.HOLDS
    assert row(card, "trained towers beat")["value"] == pytest.approx(0.4)
    # no trees
    assert row(card, "the probe clears")["verdict"] == scorecard.NOT_MEASURED


@pytest.mark.parametrize("chain, verdict", [(0.9, scorecard.INSTRUMENT_FAILS),
                                            (0.1, scorecard.HOLDS)])
def test_probe_rows_say_the_instrument_fails_below_a_chain_tree(runs_dir, chain,
                                                                verdict):
    counts = {("A", 1): np.tile([[8, 10]], (40, 1)),
              ("B", 1): np.tile([[4, 10]], (40, 1))}
    table = pd.DataFrame([{"tower": t, "layer": 1, "task": "distance",
                           "spearman": 0.5, "uuas": c[0, 0] / 10, "root_accuracy": 0}
                          for (t, _), c in counts.items()])
    trees = {"chain": np.tile([[10 * chain, 10]], (40, 1)),
             "random": np.tile([[1.5, 10]], (40, 1))}
    syntax.save_probe_report(runs_dir / f"{PRESET}-causal-seed0", (table, counts),
                             baselines=trees)
    card = scorecard.build_scorecard(runs_dir, PRESET, n_boot=100, n_perm=100,
                                     upos=UPOS)
    assert row(card, "one tower holds more")["verdict"] == verdict
    assert row(card, "the probe clears")["verdict"] == verdict
    assert row(card, "the probe clears")["value"] == pytest.approx(0.6 - chain)


def test_an_empty_runs_directory_measures_nothing(tmp_path):
    table = scorecard.build_scorecard(tmp_path, PRESET, n_boot=10, n_perm=10)
    assert (table["verdict"] == scorecard.NOT_MEASURED).all()


def test_every_test_named_by_the_bug_audit_exists():
    audit = authors_bugs.audit_table()
    assert set(audit["bug"]) == set(range(1, 11))  # every bug the audit names
    missing = audit.loc[audit["exists"] != True, "test"].tolist()  # noqa: E712
    assert not missing, f"rename in twotower.experiments.authors_bugs.BUG_AUDIT: {missing}"


def test_the_audit_flags_a_test_that_does_not_exist(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_real():\n    pass\n"
                                        "def helper():\n    pass\n")
    assert authors_bugs.has_test("test_x.py::test_real", tmp_path)
    assert not authors_bugs.has_test("test_x.py::test_gone", tmp_path)
    assert not authors_bugs.has_test("test_x.py::helper", tmp_path)
    assert not authors_bugs.has_test("test_y.py::test_real", tmp_path)
    fake = (authors_bugs.AuthorsBug(9, "a bug", "nothing", ("test_x.py::test_gone",)),)
    assert not authors_bugs.audit_table(tmp_path, fake)["exists"].any()
    assert authors_bugs.audit_table(tmp_path / "absent", fake)["exists"].isna().all()


def test_scale_names_the_gpu_presets():
    assert "smoke" in scorecard.scale_of("smoke")
    assert "CPU" in scorecard.scale_of("small")
    assert scorecard.scale_of("paper_base") == "GPU preset (paper_base)"


def test_audit_tests_are_run_and_their_outcome_reported(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_x.py").write_text(
        "import pytest\n"
        "def test_good():\n    assert True\n"
        "def test_bad():\n    assert False\n"
        "@pytest.mark.parametrize('v', [1, 2])\n"
        "def test_param(v):\n    assert v\n")
    report = authors_bugs.run_audit_tests(
        ["test_x.py::test_good", "test_x.py::test_bad", "test_x.py::test_param"], tests)
    assert report["passed"].tolist() == [True, False, True]
    assert report["cases"].tolist() == [1, 1, 2]


def test_holm_adjusted_p_values_make_holms_decisions_at_every_level():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    adjusted = stats.holm_adjusted(p)
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, 0.025, 0.2])
    for alpha in (0.01, 0.03, 0.05, 0.1):
        sorted_p = np.sort(p)
        k = next((i for i, q in enumerate(sorted_p) if q > alpha / (p.size - i)),
                 p.size)  # Holm stops at the first p above its step
        expected = p <= sorted_p[k - 1] if k else np.zeros(p.size, bool)
        np.testing.assert_array_equal(stats.holm(p, alpha), expected)


def test_a_row_that_holds_alone_fails_when_holm_does_not_reject():
    rows = [scorecard.ScoreRow("c", f"t{i}", "s", value=1.0, low=0.5, p_value=p,
                               verdict=scorecard.HOLDS)
            for i, p in enumerate((0.03, 0.04, 0.001))]  # Holm: 0.06, 0.06, 0.003
    rows.append(scorecard.ScoreRow("c", "no p", "s", verdict=scorecard.HOLDS))
    out = scorecard.with_holm(rows)
    assert [r.verdict for r in out] == [scorecard.FAILS, scorecard.FAILS,
                                        scorecard.HOLDS, scorecard.HOLDS]
    assert np.isnan(out[3].p_holm) and out[2].p_holm == pytest.approx(0.003)


def test_an_interval_is_shown_as_one_column_that_breaks_only_before_its_interval():
    table = pd.DataFrame({"test": ["a", "b", "c"], "value": [-0.0514, 0.8, np.nan],
                          "low": [-0.096, np.nan, 0.1], "high": [-0.006, np.nan, 0.2],
                          "p": [0.5, 0.1, 0.2]})
    shown = scorecard.with_interval(table)
    assert list(shown.columns) == ["test", "value [95% interval]", "p"]
    nbsp = "\u00a0"
    assert shown["value [95% interval]"].tolist() == [
        f"-0.051 [-0.096,{nbsp}-0.006]", "+0.800", ""]
    named = scorecard.with_interval(table, fmt=".2f", name="r_x")
    assert named["r_x"].iloc[0] == f"-0.05 [-0.10,{nbsp}-0.01]"
    assert "value" in table and "low" in table  # the input is left as it was
