"""Cross-run stability of pref: sign alignment, disattenuation, null, spread, centring,
seeds as the unit, runs on disk. Synthetic runs plant a known per-token preference, so
the answer is known; the calibration tests also show where the earlier estimators
were off."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twotower.analysis import across_seeds, stability
from twotower.analysis.preference import (half_assignment, preference_array,
                                          split_half, text_halves, token_preference)
from twotower.analysis.stability import RunPreference
from twotower.analysis.stats import bootstrap_interval, pearson
from twotower.config import ModelConfig, RunConfig, config_to_dict, get_preset
from twotower.data.scores import TokenScores
from twotower.experiments import replication

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


def test_swapped_tower_labels_are_aligned_by_the_sign_of_the_cross_correlation(shared):
    a = make_run(planted_scores(shared, seed=1))
    b = make_run(planted_scores(-shared, seed=2), seed=1)  # towers named the other way
    aligned = stability.compare_runs(a, b, align="r", n_boot=200)
    raw = stability.compare_runs(a, b, align="none", n_boot=200)
    assert aligned.flipped and aligned.r_x > 0.8 and aligned.low > 0.6
    assert raw.r_x == pytest.approx(-aligned.r_x) and not raw.flipped
    assert aligned.r_x > aligned.null95


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
    assert cmp_.r_x < cmp_.null95 < 0.3
    assert cmp_.low < 0.05


def test_identical_true_preferences_give_r_x_near_one_despite_noise(shared):
    values = []
    for seed in range(4):
        a = make_run(planted_scores(shared, noise=1.5, seed=2 * seed))
        b = make_run(planted_scores(shared, noise=1.5, seed=2 * seed + 1))
        cmp_ = stability.compare_runs(a, b, n_boot=0, n_perm=0)
        assert 0.2 < cmp_.r_aa < 0.9 and cmp_.r_cross < cmp_.r_x  # noise attenuates
        values.append(cmp_.r_x)
    assert np.mean(values) == pytest.approx(1.0, abs=0.1)


def test_half_shared_preferences_give_r_x_near_one_half(shared):
    rng = np.random.default_rng(3)
    own_a, own_b = rng.normal(0, 0.4, V), rng.normal(0, 0.4, V)
    a = make_run(planted_scores(shared + own_a, noise=1.0, seed=1))
    b = make_run(planted_scores(shared + own_b, noise=1.0, seed=2))
    assert stability.compare_runs(a, b, n_boot=0).r_x == pytest.approx(0.5, abs=0.12)


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
    assert raw.r_x > 0.8
    assert centred.r_aa < 0.2  # nothing reliable is left after centring...
    assert np.isnan(centred.r_x) or abs(centred.r_x) < centred.null95  # ...to agree on


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
    assert by_token.r_x > 0.7 > by_id.r_x


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


# --- calibration on texts where the answer is known -----------------------------------
# A synthetic text of articles cut into windows, with Zipf token frequencies, and runs
# whose per-position preference is a token's true preference plus noise: sometimes
# article-specific (bursty), sometimes shared by every run that reads the same
# positions. Each test compares an estimator with the truth over several draws; the
# bound is 3 standard errors of the mean over draws, never a tuned number.

def simulate_text(n_articles=32, windows_per_article=20, window=32, vocab=V,
                  zipf=1.1, seed=0):
    """Target id, window and article of every position."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, vocab + 1) ** -zipf
    n = windows_per_article * window
    target = rng.choice(vocab, size=n_articles * n, p=p / p.sum()).astype(np.int32)
    window_of = np.repeat(np.arange(n_articles * windows_per_article), window)
    return target, window_of.astype(np.int32), (window_of // windows_per_article
                                                ).astype(np.int32)


def simulate_scores(text, true_pref, *, noise=2.0, article_sd=0.0, shared=None,
                    seed=0) -> TokenScores:
    target, window, article = text
    rng = np.random.default_rng(seed)
    diff = true_pref[target] + noise * rng.standard_normal(target.size)
    if article_sd:  # each token leans differently in each article, in this run
        diff += rng.normal(0, article_sd, (V, article.max() + 1))[target, article]
    if shared is not None:  # the text's own noise: the same at a position in all runs
        diff = diff + shared
    base = -3.0 - 0.3 * rng.standard_normal(target.size)
    ll = np.stack([base + diff / 2, base - diff / 2]).astype(np.float32)
    return TokenScores(target, ll, base.astype(np.float32), window, article)


def agrees(estimates, truth) -> bool:
    """The mean of ``estimates`` lies within 3 standard errors of ``truth`` (an array
    of per-draw truths or one number)."""
    estimates, truth = np.asarray(estimates), np.asarray(truth, float)
    se = np.hypot(estimates.std(ddof=1) / np.sqrt(estimates.size),
                  truth.std(ddof=1) / np.sqrt(truth.size) if truth.size > 1 else 0)
    return abs(estimates.mean() - truth.mean()) < 3 * se


