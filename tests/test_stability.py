"""Cross-run stability of pref: sign alignment, ceiling, null, spread, centring, runs
on disk. Synthetic runs plant a known per-token preference: the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twotower import replication, stability
from twotower.config import ModelConfig, RunConfig, config_to_dict, get_preset
from twotower.preference import token_preference
from twotower.readouts import TokenScores
from twotower.stability import RunPreference

V = 300


def planted_scores(true_pref, *, per_token=40, noise=1.0, gap=0.0, difficulty=None,
                   seed=0):
    """Scores whose token v has expected ``ll_a - ll_b = true_pref[v] + gap``."""
    rng = np.random.default_rng(seed)
    target = np.repeat(np.arange(len(true_pref)), per_token)
    rng.shuffle(target)
    hard = np.zeros(len(true_pref)) if difficulty is None else difficulty
    half = (true_pref[target] + gap) / 2
    base = -hard[target] - 3.0
    ll = np.stack([base + half + noise * rng.standard_normal(target.size),
                   base - half + noise * rng.standard_normal(target.size)])
    return TokenScores(target.astype(np.int32), ll.astype(np.float32),
                       base.astype(np.float32))


def make_run(scores, seed=0, family="causal", variant="", tokens=None, min_count=5):
    cfg = RunConfig(model=ModelConfig(family=family, vocab_size=V), min_count=min_count)
    cfg = cfg.with_seed(seed)
    df = token_preference(scores, V, min_count, tokens)
    return RunPreference(path=None, config=cfg, results={}, preference=df,
                         scores=scores, variant=variant)


@pytest.fixture
def shared():
    return np.random.default_rng(42).normal(0, 0.4, V)


def test_swapped_tower_labels_are_aligned_by_the_sign_of_r(shared):
    a = make_run(planted_scores(shared, seed=1))
    b = make_run(planted_scores(-shared, seed=2), seed=1)  # towers named the other way
    aligned = stability.compare_runs(a, b, align="r", n_boot=200)
    raw = stability.compare_runs(a, b, align="none", n_boot=200)
    assert aligned.flipped and aligned.r > 0.7 and aligned.low > 0.6
    assert raw.r == pytest.approx(-aligned.r) and not raw.flipped
    assert aligned.r > aligned.null95


def test_gap_alignment_flips_when_the_better_tower_changes_sides(shared):
    a = make_run(planted_scores(shared, gap=0.3, seed=1))
    b = make_run(planted_scores(-shared, gap=-0.3, seed=2), seed=1)
    c = make_run(planted_scores(shared, gap=0.3, seed=3), seed=2)
    assert stability.compare_runs(a, b, align="gap", n_boot=0).flipped
    assert not stability.compare_runs(a, c, align="gap", n_boot=0).flipped


def test_unrelated_preferences_stay_within_the_null(shared):
    other = np.random.default_rng(7).normal(0, 0.4, V)
    cmp_ = stability.compare_runs(make_run(planted_scores(shared, seed=1)),
                                  make_run(planted_scores(other, seed=2)), n_boot=200)
    assert cmp_.r < cmp_.null95 < 0.2
    assert cmp_.low < 0.05


def test_identical_true_preferences_reach_the_noise_ceiling(shared):
    ratios = []
    for seed in range(4):
        a = make_run(planted_scores(shared, noise=1.5, seed=2 * seed))
        b = make_run(planted_scores(shared, noise=1.5, seed=2 * seed + 1))
        cmp_ = stability.compare_runs(a, b, n_boot=0)
        assert 0.3 < cmp_.ceiling < 0.9  # noise keeps the ceiling and r below 1
        ratios.append(cmp_.r_over_ceiling)
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.08)


def test_half_shared_preferences_reach_half_the_ceiling(shared):
    rng = np.random.default_rng(3)
    own_a, own_b = rng.normal(0, 0.4, V), rng.normal(0, 0.4, V)
    a = make_run(planted_scores(shared + own_a, noise=1.0, seed=1))
    b = make_run(planted_scores(shared + own_b, noise=1.0, seed=2))
    assert stability.compare_runs(a, b, n_boot=0).r_over_ceiling == \
        pytest.approx(0.5, abs=0.1)


def test_spread_measures_the_planted_preference_and_ignores_noise():
    planted = np.random.default_rng(0).normal(0, 0.3, V)
    with_pref = stability.reliability(make_run(planted_scores(planted, noise=1.5)),
                                      centred=False, n_boot=200)
    assert with_pref.spread == pytest.approx(0.3, rel=0.15)
    assert with_pref.spread_low < with_pref.spread < with_pref.spread_high
    none = make_run(planted_scores(np.zeros(V), noise=1.5))
    without = stability.reliability(none, centred=False, n_boot=200)
    assert without.spread < 0.08 < none.preference["pref"].std()  # noise alone
    assert without.low < 0 < without.high


def test_reliability_ceiling_is_the_spearman_brown_step_up(shared):
    rel = stability.reliability(make_run(planted_scores(shared)), n_boot=0)
    assert rel.ceiling == pytest.approx(2 * rel.r / (1 + rel.r))
    assert np.isnan(rel.low) and rel.n_tokens == V


def test_compare_spread_finds_the_larger_preference():
    rng = np.random.default_rng(5)
    big = make_run(planted_scores(rng.normal(0, 0.4, V), seed=1))
    small = make_run(planted_scores(rng.normal(0, 0.1, V), seed=2))
    diff, lo, hi = stability.compare_spread(big, small, centred=False, n_boot=300)
    assert diff == pytest.approx(0.3, abs=0.08) and 0 < lo < diff < hi
    diff_back, lo_back, _ = stability.compare_spread(small, big, centred=False,
                                                     n_boot=300)
    assert diff_back == pytest.approx(-diff)


def test_centring_removes_a_shared_difficulty_confound():
    difficulty = np.random.default_rng(1).uniform(0, 4, V)
    confound = 0.5 * difficulty  # hard tokens favour tower A in every run
    a = make_run(planted_scores(confound, difficulty=difficulty, seed=1))
    b = make_run(planted_scores(confound, difficulty=difficulty, seed=2))
    raw = stability.compare_runs(a, b, centred=False, n_boot=0)
    centred = stability.compare_runs(a, b, centred=True, n_boot=0)
    assert raw.r > 0.8 and centred.r < centred.null95


def test_runs_with_other_ids_are_joined_on_token_strings(shared):
    names = [f"tok{v}" for v in range(V)]
    a = make_run(planted_scores(shared, seed=1), tokens=names)
    order = np.random.default_rng(0).permutation(V)  # another tokenizer's ids
    scores_b = planted_scores(shared, seed=2)
    relabelled = TokenScores(order[scores_b.target].astype(np.int32), scores_b.ll,
                             scores_b.joint)
    b = make_run(relabelled, tokens=[names[i] for i in np.argsort(order)])
    by_token = stability.compare_runs(a, b, key="token", n_boot=0)
    by_id = stability.compare_runs(a, b, key="id", n_boot=0)
    assert by_token.r > 0.7 > by_id.r


def test_seed_and_family_pairs(shared):
    runs = [make_run(planted_scores(shared, seed=s), seed=s, family=f)
            for f in ("causal", "mlm") for s in (0, 1, 2)]
    runs.append(make_run(planted_scores(shared), variant="split"))
    pairs = stability.seed_pairs(runs)
    assert len(pairs) == 6 and all(a.family == b.family and a.seed < b.seed
                                   for _, a, b in pairs)
    assert len(stability.seed_pairs(runs, "split")) == 0
    assert [(a.family, a.seed, b.family, b.seed) for _, a, b in
            stability.family_pairs(runs)] == [("causal", 0, "mlm", 1)]  # never one seed
    assert stability.family_pairs(runs, seed=2) == []  # no seed 3 to pair with
    table = stability.comparison_table(pairs[:2], n_boot=0)
    assert len(table) == 4 and set(table["pref"]) == {"raw", "centred"}


def write_run(folder, scores, seed, family="causal"):
    cfg = get_preset("smoke", family).with_seed(seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    df = token_preference(scores, cfg.model.vocab_size, cfg.min_count,
                          [f"t{i}" for i in range(cfg.model.vocab_size)])
    df.reset_index().to_csv(folder / "preference.csv", index=False)
    scores.save(folder / "scores.npz")
    results = {"scores": {"joint_loss": 1.0, "readout_a_loss": 2.0,
                          "readout_b_loss": 2.5},
               "preference": {"n_tokens": int(df["pref"].notna().sum()), "sd": 0.1},
               "split_half": {"r": 0.5, "ceiling": 0.67}}
    (folder / "results.json").write_text(json.dumps(results))


def test_collect_runs_reads_run_directories_and_their_variants(tmp_path, shared):
    write_run(tmp_path / "smoke-causal-seed1", planted_scores(shared, seed=1), 1)
    write_run(tmp_path / "smoke-causal-seed0", planted_scores(shared, seed=0), 0)
    write_run(tmp_path / "smoke-causal-seed0-split", planted_scores(shared, seed=2), 0)
    write_run(tmp_path / "small-causal-seed0", planted_scores(shared, seed=3), 0)
    (tmp_path / "smoke-mlm-seed0").mkdir()  # unfinished: no results.json
    runs = stability.collect_runs(tmp_path, "smoke")
    assert [(r.seed, r.variant) for r in runs] == [(0, ""), (1, ""), (0, "split")]
    table = stability.run_table(runs)
    assert list(table["variant"]) == ["two-tower", "two-tower", "split"]
    assert table["global gap"].notna().all()
    assert runs[0].preference.index.name == "id"


def test_width_variant_scales_the_towers_and_keeps_them_valid():
    for family in ("causal", "bilm"):
        cfg = get_preset("smoke", family)
        half = replication.width_variant(cfg, 0.5)
        assert half.model.d_model == cfg.model.d_model // 2
        assert half.model.d_ff == round(cfg.model.d_ff / 2)
        assert half.train == cfg.train and half.data == cfg.data
    odd = replication.width_variant(get_preset("smoke", "causal"), 0.3)
    assert odd.model.d_model % odd.model.n_heads == 0


def test_bootstrap_interval_brackets_the_statistic_and_needs_resamples():
    x = np.random.default_rng(0).normal(size=200)
    lo, hi = stability.bootstrap_interval(200, lambda i: x[i].mean(-1), 500)
    assert lo < x.mean() < hi and hi - lo < 0.4
    assert np.isnan(stability.bootstrap_interval(200, lambda i: x[i].mean(-1), 0)[0])
    assert np.isnan(stability.bootstrap_interval(2, lambda i: x[i].mean(-1))[0])


def test_unknown_alignment_is_refused(shared):
    run = make_run(planted_scores(shared))
    with pytest.raises(ValueError, match="align"):
        stability.compare_runs(run, run, align="sideways")


def test_compare_stability_prefers_the_pair_that_shares_a_preference(shared):
    rng = np.random.default_rng(9)
    pair = (make_run(planted_scores(shared, seed=1)),
            make_run(planted_scores(-shared, seed=2)))  # labels swapped: still stable
    control = (make_run(planted_scores(rng.normal(0, 0.4, V), seed=3)),
               make_run(planted_scores(rng.normal(0, 0.4, V), seed=4)))
    diff, lo, hi = stability.compare_stability(pair, control, n_boot=300)
    assert diff > 0.6 and 0.4 < lo < diff < hi
    same, lo_same, hi_same = stability.compare_stability(pair, pair, n_boot=100)
    assert same == 0 and lo_same == hi_same == 0


def test_part2_plan_scales_with_the_preset_and_counts_its_cost():
    quick, full = replication.part2_plan(True, 0), replication.part2_plan(False, 3)
    assert quick["seeds"] == [0, 1] and full["seeds"] == [3, 4, 5]
    assert quick["control_seeds"] == {"split": [0], "independent": [0],
                                      "untrained": [0, 1], "reseeded": [0]}
    assert full["control_seeds"] == {"split": [3, 4], "independent": [3, 4],
                                     "untrained": [3, 4], "reseeded": [3]}
    smoke = replication.replication_flops("smoke", **quick)
    assert smoke < replication.replication_flops("smoke", **full) < \
        replication.replication_flops("small", **full)
    one_run = replication.replication_flops(
        "smoke", families=["causal"], seeds=[0], control_seeds={}, widths=[])
    assert 1.5 * one_run < replication.replication_flops(
        "smoke", families=["causal"], seeds=[0], control_seeds={"independent": [0]},
        widths=[]) < 2.5 * one_run  # a baseline phase 1 plus one more run


def test_cpu_presets_get_the_quick_plan_and_gpu_presets_the_full_one():
    assert [replication.is_cpu_scale(p) for p in ("smoke", "small", "colab", "paper_base")] \
        == [True, True, False, False]
