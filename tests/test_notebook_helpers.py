"""Helpers of chapters 6 to 8: metrics, paired bootstrap, token lookup, figures.

They live in ``twotower.book`` (``display``, ``widgets``, ``schedule``, ``durations``)
and, for the metrics log of a run folder, in ``twotower.training.run_folder``.
"""

from __future__ import annotations

import json
import re
import xml.dom.minidom

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from twotower.analysis import plotting  # noqa: E402
from twotower.analysis.stats import bootstrap_means  # noqa: E402
from twotower.book.durations import format_duration  # noqa: E402
from twotower.book.schedule import learning_rates  # noqa: E402
from twotower.book.widgets import lookup_token, token_explorer  # noqa: E402
from twotower.config import TrainConfig  # noqa: E402
from twotower.errors import TwotowerError  # noqa: E402
from twotower.training.run_folder import load_metrics  # noqa: E402


# --- load_metrics ---------------------------------------------------------------------

def test_load_metrics_reads_every_phase_and_skips_a_line_cut_by_a_crash(tmp_path):
    lines = [{"phase": "joint", "step": 10, "loss": 5.0, "lr": 1e-3},
             {"phase": "joint", "step": 10, "val_loss": 5.5, "val_ppl": 244.7},
             {"phase": "baseline", "step": 10, "loss": 5.2, "lr": 1e-3}]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"phase": "jo'
    (tmp_path / "metrics.jsonl").write_text(text)
    table = load_metrics(tmp_path)
    assert len(table) == 3
    assert set(table["phase"]) == {"joint", "baseline"}
    joint = table[table["phase"] == "joint"]
    assert joint["loss"].notna().sum() == 1 and joint["val_loss"].notna().sum() == 1
    assert load_metrics(tmp_path / "metrics.jsonl").equals(table)


def test_load_metrics_names_the_missing_file(tmp_path):
    with pytest.raises(TwotowerError, match="no metrics log"):
        load_metrics(tmp_path)


# --- bootstrap_means ------------------------------------------------------------------

def test_bootstrap_means_cover_the_mean_and_shrink_with_more_positions():
    rng = np.random.default_rng(0)
    small = rng.normal(1.0, 1.0, 200)
    big = rng.normal(1.0, 1.0, 20_000)
    mean, low, high = bootstrap_means(small, n_boot=400)
    assert low < mean < high and mean == pytest.approx(small.mean())
    _, low_big, high_big = bootstrap_means(big, n_boot=400)
    assert (high_big - low_big) < (high - low) / 5  # ~ 1 / sqrt(N)
    # the interval of the mean is about 2 x 1.96 standard errors wide
    assert high_big - low_big == pytest.approx(2 * 1.96 / np.sqrt(big.size), rel=0.2)


def test_bootstrap_means_resample_rows_together_and_in_chunks():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 500)
    values = np.stack([x, x + 2.0])  # row 1 is row 0 shifted: a paired difference
    mean, low, high = bootstrap_means(values, n_boot=300, seed=3, chunk=1000)
    assert mean.shape == low.shape == high.shape == (2,)
    np.testing.assert_allclose(low[1] - low[0], 2.0)
    np.testing.assert_allclose(high[1] - high[0], 2.0)
    again = bootstrap_means(values, n_boot=300, seed=3, chunk=10**9)
    np.testing.assert_allclose(again[1], low)  # same draws whatever the chunk size


# --- lookup_token and token_explorer --------------------------------------------------

@pytest.fixture
def table():
    return pd.DataFrame({"token": ["the", "##s", "there", "them", "."],
                         "count": [50, 30, 8, 12, 40],
                         "pref": [0.1, -0.2, np.nan, 0.3, 0.0]},
                        index=pd.Index([10, 11, 12, 13, 14], name="id"))


def test_lookup_token_finds_exact_then_prefix_matches(table):
    assert lookup_token(table, "The").index.tolist() == [10]
    assert lookup_token(table, " ##s ").index.tolist() == [11]
    assert lookup_token(table, "th").index.tolist() == [10, 13, 12]
    assert lookup_token(table, "zzz").empty


def test_token_explorer_shows_the_default_token_and_follows_the_text_box(table):
    pytest.importorskip("ipywidgets")
    explorer = token_explorer(table, default="the")
    box, out = explorer.children
    assert box.value == "the"
    box.value = "zzz"  # a live kernel: the observer runs again (no error outside one)
    assert box.value == "zzz"


# --- figures --------------------------------------------------------------------------

def test_sorted_band_sorts_values_and_carries_their_errors():
    values = np.array([0.2, np.nan, -0.5, 0.9])
    errors = np.array([0.1, 0.3, 0.2, np.nan])
    ax = plotting.sorted_band(values, errors, label="pref")
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), [0.9, 0.2, -0.5])
    band = ax.collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1], 0.3).any() and np.isclose(band[:, 1], -0.7).any()
    plt.close("all")
    with pytest.raises(TwotowerError, match="one error per value"):
        plotting.sorted_band(values, errors[:2])


def test_svg_with_tooltips_gives_every_point_a_title_and_stays_valid_svg():
    alt = pytest.importorskip("altair")
    pytest.importorskip("vl_convert")
    data = pd.DataFrame({"x": [1, 2, 3], "y": [3, 1, 2], "token": ["a&b", 'q"', "c"]})
    chart = alt.Chart(data).mark_circle().encode(x="x", y="y",
                                                 tooltip=["token", "x", "y"])
    svg = plotting.svg_with_tooltips(chart)
    xml.dom.minidom.parseString(svg)  # still well-formed after the rewrite
    titles = re.findall(r"<title>(.*?)</title>", svg, re.S)
    assert len(titles) == 3
    assert any("token: a&amp;b" in t for t in titles)
    assert all("\n" in t for t in titles)  # one field per line
    html = plotting.chart_with_tooltips(chart)
    assert "<svg" in html.data and "<title>" in html.data


# --- learning_rates and format_duration (chapter 6) -----------------------------------

def test_learning_rates_warm_up_linearly_then_decay_to_zero():
    rates = learning_rates(TrainConfig(steps=20, warmup_steps=5, lr=1.0))
    assert rates.shape == (21,)
    np.testing.assert_allclose(rates[:6], [0.2, 0.36, 0.52, 0.68, 0.84, 1.0])
    np.testing.assert_allclose(rates[5:], np.linspace(1.0, 0.0, 16), atol=1e-12)


@pytest.mark.parametrize("seconds, text", [(3.2, "3.2 s"), (130, "2.17 min"),
                                           (7200, "2 h"), (4e5, "4.63 days"),
                                           (1e8, "3.17 years"), (float("nan"), "n/a")])
def test_format_duration_picks_a_readable_unit(seconds, text):
    assert format_duration(seconds) == text


def test_svg_tooltips_follow_the_description_and_keep_entities_whole():
    alt = pytest.importorskip("altair")
    pytest.importorskip("vl_convert")
    data = pd.DataFrame({"x": [1, 2], "y": [3, 1], "token": ['say "hi"', "b"]})
    chart = alt.Chart(data).mark_circle().transform_calculate(
        info="'token: ' + datum.token + '; x: ' + datum.x").encode(
        x="x", y="y", description="info:N")
    svg = plotting.svg_with_tooltips(chart)
    titles = re.findall(r"<title>(.*?)</title>", svg, re.S)
    assert titles == ["token: say &quot;hi&quot;\nx: 1", "token: b\nx: 2"]
