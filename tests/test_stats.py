"""The one bootstrap, permutation p, Holm and effect size (twotower.analysis.stats).

Three kinds of test: what each function does on a hand-made input; calibration (an
interval covers a known mean at about its nominal rate, a p-value is uniform under a
null and small under a planted effect); and the old output of every caller, pinned
bit for bit on a fixed input. The pinned values were printed by each caller's own
implementation before they all moved onto this module, so a change of draw order,
quantile or tie rule shows up here as a changed number in the book.
"""

from __future__ import annotations

import hashlib
import math
import types

import numpy as np
import pandas as pd
import pytest

from twotower.analysis import stats
from twotower.errors import TwotowerError

# --- the functions --------------------------------------------------------------------


def test_resamples_are_one_draw_unless_chunked():
    whole = np.concatenate(list(stats.resample_indices(7, 10, seed=3)))
    again = np.concatenate(list(stats.resample_indices(7, 10, seed=3, chunk=10**6)))
    blocks = list(stats.resample_indices(7, 10, seed=3, chunk=21))  # 3 rows a block
    assert whole.shape == (10, 7) and np.array_equal(whole, again)
    assert [len(b) for b in blocks] == [3, 3, 3, 1]
    assert (whole >= 0).all() and (whole < 7).all()


def test_bootstrap_distribution_keeps_the_leading_axes_of_the_statistic():
    values = np.arange(12.0).reshape(3, 4)
    draws = stats.bootstrap_distribution(4, lambda i: values[:, i].mean(-1), 50,
                                         chunk=8)
    assert draws.shape == (3, 50)
    assert np.allclose(draws[1] - draws[0], 4.0)  # rows resampled at the same positions


def test_interval_is_nan_without_units_or_resamples_and_skips_nan_resamples():
    x = np.random.default_rng(0).normal(size=50)
    assert np.isnan(stats.bootstrap_interval(2, lambda i: x[i].mean(-1))[0])
    assert np.isnan(stats.bootstrap_interval(50, lambda i: x[i].mean(-1), 0)[1])
    draws = np.array([1.0, np.nan, 2.0, 3.0])
    assert np.isfinite(stats.percentile_interval(draws)).all()
    assert np.isnan(stats.percentile_interval(draws, ignore_nan=False)).all()


def test_correlation_interval_brackets_r_on_the_finite_pairs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=400)
    y = 0.5 * x + rng.normal(size=400)
    x[:5] = np.nan
    r, low, high = stats.bootstrap_correlation(x, y, n_boot=300)
    assert low < r < high and r == pytest.approx(stats.pearson(x, y))
    assert all(np.isnan(stats.bootstrap_correlation(x[5:7], y[5:7])))
    assert np.allclose(stats.row_pearson(np.stack([x[5:], -x[5:]]), y[5:]),
                       [r, -r])


def test_spearman_brown_steps_a_half_up_to_full_length():
    assert stats.spearman_brown(0.5) == pytest.approx(2 / 3)
    assert stats.spearman_brown(0.0) == 0.0 and stats.spearman_brown(1.0) == 1.0
    assert np.isnan(stats.spearman_brown(-1.0))
    assert np.isnan(stats.spearman_brown(np.nan))


@pytest.mark.parametrize("method", ["keys", "shuffle"])
def test_shuffles_stay_within_their_stratum(method):
    labels = np.arange(12)
    strata = np.repeat([2, 0, 1], 4)
    out = stats.shuffled_labels(labels, 30, seed=1, strata=strata, method=method)
    assert out.shape == (30, 12)
    for s in range(3):
        inside = strata == s
        assert (np.sort(out[:, inside], axis=1) == labels[inside]).all()
    assert not (out == labels).all()  # something moved
    with pytest.raises(TwotowerError, match="method"):
        stats.shuffled_labels(labels, 3, method="sort")


def test_permutation_p_counts_ties_and_is_never_zero():
    null = np.array([-3.0, -1.0, 0.5, 1.0, 2.0])
    assert stats.permutation_p(1.0, null) == pytest.approx(5 / 6)  # |null| >= 1
    assert stats.permutation_p(1.0 + 1e-13, null) == pytest.approx(5 / 6)  # round-off
    assert stats.permutation_p(1.0, null, "greater", tolerance=0) == pytest.approx(0.5)
    assert stats.permutation_p(1.0, null, "less", tolerance=0) == pytest.approx(5 / 6)
    assert stats.permutation_p(99.0, null) == pytest.approx(1 / 6)
    with pytest.raises(TwotowerError, match="alternative"):
        stats.permutation_p(1.0, null, "both")