def old_cross_run_ratio(a, b) -> float:
    """What compare_runs reported before (r / ceiling): the correlation of full-length
    pref over tokens with min_count OVERALL, divided by the geometric mean of the
    Spearman-Brown ceilings of occurrence halves (tokens with min_count in EACH)."""
    both = a.preference["pref"].dropna().index.intersection(
        b.preference["pref"].dropna().index)
    r = np.corrcoef(a.preference.loc[both, "pref"],
                    b.preference.loc[both, "pref"])[0, 1]
    ceilings = [split_half(run.scores, V, run.config.min_count,
                           half=half_assignment(run.scores.target, 0)).ceiling
                for run in (a, b)]
    return r / np.sqrt(ceilings[0] * ceilings[1])


def half_pref(scores, keep):
    part = scores.subset(keep)
    return preference_array(part.target, part.ll[0], part.ll[1], V, 5)


def test_the_reliability_belongs_to_the_token_set_of_the_correlation_on_a_zipf_text():
    """A short text: many tokens reach min_count overall but not in each half, and
    rare tokens are the least reliable. The old ceiling (frequent tokens) overstated
    the reliability of the old cross-run token set; the new statistic divides by the
    split-half r of its own token set, which matches that set's true reliability."""
    rng = np.random.default_rng(2)
    old, old_truth, new, new_truth = [], [], [], []
    for draw in range(12):
        pref = rng.normal(0, 0.5, V)
        text = simulate_text(n_articles=8, seed=draw)
        one, two = (simulate_scores(text, pref, noise=3.0, seed=10 * draw + k)
                    for k in range(2))  # two measurements of the same preference
        full = [preference_array(s.target, s.ll[0], s.ll[1], V, 5) for s in (one, two)]
        old_truth.append(pearson(*full))  # tokens with min_count overall
        old.append(split_half(one, V, 5, half=half_assignment(one.target, 0)).ceiling)
        half, _ = text_halves(one)
        new.append(split_half(one, V, 5).r)  # what r_x divides by
        counts = [np.bincount(one.target[half == h], minlength=V) for h in (0, 1)]
        tokens = (counts[0] >= 5) & (counts[1] >= 5)
        new_truth.append(pearson(np.where(tokens, half_pref(one, half == 0), np.nan),
                                 half_pref(two, half == 1)))
    assert not agrees(old, old_truth) and np.mean(old) > np.mean(old_truth)
    assert agrees(new, new_truth)


def test_article_halves_give_the_reliability_on_new_text_where_occurrences_overstate():
    rng = np.random.default_rng(3)
    new, old, truth = [], [], []
    for draw in range(12):
        pref = rng.normal(0, 0.4, V)
        here, elsewhere = (simulate_scores(simulate_text(seed=100 * k + draw), pref,
                                           article_sd=1.5, seed=50 * k + draw)
                           for k in (1, 2))
        half, kind = text_halves(here)
        assert kind == "article"
        new.append(split_half(here, V, 5).ceiling)
        old.append(split_half(here, V, 5, half=half_assignment(here.target, 0)).ceiling)
        counts = [np.bincount(here.target[half == h], minlength=V) for h in (0, 1)]
        tokens = (counts[0] >= 5) & (counts[1] >= 5)  # the estimator's token set
        full = [preference_array(s.target, s.ll[0], s.ll[1], V, 5) for s in
                (here, elsewhere)]
        truth.append(pearson(np.where(tokens, full[0], np.nan), full[1]))
    assert agrees(new, truth)
    assert not agrees(old, truth) and np.mean(old) > np.mean(truth)  # overstated


def test_r_x_ignores_noise_that_two_runs_share_because_they_read_the_same_positions():
    rng = np.random.default_rng(5)
    new, old = [], []
    for draw in range(10):
        text = simulate_text(seed=300 + draw)
        shared = rng.normal(0, 1.5, text[0].size)
        a, b = (make_run(simulate_scores(text, rng.normal(0, 0.5, V), noise=1.0,
                                         shared=shared, seed=10 * draw + k), seed=k)
                for k in range(2))  # unrelated true preferences: the truth is 0
        new.append(stability.compare_runs(a, b, centred=False, align="none",
                                          n_boot=0, n_perm=0).r_x)
        old.append(old_cross_run_ratio(a, b))
    assert agrees(new, 0.0)
    assert not agrees(old, 0.0) and np.mean(old) > 0.3


# --- across seeds ---------------------------------------------------------------------

def seed_runs(text, rho, n_runs, rng, *, flip=True, start=0):
    common = rng.normal(0, 0.5, V)
    runs = []
    for k in range(n_runs):
        truth = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(0, 0.5, V)
        sign = rng.choice([-1.0, 1.0]) if flip and k else 1.0
        runs.append(make_run(simulate_scores(text, sign * truth, seed=start + k),
                             seed=k))
    return runs


