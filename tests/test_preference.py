"""Token preference, its noise ceiling and its controls, on synthetic scores."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.errors import TwotowerError
from twotower.analysis import preference
from twotower.analysis.preference import (centred_preference, global_gap,
                                          half_assignment, naive_token_preference,
                                          preference_summary, split_half,
                                          token_preference)
from twotower.analysis.stats import bootstrap_correlation, pearson
from twotower.data.scores import TokenScores


def make_scores(target, ll_a, ll_b) -> TokenScores:
    target = np.asarray(target, dtype=np.int32)
    ll = np.stack([np.asarray(ll_a), np.asarray(ll_b)]).astype(np.float32)
    return TokenScores(target, ll, ll.mean(0))


def planted(n_tokens=150, per_token=80, signal=1.0, noise=1.0, gap=0.0, seed=0,
            difficulty_slope=0.0):
    """Scores where token v has a true preference ``offset[v]`` (plus noise per
    occurrence). Returns ``(scores, offset)``."""
    rng = np.random.default_rng(seed)
    offset = signal * rng.standard_normal(n_tokens)
    difficulty = rng.uniform(1, 6, n_tokens)
    offset = offset + difficulty_slope * difficulty
    ids = np.repeat(np.arange(n_tokens), per_token)
    rng.shuffle(ids)
    base = -difficulty[ids] + 0.3 * rng.standard_normal(ids.size)
    diff = gap + offset[ids] + noise * rng.standard_normal(ids.size)
    return make_scores(ids, base + diff / 2, base - diff / 2), offset


# --- token_preference against the naive loop ------------------------------------------

@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 120), n_ids=st.integers(1, 12), min_count=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_vectorised_preference_equals_the_naive_loop(n, n_ids, min_count, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n_ids, n) * 3  # gaps: ids never seen must not appear
    scores = make_scores(ids, -rng.exponential(2, n), -rng.exponential(2, n))
    df = token_preference(scores, vocab_size=3 * n_ids, min_count=min_count)
    naive = naive_token_preference(scores, min_count=min_count)
    assert sorted(df.index) == sorted(naive)
    for token, value in naive.items():
        got = df.loc[token, "pref"]
        if math.isnan(value):
            assert math.isnan(got) and math.isnan(df.loc[token, "pref_se"])
        else:
            assert got == pytest.approx(value, rel=1e-6, abs=1e-6)


def test_preference_columns_are_per_token_means_counts_and_standard_errors():
    rng = np.random.default_rng(1)
    ids = np.r_[rng.integers(0, 15, 490), [15, 16, 16, 17, 17, 17, 18, 18, 18, 18]]
    a, b = -rng.exponential(2, 500), -rng.exponential(2, 500)
    scores = make_scores(ids, a, b)
    df = token_preference(scores, vocab_size=20, min_count=5)
    frame = pd.DataFrame({"id": ids, "a": scores.ll_a.astype(np.float64),
                          "b": scores.ll_b.astype(np.float64)})
    frame["d"] = frame["a"] - frame["b"]
    g = frame.groupby("id")
    np.testing.assert_array_equal(df["count"], g.size().loc[df.index])
    np.testing.assert_allclose(df["ll_a"], g["a"].mean().loc[df.index], rtol=1e-9)
    np.testing.assert_allclose(df["ll_b"], g["b"].mean().loc[df.index], rtol=1e-9)
    ok = df["count"] >= 5
    np.testing.assert_allclose(df.loc[ok, "pref"], g["d"].mean().loc[df.index[ok]],
                               rtol=1e-9)
    se = g["d"].std(ddof=1) / np.sqrt(g.size())
    np.testing.assert_allclose(df.loc[ok, "pref_se"], se.loc[df.index[ok]], rtol=1e-6)
    assert (df["count"] < 5).any() and df.loc[~ok, "pref"].isna().all()
    assert df.loc[~ok, ["ll_a", "ll_b"]].notna().all().all()  # means are still shown


def test_rare_tokens_get_nan_never_zero_and_unseen_tokens_no_row():
    scores = make_scores([3, 3, 3, 7], [-1.0, -1.0, -1.0, -2.0],
                         [-2.0, -2.0, -2.0, -1.0])
    df = token_preference(scores, vocab_size=10, min_count=3)
    assert list(df.index) == [3, 7]
    assert df.loc[3, "pref"] == pytest.approx(1.0)
    assert math.isnan(df.loc[7, "pref"])
    assert df.index.name == "id"


def test_token_strings_are_added_as_a_column():
    scores = make_scores([1, 2, 2], [-1.0] * 3, [-1.5] * 3)
    df = token_preference(scores, vocab_size=4, min_count=1,
                          tokens=["a", "b", "c", "d"])
    assert list(df.columns) == ["token", "count", "ll_a", "ll_b", "pref", "pref_se"]
    assert list(df["token"]) == ["b", "c"]


def test_ids_beyond_the_vocabulary_and_other_than_two_readouts_are_refused():
    with pytest.raises(TwotowerError, match="vocab_size"):
        token_preference(make_scores([1, 12], [-1, -1], [-1, -1]), vocab_size=10)
    three = TokenScores(np.array([1], np.int32), np.zeros((3, 1), np.float32),
                        np.zeros(1, np.float32))
    with pytest.raises(TwotowerError, match="two readouts"):
        token_preference(three, vocab_size=10)
    with pytest.raises(TwotowerError, match="vocab_size"):
        token_preference(make_scores([1, -2], [-1, -1], [-1, -1]), vocab_size=10)


@pytest.mark.skipif(preference.numba is None, reason="numba not installed")
@pytest.mark.parametrize("id_type, ll_type", [(np.int32, np.float32),
                                              (np.int64, np.float64)])
def test_compiled_sums_equal_the_bincount_version(id_type, ll_type):
    rng = np.random.default_rng(0)
    ids = (rng.zipf(1.3, 50_000) % 500).astype(id_type)
    ll = -rng.exponential(3.0, (2, ids.size)).astype(ll_type)
    fast = preference.token_sums(ids, ll[0], ll[1], 512)
    readable = preference.token_sums_numpy(ids, ll[0], ll[1], 512)
    assert fast.shape == readable.shape == (512, 4)
    np.testing.assert_allclose(fast, readable, rtol=1e-9, atol=1e-9)
    assert fast[500:].sum() == 0 and fast[:, 0].sum() == ids.size


# --- split-half reliability -----------------------------------------------------------

def test_split_half_is_high_when_a_preference_is_planted():
    scores, _ = planted(signal=1.0, noise=1.0)
    result = split_half(scores, vocab_size=150, min_count=5)
    assert result.n_tokens == 150
    assert result.r > 0.8
    assert result.ceiling == pytest.approx(2 * result.r / (1 + result.r))
    assert result.ceiling > result.r


def test_split_half_is_near_zero_without_a_preference():
    scores, _ = planted(signal=0.0, noise=1.0, gap=0.7, n_tokens=400)
    result = split_half(scores, vocab_size=400, min_count=5)
    assert abs(result.r) < 0.15  # a global gap alone is no token preference


def test_split_half_counts_only_tokens_with_min_count_in_each_half():
    scores, _ = planted(n_tokens=30, per_token=9)
    half = half_assignment(scores.target, 0)  # 4 or 5 occurrences per half
    assert split_half(scores, 30, min_count=5, half=half).n_tokens == 0
    assert split_half(scores, 30, min_count=4, half=half).n_tokens == 30
    assert math.isnan(split_half(scores, 30, min_count=5, half=half).r)


def test_text_halves_split_whole_articles_and_fall_back_to_window_blocks():
    scores, _ = planted(n_tokens=40, per_token=30)
    n = scores.target.size
    window = np.arange(n) // 10
    many = dataclasses.replace(scores, window=window, article=window // 12)
    half, kind = preference.text_halves(many)
    assert kind == "article"
    for article in np.unique(many.article):  # an article is never split
        assert np.unique(half[many.article == article]).size == 1
    assert abs(np.unique(many.article[half == 0]).size -
               np.unique(many.article[half == 1]).size) <= 1
    few = dataclasses.replace(many, article=window // (window.max() // 3 + 1))
    half, kind = preference.text_halves(few)  # 3 articles: blocks of windows
    assert kind == "window block"
    blocks = np.unique(window) * preference.HALF_BLOCKS // np.unique(window).size
    assert np.unique(blocks).size == preference.HALF_BLOCKS
    for w in np.unique(window):
        assert np.unique(half[window == w]).size == 1
    assert preference.text_halves(scores)[1] == "position block"


def test_split_half_depends_on_the_seed_only_through_the_halves():
    scores, _ = planted(n_tokens=60, per_token=20)
    a, b = split_half(scores, 60, seed=1), split_half(scores, 60, seed=1)
    assert a == b
    assert split_half(scores, 60, seed=2).r != a.r


def test_split_half_centred_r_removes_a_difficulty_confound():
    """Hard tokens having larger differences in both halves is not a preference."""
    scores, _ = planted(signal=0.0, noise=0.5, difficulty_slope=0.5, n_tokens=300)
    result = split_half(scores, vocab_size=300, min_count=5)
    assert result.r > 0.8  # the raw correlation is fooled
    assert abs(result.r_centred) < 0.2


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 9), min_size=1, max_size=12),
       seed=st.integers(0, 1000))
def test_half_assignment_splits_every_token_evenly(counts, seed):
    ids = np.repeat(np.arange(len(counts)) * 5, counts)
    np.random.default_rng(seed).shuffle(ids)
    half = half_assignment(ids, seed)
    assert set(np.unique(half)) <= {0, 1}
    for token, count in zip(np.arange(len(counts)) * 5, counts):
        in_first = int((half[ids == token] == 0).sum())
        assert in_first == (count + 1) // 2  # balanced: they differ by at most one
    np.testing.assert_array_equal(half, half_assignment(ids, seed))


# --- bootstrap, controls, summary -----------------------------------------------------

def test_bootstrap_interval_contains_r_and_narrows_with_more_tokens():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 1000):
        x = rng.standard_normal(n)
        y = 0.6 * x + 0.8 * rng.standard_normal(n)
        r, low, high = bootstrap_correlation(x, y, n_boot=500, seed=1)
        assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert low < r < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2
    assert 0.4 < r < 0.7


def test_bootstrap_ignores_nan_tokens_and_needs_three():
    x = np.array([1.0, 2.0, np.nan, 3.0, 4.0])
    y = np.array([1.0, 2.5, 5.0, np.nan, 3.0])
    r, low, high = bootstrap_correlation(x, y, n_boot=50)
    assert r == pytest.approx(np.corrcoef([1, 2, 4], [1, 2.5, 3])[0, 1])
    assert all(math.isnan(v) for v in bootstrap_correlation(x[:3], y[:3]))
    assert math.isnan(pearson(np.ones(5), np.arange(5.0)))


def test_centred_preference_removes_global_gap_and_difficulty_but_keeps_the_rest():
    rng = np.random.default_rng(0)
    n = 300
    difficulty = rng.uniform(1, 5, n)
    signal = rng.standard_normal(n)
    count = rng.integers(5, 500, n)
    pref = 0.8 + 0.5 * difficulty + signal
    df = pd.DataFrame({"count": count, "ll_a": -difficulty + pref / 2,
                       "ll_b": -difficulty - pref / 2, "pref": pref,
                       "pref_se": np.ones(n)})
    df.loc[:4, "pref"] = np.nan
    centred = centred_preference(df)
    assert centred[:5].isna().all()
    ok = centred.notna()
    assert abs(centred[ok].mean()) < 1e-9
    assert abs(np.corrcoef(centred[ok], difficulty[ok])[0, 1]) < 1e-6
    assert np.corrcoef(centred[ok], signal[ok])[0, 1] > 0.95
    assert np.corrcoef(pref[ok], difficulty[ok])[0, 1] > 0.3  # there was a confound


def test_preference_summary_reports_balance_spread_and_global_gap():
    scores = make_scores([0] * 5 + [1] * 5 + [2] * 5 + [3],
                         [-1.0] * 5 + [-2.0] * 5 + [-1.0] * 5 + [-9.0],
                         [-2.0] * 5 + [-1.0] * 5 + [-1.5] * 5 + [-1.0])
    df = token_preference(scores, vocab_size=4, min_count=5)
    summary = preference_summary(df, scores)
    assert summary["n_tokens"] == 3
    assert summary["share_a_better"] == pytest.approx(2 / 3)
    assert summary["median"] == pytest.approx(0.5)
    assert summary["mean"] == pytest.approx((1 - 1 + 0.5) / 3)
    assert summary["global_gap"] == pytest.approx((5 - 5 + 2.5 - 8) / 16)
    assert summary["global_gap"] == global_gap(scores)  # one place computes it
    assert preference_summary(df.iloc[:0])["n_tokens"] == 0


def test_global_gap_averages_positions_not_tokens_in_fp64():
    ll = np.array([[-1.0] * 9 + [-5.0], [-2.0] * 9 + [-1.0]], dtype=np.float32)
    scores = TokenScores(np.array([0] * 9 + [1], dtype=np.int32), ll, ll[0])
    assert global_gap(scores) == pytest.approx((9 * 1.0 - 4.0) / 10)
    assert isinstance(global_gap(scores), float)