def test_holm_steps_down_and_keeps_the_order():
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm(p, alpha=0.05).tolist() == [True, False, False, True]
    assert stats.holm_adjusted([]).size == 0


def test_effect_size_matches_a_hand_computation():
    got = stats.effect_size(np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0]))
    # pooled sd = sqrt((2 * 1 + 1 * 0.5) / 3); 5.5 of 6 pairs have x > y (a tie is half)
    assert got["mean_diff"] == pytest.approx(1.5)
    assert got["cohens_d"] == pytest.approx(1.5 / np.sqrt(2.5 / 3))
    assert got["rank_biserial"] == pytest.approx(2 * 5.5 / 6 - 1)


def test_effect_size_is_antisymmetric_and_nan_for_tiny_samples():
    x, y = np.array([0.3, 1.0, 2.0, -1.0]), np.array([0.0, 0.5, -0.2])
    a, b = stats.effect_size(x, y), stats.effect_size(y, x)
    assert all(a[k] == pytest.approx(-b[k]) for k in a)
    assert np.isnan(stats.effect_size(x, y[:1])["cohens_d"])


# --- calibration ----------------------------------------------------------------------


def test_the_bootstrap_interval_covers_a_known_mean_at_about_its_level():
    rng = np.random.default_rng(2024)
    covered = []
    for k in range(300):
        x = rng.exponential(size=80)  # skewed: the true mean is 1
        low, high = stats.bootstrap_interval(x.size, lambda i: x[i].mean(-1), 400, k)
        covered.append(low <= 1.0 <= high)
    # nominal 0.95; the percentile interval runs a little short on a skewed sample
    assert 0.88 <= np.mean(covered) <= 0.99


def _class_p(values, labels, seed, n_perm=199):
    def difference(lab):
        return (lab * values).sum(-1) / lab.sum(-1) - \
            ((1 - lab) * values).sum(-1) / (1 - lab).sum(-1)
    null = difference(stats.shuffled_labels(labels, n_perm, seed).astype(float))
    return stats.permutation_p(float(difference(labels.astype(float))), null)


def test_the_permutation_p_is_uniform_under_a_null_and_small_under_an_effect():
    rng = np.random.default_rng(7)
    labels = np.arange(40) < 15
    null_ps = np.array([_class_p(rng.normal(size=40), labels, s) for s in range(300)])
    assert abs(np.mean(null_ps < 0.1) - 0.1) < 0.05
    assert abs(np.mean(null_ps < 0.5) - 0.5) < 0.1
    effect_ps = [_class_p(rng.normal(size=40) + 1.5 * labels, labels, s)
                 for s in range(20)]
    assert np.median(effect_ps) < 0.01


# --- every caller, pinned to its output before the move -------------------------------


def _hash(a) -> str:
    """Of the array rounded to 10 decimals: CPUs differ in the last bits of a float
    (vectorised sums), never in the tenth decimal of these values."""
    a = np.ascontiguousarray(np.round(np.asarray(a, dtype=np.float64), 10))
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def _same(got, expected) -> bool:
    """Pinned values: a float written as its repr agrees to 12 significant digits (the
    last bits of a float differ between CPUs; a changed computation moves far more);
    anything else (a hash, a label, a flag) is equal."""
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and \
            all(_same(g, e) for g, e in zip(got, expected))
    if not isinstance(expected, str):  # a flag
        return got == expected
    try:
        return math.isclose(float(got), float(expected), rel_tol=1e-12, abs_tol=1e-15)
    except (TypeError, ValueError):  # a hash or a label
        return got == expected


def _reprs(*values) -> list[str]:
    return [repr(float(v)) for v in values]


def _paired_means():
    from twotower.analysis.stats import bootstrap_means

    values = np.random.default_rng(0).normal(size=(3, 1001))
    default = bootstrap_means(values)
    chunked = bootstrap_means(values, 100, 2, chunk=10_000)  # 9 resamples a block
    flat = bootstrap_means(values[0], n_boot=200, seed=3, level=0.9)
    return [[_reprs(*a) for a in default], [_reprs(*a) for a in chunked], _reprs(*flat)]