def test_seed_stability_recovers_the_shared_part_and_the_tower_labels():
    rng, rho, text = np.random.default_rng(11), 0.5, simulate_text(seed=7)
    means, covered = [], 0
    for draw in range(8):
        runs = seed_runs(text, rho, 4, rng, start=100 * draw)
        result = across_seeds.seed_stability(runs, centred=False, n_perm=100)
        means.append(result.mean)
        covered += result.low <= rho <= result.high
        assert result.p_value < 0.05 and result.n_seeds == 4
        true_signs = np.sign([r.preference["pref"].corr(runs[0].preference["pref"])
                              for r in runs])
        np.testing.assert_array_equal(result.signs, true_signs)
    assert agrees(means, rho) and covered >= 6
    pairs = across_seeds.pair_table(result)
    assert len(pairs) == 6 and (pairs["aligned r_x"] > 0).all()


def test_seed_stability_of_unrelated_runs_is_a_null_result_despite_the_alignment():
    rng, text = np.random.default_rng(12), simulate_text(seed=8)
    results = [across_seeds.seed_stability(seed_runs(text, 0.0, 4, rng, start=10 * d),
                                           centred=False, n_perm=100)
               for d in range(10)]
    assert all(r.mean > -0.1 for r in results)  # the alignment favours agreement...
    assert sum(r.p_value < 0.05 for r in results) <= 2  # ...which the null knows
    assert sum(r.low <= 0 <= r.high for r in results) >= 8


def test_stability_difference_finds_the_more_stable_condition():
    rng, text = np.random.default_rng(13), simulate_text(seed=9)
    stable = across_seeds.seed_stability(seed_runs(text, 0.8, 4, rng), centred=False,
                                         n_perm=0)
    unstable = across_seeds.seed_stability(seed_runs(text, 0.0, 4, rng, start=50),
                                           centred=False, n_perm=0)
    diff = across_seeds.stability_difference(stable, unstable)
    assert diff.low > 0 and diff.value == pytest.approx(stable.mean - unstable.mean)
    assert diff.p_value < 0.05
    same = across_seeds.stability_difference(stable, stable)
    assert same.value == 0 and same.low < 0 < same.high
    two = across_seeds.seed_stability(seed_runs(text, 0.8, 2, rng, start=90),
                                      centred=False, n_perm=0)
    assert np.isnan(two.low) and np.isnan(across_seeds.stability_difference(
        stable, two).low)  # 2 seeds: no interval over seeds


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
    other = tmp_path / "smoke-causal-seed0-multi30k-en-de"  # chapter 13's kind of run
    other.mkdir()
    (other / "results.json").write_text("{}")
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
    lo, hi = bootstrap_interval(200, lambda i: x[i].mean(-1), 500)
    assert lo < x.mean() < hi and hi - lo < 0.4
    assert np.isnan(bootstrap_interval(200, lambda i: x[i].mean(-1), 0)[0])
    assert np.isnan(bootstrap_interval(2, lambda i: x[i].mean(-1))[0])


def test_unknown_alignment_is_refused(shared):
    run = make_run(planted_scores(shared))
    with pytest.raises(ValueError, match="align"):
        stability.compare_runs(run, run, align="sideways")


def test_part2_plan_scales_with_the_preset_and_counts_its_cost():
    quick, full = replication.part2_plan(True, 0), replication.part2_plan(False, 3)
    assert quick["seeds"] == {"causal": [0, 1, 2, 3, 4], "mlm": [0, 1, 2],
                              "bilm": [0, 1]}
    assert full["seeds"] == {"causal": [3, 4, 5, 6, 7], "mlm": [3, 4, 5],
                             "bilm": [3, 4, 5]}
    assert quick["control_seeds"] == {"split": [0], "independent": [0, 1, 2, 3, 4],
                                      "untrained": [0, 1, 2], "reseeded": [0]}
    assert full["control_seeds"] == {"split": [3, 4], "independent": [3, 4, 5, 6, 7],
                                     "untrained": [3, 4, 5], "reseeded": [3]}
    for plan in (quick, full):  # claim 2's primary test has seeds enough
        assert len(plan["seeds"]["causal"]) >= replication.PRIMARY_SEEDS >= 5
        assert len(plan["control_seeds"]["untrained"]) >= across_seeds.MIN_SEEDS
        assert len(plan["control_seeds"]["independent"]) == len(plan["seeds"]["causal"])
    smoke = replication.replication_flops("smoke", **quick)
    assert smoke < replication.replication_flops("smoke", **full) < \
        replication.replication_flops("small", **full)
    one_run = replication.replication_flops(
        "smoke", seeds={"causal": [0]}, control_seeds={}, widths=[])
    assert 1.5 * one_run < replication.replication_flops(
        "smoke", seeds={"causal": [0]}, control_seeds={"independent": [0]},
        widths=[]) < 2.5 * one_run  # a baseline phase 1 plus one more run


def test_cpu_presets_get_the_quick_plan_and_gpu_presets_the_full_one():
    presets = ("smoke", "small", "colab", "paper_base")
    assert [replication.is_cpu_scale(p) for p in presets] == [True, True, False, False]
