"""Tests of twotower.analysis.neuron_stats and twotower.analysis.regimes on synthetic
data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.errors import TwotowerError
from twotower.analysis.neuron_stats import (
    clustered_means,
    coactivation,
    empirical_p_value,
    hill_bootstrap,
    hill_estimator,
    random_group_baseline,
    spectrum_tail_alpha,
    weight_correlation_spectrum,
)
from twotower.analysis.regimes import (
    fit_three_regimes,
    log_rank_curve,
    plateau_table,
    plateau_test,
)


def planted_influences(n=2000, ranks=(40, 400), slopes=(-0.05, -1.0, -4.0),
                       noise=0.1, seed=0):
    """|influence| values whose sorted log-log curve has the given breakpoints."""
    log_rank = np.log(np.arange(1, n + 1))
    b1, b2 = np.log(ranks)
    s1, s2, s3 = slopes
    log_value = (s1 * log_rank + (s2 - s1) * np.maximum(log_rank - b1, 0)
                 + (s3 - s2) * np.maximum(log_rank - b2, 0))
    rng = np.random.default_rng(seed)
    values = np.exp(log_value + noise * rng.standard_normal(n))
    return rng.permutation(values)  # the fit must not rely on the input order


def power_law_with_decay(n=512, knee=100, slopes=(-1.0, -4.0), noise=0.1, seed=0):
    """Log rank and noisy log value of a power law that turns into a rapid decay."""
    log_rank = np.log(np.arange(1, n + 1))
    log_value = (slopes[0] * log_rank
                 + (slopes[1] - slopes[0]) * np.maximum(log_rank - np.log(knee), 0))
    return log_rank, log_value + noise * np.random.default_rng(seed).standard_normal(n)


def pareto(alpha, n, seed):
    """Samples with P(X > x) = x ** -alpha for x >= 1."""
    return np.random.default_rng(seed).uniform(size=n) ** (-1.0 / alpha)


# ---------------------------------------------------------------- three regimes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_regime_fit_recovers_planted_breakpoints_and_slopes(seed):
    fit = fit_three_regimes(planted_influences(seed=seed))
    r1, r2 = fit.breakpoint_ranks
    assert abs(r1 - 40) / 40 < 0.15
    assert abs(r2 - 400) / 400 < 0.15
    assert fit.shares == pytest.approx((0.02, 0.18, 0.80), abs=0.01)
    assert fit.slopes[1] == pytest.approx(-1.0, abs=0.1)
    assert fit.slopes[2] == pytest.approx(-4.0, abs=0.2)
    assert fit.slopes[0] > -0.3  # the plateau is flat, far from the power law
    assert fit.n_fitted == 2000 and fit.n_dropped == 0


def test_three_regime_fit_finds_no_flat_plateau_in_a_pure_power_law():
    log_rank = np.log(np.arange(1, 2001))
    noise = 0.1 * np.random.default_rng(3).standard_normal(2000)
    fit = fit_three_regimes(np.exp(-1.0 * log_rank + noise))
    # whatever the breakpoints, the head of the curve keeps the power-law slope
    assert fit.slopes[0] == pytest.approx(-1.0, abs=0.1)


def test_three_regime_fit_rss_and_predict_agree_with_the_data():
    values = planted_influences(seed=4)
    fit = fit_three_regimes(values)
    log_rank, log_value, _ = log_rank_curve(values)
    assert fit.rss == pytest.approx(np.sum((fit.predict(log_rank) - log_value) ** 2))
    # continuity: the line has no jump at either breakpoint
    for b in fit.breakpoint_log_ranks:
        assert fit.predict(b - 1e-9) == pytest.approx(fit.predict(b + 1e-9), abs=1e-6)
    assert fit.predict(log_rank).shape == log_rank.shape


def test_three_regime_fit_beats_a_misplaced_pair_of_breakpoints():
    values = planted_influences(seed=5, noise=0.2)
    fit = fit_three_regimes(values)
    log_rank, log_value, _ = log_rank_curve(values)
    design = np.stack([np.ones_like(log_rank), log_rank,
                       np.maximum(log_rank - np.log(10), 0),
                       np.maximum(log_rank - np.log(1000), 0)], axis=1)
    coef, *_ = np.linalg.lstsq(design, log_value, rcond=None)
    assert fit.rss < np.sum((design @ coef - log_value) ** 2)


def test_three_regime_fit_drops_zeros_and_counts_them():
    values = np.concatenate([planted_influences(seed=6), np.zeros(7), -np.ones(3)])
    fit = fit_three_regimes(values)
    assert fit.n_dropped == 10 and fit.n_fitted == 2000
    assert sum(fit.shares) == pytest.approx(1.0)


def test_three_regime_fit_is_deterministic():
    values = planted_influences(seed=7)
    assert fit_three_regimes(values) == fit_three_regimes(values)


@pytest.mark.parametrize("values", [np.ones(9), np.r_[np.ones(5), np.zeros(20)],
                                    np.ones((4, 4)), np.r_[np.ones(20), np.nan]])
def test_three_regime_fit_rejects_too_few_or_bad_values(values):
    with pytest.raises(TwotowerError):
        fit_three_regimes(values)


# ---------------------------------------------------------------- plateau test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plateau_test_finds_no_plateau_in_half_normal_values(seed):
    # the sorted curve of |N(0, 1)| bends down at its top: the three-regime fit finds
    # a first segment much flatter than the second, which is no plateau
    values = np.abs(np.random.default_rng(seed).standard_normal(512))
    flat, steep, _ = fit_three_regimes(values).slopes
    assert abs(flat) < abs(steep) / 2  # chapter 12's old criterion saw a plateau here
    test = plateau_test(values)
    assert not test.has_plateau
    assert test.excess < 0  # the top lies below the power law's extrapolation
    assert test.p_value == 1.0 and test.n_null == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plateau_test_finds_a_plateau_above_a_power_law(seed):
    log_rank, log_value = power_law_with_decay(seed=seed)
    size, level = 20, np.log(0.2)  # 20 neurons at the power law's value at rank 5
    noise = 0.1 * np.random.default_rng(100 + seed).standard_normal(size)
    log_value[:size] = level + noise
    values = np.random.default_rng(seed).permutation(np.exp(log_value))
    test = plateau_test(values, n_null=19, seed=seed)
    assert test.has_plateau and test.p_value == pytest.approx(1 / 20)
    assert test.plateau_size == size
    planted = np.mean(level - (-1.0) * log_rank[:size])  # above the line y = -log r
    # the noise of a mean over 20 values has sd 0.1 / sqrt(20) = 0.022
    assert test.excess == pytest.approx(planted, abs=0.1)
    assert test.tail.slopes == pytest.approx((-1.0, -4.0), abs=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plateau_test_finds_no_plateau_in_a_power_law_with_a_rapid_decay(seed):
    log_rank, log_value = power_law_with_decay(seed=seed)
    test = plateau_test(np.exp(log_value), n_null=19)
    assert not test.has_plateau
    # the null alone recovers the planted curve
    assert test.null.slopes == pytest.approx((-1.0, -4.0), abs=0.1)
    assert abs(test.null.breakpoint_rank - 100) / 100 < 0.15
    assert test.null.first_rank == 1


def test_plateau_test_is_calibrated_on_samples_of_a_power_law():
    # a Pareto sample has no plateau, but its top few values scatter above the line:
    # BIC with a positive excess alone calls about half of such samples a plateau.
    # With the null drawn from the fit, P(plateau) <= 5% per sample, so three or more
    # in ten would happen with probability < 0.012.
    tests = [plateau_test(pareto(2.0, 256, seed=seed), n_null=19, seed=seed)
             for seed in range(10)]
    assert sum(t.has_plateau for t in tests) <= 2
    assert sum(t.delta_bic > 0 and t.excess > 0 for t in tests) >= 3  # BIC would


def test_plateau_test_drops_zeros_and_rejects_too_few_values():
    log_rank, log_value = power_law_with_decay(n=200, knee=50, seed=3)
    values = np.concatenate([np.exp(log_value), np.zeros(4), -np.ones(2)])
    test = plateau_test(values, n_null=5)
    assert test.n_dropped == 6 and test.n_fitted == 200
    assert test == plateau_test(values, n_null=5)  # deterministic
    with pytest.raises(TwotowerError):
        plateau_test(np.r_[np.ones(9), np.zeros(20)])


def test_plateau_table_has_one_row_per_curve_with_fit_and_test():
    half_normal = np.abs(np.random.default_rng(0).standard_normal(300))
    log_rank, log_value = power_law_with_decay(n=300, knee=60, seed=1)
    curves = {("half-normal", "-"): half_normal, ("power law", "A"): np.exp(log_value)}
    tests = {key: plateau_test(v, n_null=5) for key, v in curves.items()}
    fits = {key: fit_three_regimes(v) for key, v in curves.items()}
    table = plateau_table(tests, fits)
    assert table["curve"].tolist() == ["half-normal", "power law"]
    assert table["tower"].tolist() == ["-", "A"]
    assert table["ΔBIC"].tolist() == [t.delta_bic for t in tests.values()]
    assert table["breakpoints (ranks)"].tolist() == [f.breakpoint_ranks
                                                     for f in fits.values()]
    by_step = plateau_table({(0, "A"): tests["power law", "A"]},
                            names=("step", "tower"))
    assert list(by_step.columns[:2]) == ["step", "tower"] and "slopes" not in by_step


# ---------------------------------------------------------------- clustered means


def test_clustered_means_with_one_position_per_cluster_is_the_plain_standard_error():
    rng = np.random.default_rng(0)
    values, labels = rng.standard_normal(300), rng.integers(-1, 3, 300)
    mean, cov, count = clustered_means(values, labels, np.arange(300), 3)
    for label in range(3):
        chosen = values[labels == label]
        assert count[label] == chosen.size
        assert mean[label] == pytest.approx(chosen.mean())
        assert np.sqrt(cov[label, label]) == pytest.approx(
            chosen.std(ddof=1) / np.sqrt(chosen.size))
    assert cov[0, 1] == 0.0  # no cluster holds two labels


def test_clustered_means_of_identical_windows_count_each_window_once():
    # every position of a window has the window's value: the SE is that of the
    # window means, as if each window were one position
    window_values = np.random.default_rng(1).standard_normal(12)
    values = np.repeat(window_values, 7)
    windows = np.repeat(np.arange(12), 7)
    mean, cov, _ = clustered_means(values, np.zeros(84, int), windows, 1)
    assert mean[0] == pytest.approx(window_values.mean())
    assert np.sqrt(cov[0, 0]) == pytest.approx(window_values.std(ddof=1) / np.sqrt(12))


def test_clustered_means_reject_unknown_clusters_and_need_two_clusters():
    with pytest.raises(TwotowerError):
        clustered_means(np.ones(4), np.zeros(4, int), np.array([0, 1, -1, 2]), 1)
    mean, cov, count = clustered_means(np.arange(4.0), np.array([0, 0, 1, 1]),
                                       np.array([5, 5, 6, 7]), 2)
    assert np.isnan(cov[0, 0]) and np.isfinite(cov[1, 1]) and count.tolist() == [2, 2]
    assert mean.tolist() == [0.5, 2.5]


# ---------------------------------------------------------------- Hill estimator


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_hill_estimator_recovers_pareto_exponent(alpha):
    samples = pareto(alpha, 20000, seed=11)
    assert hill_estimator(samples) == pytest.approx(alpha, rel=0.10)


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_hill_bootstrap_interval_contains_true_exponent(alpha):
    estimate, low, high = hill_bootstrap(pareto(alpha, 20000, seed=12), k=2000,
                                         n_boot=200, seed=0)
    assert low < estimate < high
    assert low <= alpha <= high
    assert high - low < 0.3 * alpha  # an interval, not the whole line


def test_hill_estimator_uses_survival_exponent_not_density_exponent():
    # pdf exponent is alpha + 1 = 3; a density-exponent convention would give ~3
    assert hill_estimator(pareto(2.0, 20000, seed=13)) == pytest.approx(2.0, rel=0.1)


def test_hill_estimator_ignores_order_and_scale():
    samples = pareto(2.0, 5000, seed=14)
    shuffled = np.random.default_rng(0).permutation(samples)
    reference = hill_estimator(samples, k=300)
    assert hill_estimator(shuffled, k=300) == pytest.approx(reference)
    assert hill_estimator(7.0 * samples, k=300) == pytest.approx(reference)


@pytest.mark.parametrize("k", [0, 100, -1])
def test_hill_estimator_rejects_bad_k(k):
    with pytest.raises(TwotowerError):
        hill_estimator(pareto(2.0, 100, seed=0), k=k)


def test_hill_estimator_rejects_a_flat_tail():
    with pytest.raises(TwotowerError):
        hill_estimator(np.ones(50))


# ---------------------------------------------------------------- weight spectra


def test_weight_correlation_spectrum_is_sorted_and_sums_to_group_size():
    weights = np.random.default_rng(0).standard_normal((20, 64))
    spectrum = weight_correlation_spectrum(weights)
    assert spectrum.shape == (20,)
    assert np.all(np.diff(spectrum) <= 0)
    assert spectrum.sum() == pytest.approx(20.0)


def test_weight_correlation_spectrum_of_copies_has_one_eigenvalue():
    row = np.random.default_rng(1).standard_normal(64)
    weights = np.outer(np.linspace(1, 3, 8), row)  # same direction, different scale
    spectrum = weight_correlation_spectrum(weights)
    assert spectrum[0] == pytest.approx(8.0)
    assert np.allclose(spectrum[1:], 0.0, atol=1e-9)


def test_spectrum_tail_alpha_is_smaller_for_a_group_with_shared_directions():
    rng = np.random.default_rng(2)
    independent = rng.standard_normal((60, 256))
    # a few shared directions with heavy-tailed loadings make outlier eigenvalues
    loadings = rng.standard_t(1.5, size=(60, 5))
    structured = loadings @ rng.standard_normal((5, 256)) + independent
    assert spectrum_tail_alpha(structured) < spectrum_tail_alpha(independent)


def test_weight_correlation_spectrum_rejects_constant_neuron():
    weights = np.random.default_rng(3).standard_normal((5, 10))
    weights[2] = 1.0
    with pytest.raises(TwotowerError):
        weight_correlation_spectrum(weights)


# ---------------------------------------------------------------- co-activation


def test_coactivation_of_perfectly_correlated_group_has_one_dimension():
    base = np.random.default_rng(0).standard_normal((500, 1))
    acts = base * np.linspace(0.5, 2.0, 10) + np.arange(10)  # scaled, shifted copies
    result = coactivation(acts)
    assert result.mean_correlation == pytest.approx(1.0)
    assert result.n_components == 1
    assert result.effective_dimensionality == pytest.approx(1 / 10)


def test_coactivation_of_independent_group_is_uncorrelated_and_high_dimensional():
    acts = np.random.default_rng(1).standard_normal((5000, 10))
    result = coactivation(acts)
    assert abs(result.mean_correlation) < 0.05
    assert result.effective_dimensionality >= 0.9


def test_coactivation_skips_dead_neurons_in_correlation():
    acts = np.random.default_rng(2).standard_normal((300, 1)) * np.ones((1, 4))
    acts = np.concatenate([acts, np.zeros((300, 2))], axis=1)  # two never fire
    result = coactivation(acts)
    assert result.n_constant == 2 and result.group_size == 6
    assert result.mean_correlation == pytest.approx(1.0)
    assert result.effective_dimensionality == pytest.approx(1 / 6)


# ---------------------------------------------------------------- random groups


def test_random_group_baseline_draws_distinct_members_of_the_population():
    population = np.arange(100, 200)
    seen = []

    def record(group):
        seen.append(group)
        return group.mean()

    values = random_group_baseline(record, population, group_size=10, n_groups=50,
                                   seed=0)
    assert values.shape == (50,)
    assert all(len(set(g.tolist())) == 10 and set(g.tolist()) <= set(population)
               for g in seen)
    again = random_group_baseline(lambda g: g.mean(), population, 10, 50, seed=0)
    assert np.array_equal(values, again)
    assert values.mean() == pytest.approx(149.5, abs=3)


def test_random_group_baseline_rejects_group_larger_than_population():
    with pytest.raises(TwotowerError):
        random_group_baseline(len, np.arange(5), group_size=6, n_groups=3)


def test_empirical_p_value_counts_at_least_as_extreme_groups():
    baseline = np.arange(99.0)
    assert empirical_p_value(1000.0, baseline) == pytest.approx(1 / 100)
    assert empirical_p_value(-1.0, baseline) == pytest.approx(1.0)
    assert empirical_p_value(-1.0, baseline, alternative="less") == pytest.approx(0.01)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=10, max_value=300), st.integers(min_value=0, max_value=99))
def test_three_regime_fit_shares_and_ranks_are_consistent(n, seed):
    values = np.random.default_rng(seed).lognormal(size=n)
    fit = fit_three_regimes(values)
    r1, r2 = fit.breakpoint_ranks
    assert 1 <= r1 <= r2 <= n
    assert sum(fit.shares) == pytest.approx(1.0)
    assert min(fit.shares) * n >= 3 - 1e-9