def _hill():
    from twotower.analysis.neuron_stats import hill_bootstrap

    out = []
    for n in (2001, 2000):  # odd and even: one generator call per resample either way
        samples = (1 - np.random.default_rng(n).random(n)) ** (-1 / 1.5)
        out.append(_reprs(*hill_bootstrap(samples, n_boot=200, seed=4)))
    return out


def _class_tests():
    from twotower.analysis import syntax

    rng = np.random.default_rng(3)
    values = rng.normal(size=120)
    labels = rng.random(120) < 0.4
    values[labels] += 0.3
    strata = rng.integers(0, 4, 120)
    effect = syntax.effect_size(values[labels], values[~labels])
    return [_reprs(syntax.class_difference_p(values, labels, None, 500, 6),
                   syntax.class_difference_p(values, labels, strata, 500, 6),
                   *effect.values(), stats.pooled_sd(values[labels], values[~labels]))]


def _planted():
    from twotower.analysis import planted_split
    from twotower.data.synthetic import PlantedLanguage, PlantedLanguageConfig
    from twotower.experiments.power import division_gap

    rng = np.random.default_rng(3)
    values = rng.normal(size=120)
    labels = rng.random(120) < 0.4
    values[labels] += 0.3
    p, null = planted_split.permutation_test(values, labels.astype(float), 300, 7)
    language = PlantedLanguage(PlantedLanguageConfig(window=32))
    pref = np.random.default_rng(4).normal(0, 0.3, language.vocab_size) + \
        np.where(language.labels == "local", 0.2, -0.1)
    pref[:5] = np.nan
    df = pd.DataFrame({"pref": pref}, index=pd.Index(np.arange(pref.size), name="id"))
    score = planted_split.planted_split_score(df, language.labels, 200, 200, seed=1)
    shares = planted_split.split_shares(df, language.labels)
    gaps = [division_gap(types.SimpleNamespace(pref=df, language=language, seed=s))
            for s in (0, 1)]
    return [[repr(p), _hash(null)], _reprs(score.r, *score.ci, score.p),
            [repr(v) for v in shares.values()], _reprs(*gaps)]


def _runs():
    from test_stability import make_run, planted_scores

    shared = np.random.default_rng(42).normal(0, 0.4, 300)
    return [make_run(planted_scores(sign * shared, seed=s, gap=0.1 * s, per_token=20),
                     seed=s) for s, sign in ((1, 1), (2, -1), (3, 1))]


def _stability():
    from twotower.analysis import across_seeds, stability
    from twotower.analysis.preference import preference_summary

    runs = _runs()
    c = stability.compare_runs(runs[0], runs[1], n_boot=200, n_perm=100, seed=3)
    rel = stability.reliability(runs[0], True, seed=1, n_boot=200)
    x = np.random.default_rng(1).normal(size=501)
    seedwise = across_seeds.seed_stability(runs, n_perm=30, seed=2)
    return [_reprs(*(run.global_gap for run in runs)),
            _reprs(preference_summary(runs[0].preference,
                                      runs[0].scores)["global_gap"]),
            _reprs(c.r_x, c.low, c.high, c.null95),
            _reprs(rel.r, rel.low, rel.high, rel.spread, rel.spread_low,
                   rel.spread_high),
            _reprs(*stability.compare_spread(runs[0], runs[2], n_boot=150, seed=2)),
            _reprs(stability.null_abs_r(x[:100], x[100:200], n_perm=200, seed=1)),
            _reprs(*stats.bootstrap_interval(501, lambda i: x[i].mean(-1), 300, 2)),
            _reprs(seedwise.mean, seedwise.p_value)]


def _correlation():
    rng = np.random.default_rng(2)
    x = rng.normal(size=301)
    y = 0.4 * x + rng.normal(size=301)
    x[[3, 50]] = np.nan
    return _reprs(*stats.bootstrap_correlation(x, y, n_boot=400, seed=5))


def _others():
    from twotower.analysis import regimes, tower_probes
    from twotower.analysis.neuron_stats import empirical_p_value

    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.04, np.float64(0.5)]
    base = np.random.default_rng(5).normal(size=99)
    rng = np.random.default_rng(6)
    gold = rng.integers(3, 20, 80)
    a = np.stack([rng.binomial(gold, 0.6), gold], 1)
    b = np.stack([rng.binomial(gold, 0.5), gold], 1)
    values = np.sort(np.random.default_rng(7).pareto(1.2, 300) + 1)[::-1]
    values[:8] *= 6
    return [_reprs(*stats.holm_adjusted(p)), stats.holm(p).tolist(),
            _reprs(empirical_p_value(0.5, base), empirical_p_value(0.5, base, "less")),
            _reprs(*tower_probes.uuas_difference(a, b, n_boot=300, seed=1)),
            _reprs(regimes.plateau_test(values, n_null=19, seed=3).p_value)]


def _context():
    from test_in_context import synthetic_frame
    from twotower.experiments.in_context import context_regression

    return _reprs(context_regression(synthetic_frame(60, 0.3, 1), n_perm=49,
                                     seed=2).p_value)


PINNED = {
    "display.bootstrap_means (chapter 7)": (_paired_means, [
        [["-0.0467975772740029", "-0.009280506071863912", "-0.04763548345462701"],
         ["-0.1054304030461176", "-0.07131146465005966", "-0.1069078187375763"],
         ["0.014583672972431454", "0.051844207070107444", "0.016296644305443284"]],
        [["-0.0467975772740029", "-0.009280506071863912", "-0.04763548345462701"],
         ["-0.12198481381061521", "-0.060599292619266165", "-0.1019638347078585"],
         ["0.014168453585779606", "0.059460930984275816", "0.014700408249375423"]],
        ["-0.0467975772740029", "-0.09891094915409969", "0.001884888129974658"]]),
    "neuron_stats.hill_bootstrap (chapter 12)": (_hill, [
        ["1.5918063811648695", "1.4015785067559972", "1.8613442517938978"],
        ["1.562023165328745", "1.3659008953057692", "1.741350034424829"]]),
    "syntax permutation p and effect size (chapter 10)": (_class_tests, [
        ["0.017964071856287425", "0.03792415169660679", "0.46265938415441904",
         "0.4240454367746026", "0.24700956937799035", "1.0910608723289748"]]),
    "planted split score, shares and division gap (chapters 2, 11)": (_planted, [
        ["0.026578073089700997", "717b4cf73a11364f"],
        ["0.3965877534647019", "0.17006975769600524", "0.5795096984008495",
         "0.004975124378109453"],
        ["'A'", "0.7083333333333334", "0.6666666666666667", "0.6875000000000001",
         "0.27053669589577284"],
        ["0.27053669589577284", "-0.27053669589577284"]]),
    "stability, global gap and seeds (chapter 9)": (_stability, [
        ["0.08471818932314636", "0.22554698849624644", "0.2672032210424853"],
        ["0.08471818932314636"],
        ["0.9795343031544683", "0.8342704946472016", "1.1896982250133965",
         "0.21340691021447325"],
        ["0.36729054508441433", "0.276560840541566", "0.4535051830045699",
         "0.3474577485044055", "0.2976218902194755", "0.39688024343013895"],
        ["-0.029100670576156895", "-0.10085416835143728", "0.035476010487839"],
        ["0.17526312213471842"],
        ["-0.11813042200734504", "0.030188079043187724"],
        ["0.987250368281385", "0.03225806451612903"]]),
    "bootstrap correlation (chapter 2)": (_correlation, [
        "0.3153922120603035", "0.22179302211368573", "0.4237033850976935"]),
    "Holm, random groups, probes, plateau (chapters 10-12)": (_others, [
        ["0.06", "0.16", "0.15", "0.035", "0.4", "0.16", "0.5"],
        [False, False, False, True, False, False, False],
        ["0.23", "0.78"],
        ["0.06113537117903933", "0.014224642278992271", "0.1117256648104619"],
        ["0.05"]]),
    "in-context regression p (chapter 10)": (_context, ["0.18"]),
}


@pytest.mark.parametrize("caller", list(PINNED))
def test_every_caller_reports_the_numbers_it_reported_before(caller):
    compute, expected = PINNED[caller]
    got = compute()
    assert _same(got, expected), f"{got} != {expected}"


def test_pinned_values_must_agree_in_every_digit_but_the_last_bits():
    assert _same(["0.3153922120603035"], ["0.31539221206030355"])
    assert not _same(["0.3153922121"], ["0.31539221206030355"])  # a changed value
    assert not _same(["6190d392f8daa94e"], ["717b4cf73a11364f"])   # another hash
    assert not _same([True], [False]) and not _same(["1.0"], ["1.0", "2.0"])
