"""One figure style for the whole book, and the plots that several chapters share.

Introduced in chapter 1 (*Is language divisible?*).

Call :func:`setup` once at the top of a chapter (``twotower.book.setup.setup`` does
it for you). It sets matplotlib's rcParams, registers and enables an Altair theme with
the same colours and fonts, and makes Altair render charts as static SVG through
vl-convert, so the HTML book needs no JavaScript from a CDN to show them.

Tower A is always drawn in :data:`TOWER_COLORS` ``["A"]`` (blue) and tower B in
``["B"]`` (orange); whatever is shared by both towers is grey. The architecture
diagram of chapters 1 and 5 is :func:`twotower.analysis.diagram.architecture_diagram`.
"""

from __future__ import annotations

import html
import re
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from twotower.analysis import alt_text
from twotower.errors import TwotowerError

#: Colour of each tower, the same in every figure of the book.
TOWER_COLORS: dict[str, str] = {"A": "#3568b0", "B": "#e07b28"}
#: Colour of what both towers share (embedding, fused head, decoder).
SHARED_COLOR = "#7a7a7a"
#: Colour of a control or baseline (a shuffled or random split).
CONTROL_COLOR = "#a9a9a9"
#: Colour used to draw the eye (a threshold, a highlighted token).
ACCENT_COLOR = "#b8323a"
#: Cycle of colours for everything that is neither a tower nor a control.
PALETTE: tuple[str, ...] = (
    TOWER_COLORS["A"], TOWER_COLORS["B"], "#4e9a5b", "#8a5fb0", ACCENT_COLOR,
    "#3aa6b8", SHARED_COLOR,
)
FONT_FAMILY = "DejaVu Sans"
ALTAIR_THEME = "twotower"

RC_PARAMS: dict[str, object] = {
    # at the book's 110 dpi a 6.2-inch figure is 682 px: no wider than the page's
    # column, so it is never shrunk (and its fonts with it)
    "figure.figsize": (6.2, 3.5),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.family": FONT_FAMILY,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.prop_cycle": mpl.cycler(color=list(PALETTE)),
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "image.cmap": "viridis",
}


def tower_color(tower: str | int) -> str:
    """Colour of a tower given as ``"A"``/``"B"`` or index ``0``/``1``."""
    key = {0: "A", 1: "B"}.get(tower, tower) if isinstance(tower, int) else tower
    key = str(key).upper()
    if key not in TOWER_COLORS:
        raise TwotowerError(f"unknown tower {tower!r}; use 'A', 'B', 0 or 1")
    return TOWER_COLORS[key]


def _altair_theme() -> dict:
    axis = {"labelFont": FONT_FAMILY, "titleFont": FONT_FAMILY, "gridOpacity": 0.3,
            "domain": False, "labelFontSize": 11, "titleFontSize": 12}
    return {
        "config": {
            "view": {"continuousWidth": 420, "continuousHeight": 260, "stroke": None},
            "font": FONT_FAMILY,
            "range": {"category": list(PALETTE)},
            "axis": axis,
            "legend": {"labelFont": FONT_FAMILY, "titleFont": FONT_FAMILY},
            "title": {"font": FONT_FAMILY, "fontSize": 13, "anchor": "start"},
            "mark": {"color": TOWER_COLORS["A"]},
        }
    }


def setup() -> None:
    """Apply the book's figure style to matplotlib and Altair (safe to call twice).

    Altair charts are rendered to static SVG by vl-convert, so an executed notebook
    stores an image, not a JavaScript chart that would need Vega from a CDN; each
    carries its alt text (:func:`twotower.analysis.alt_text.svg_bundle`).
    """
    mpl.rcParams.update(RC_PARAMS)
    try:
        import altair as alt
    except ImportError:  # Altair is optional for the package, required by the book
        return
    if ALTAIR_THEME not in alt.theme.names():
        alt.theme.register(ALTAIR_THEME, enable=False)(_altair_theme)
    alt.theme.enable(ALTAIR_THEME)
    try:
        import vl_convert  # noqa: F401  (the svg renderer needs it)
    except ImportError:
        return
    if alt_text.RENDERER not in alt.renderers.names():
        alt.renderers.register(alt_text.RENDERER, alt_text.svg_bundle)
    alt.renderers.enable(alt_text.RENDERER)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _axes(ax: plt.Axes | None) -> plt.Axes:
    return plt.subplots()[1] if ax is None else ax


def _two_flat(a, b, message: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as flat float arrays of one length, else ``message``."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise TwotowerError(message.format(a.size, b.size))
    return a, b


def sorted_curve(values, ax: plt.Axes | None = None, *, label: str | None = None,
                 color: str | None = None, log: bool = False,
                 zero_line: bool = True) -> plt.Axes:
    """Plot values sorted from largest to smallest against their rank.

    NaNs (e.g. tokens below the minimum count) are dropped, never drawn as 0.

    Args:
        values: 1-D array-like of numbers, e.g. the preference of every token.
        ax: Axes to draw on; a new figure is made when ``None``.
        label: Legend label of the curve.
        color: Line colour; the next colour of the cycle when ``None``.
        log: Log-log axes of ``|value|`` against rank (for influence curves).
        zero_line: Draw a thin horizontal line at 0 (ignored when ``log``).

    Returns:
        The axes drawn on.
    """
    ax = _axes(ax)
    finite = _finite(values)
    if log:
        finite = np.abs(finite)
    ordered = np.sort(finite)[::-1]
    rank = np.arange(1, ordered.size + 1)
    ax.plot(rank, ordered, label=label, color=color)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    elif zero_line:
        ax.axhline(0.0, color=SHARED_COLOR, linewidth=0.8, zorder=0)
    ax.set_xlabel("rank")
    if label:
        ax.legend()
    return ax


def hist(values, ax: plt.Axes | None = None, *, bins: int | Sequence[float] = 40,
         label: str | None = None, color: str | None = None, density: bool = False,
         zero_line: bool = True, alpha: float = 0.75) -> plt.Axes:
    """Histogram of the finite entries of ``values``.

    Args:
        values: 1-D array-like of numbers; NaN and inf are left out.
        ax: Axes to draw on; a new figure is made when ``None``.
        bins: Number of bins or their edges (pass the same edges to overlay two
            histograms).
        label: Legend label.
        color: Bar colour.
        density: Normalise to a density instead of counts.
        zero_line: Draw a vertical line at 0.
        alpha: Bar opacity, so that overlaid histograms stay readable.

    Returns:
        The axes drawn on.
    """
    ax = _axes(ax)
    ax.hist(_finite(values), bins=bins, label=label, color=color, density=density,
            alpha=alpha, edgecolor="white", linewidth=0.4)
    if zero_line:
        ax.axvline(0.0, color=SHARED_COLOR, linewidth=0.8, zorder=0)
    ax.set_ylabel("density" if density else "count")
    if label:
        ax.legend()
    return ax


def agreement(x, y, ax: plt.Axes | None = None, *, xlabel: str = "x",
              ylabel: str = "y", color: str | None = None, size: float = 8.0,
              diagonal: bool = True) -> plt.Axes:
    """Scatter two measurements of the same tokens and print their Pearson r.

    Used for split-half consistency and for cross-run stability: pairs where either
    value is NaN are left out; the title reports r and the number of pairs.

    Args:
        x: 1-D array-like, one value per token.
        y: 1-D array-like of the same length.
        ax: Axes to draw on; a new figure is made when ``None``.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        color: Marker colour.
        size: Marker area.
        diagonal: Draw the line y = x.

    Returns:
        The axes drawn on.
    """
    x, y = _two_flat(x, y, "agreement needs two arrays of one length, got {} and {}; "
                     "pass the same tokens in the same order")
    keep = np.isfinite(x) & np.isfinite(y)
    ax = _axes(ax)
    ax.scatter(x[keep], y[keep], s=size, color=color or TOWER_COLORS["A"], alpha=0.6,
               linewidths=0)
    if diagonal and keep.any():
        low = min(x[keep].min(), y[keep].min())
        high = max(x[keep].max(), y[keep].max())
        ax.plot([low, high], [low, high], color=SHARED_COLOR, linewidth=0.8, zorder=0)
    r = np.corrcoef(x[keep], y[keep])[0, 1] if keep.sum() > 2 else float("nan")
    ax.set_title(f"r = {r:.2f}  (n = {int(keep.sum())})", fontweight="normal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


# --- chapters 3 to 5: rank-frequency, position-by-position maps ----------------------

def zipf_plot(frequencies, ax: plt.Axes | None = None, *,
              fit: tuple[int, int] = (10, 1000), label: str | None = None,
              color: str | None = None) -> float:
    """Draw frequencies against their rank on log-log axes and fit Zipf's line.

    Introduced in chapter 3 (*Data and tokens*). The fit is least squares of
    ``log f`` on ``log rank`` over the ranks ``fit[0] .. fit[1]`` (1-based, inclusive,
    clipped to the ranks available), drawn dashed over those ranks.

    Args:
        frequencies: 1-D counts in any order; zeros and NaN are left out.
        ax: Axes to draw on; a new figure is made when ``None``.
        fit: First and last rank of the fit.
        label: Legend label; the fitted slope is appended to it.
        color: Line colour.

    Returns:
        The fitted slope ``d log f / d log rank`` (about -1 for Zipf's law).
    """
    ax = _axes(ax)
    values = _finite(frequencies)
    values = np.sort(values[values > 0])[::-1]
    rank = np.arange(1, values.size + 1)
    first, last = max(1, fit[0]), min(values.size, fit[1])
    if last - first < 2:
        raise TwotowerError(f"zipf_plot needs at least 3 ranks in fit={fit}, but only "
                            f"{values.size} positive frequencies; lower fit[0]")
    fitted = slice(first - 1, last)
    slope, intercept = np.polyfit(np.log(rank[fitted]), np.log(values[fitted]), 1)
    line = ax.plot(rank, values, color=color,
                   label=f"{label}: slope {slope:.2f}" if label else None)[0]
    ax.plot(rank[fitted], np.exp(intercept) * rank[fitted] ** slope, "--",
            color=line.get_color(), linewidth=1.0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("frequency")
    if label:
        ax.legend()
    return float(slope)


def position_map(matrix, ax: plt.Axes | None = None, *, log: bool = False,
                 labels: Sequence[str] | None = None, title: str | None = None,
                 xlabel: str = "input position j", ylabel: str = "output position i",
                 cmap: str = "viridis", colorbar: bool = True) -> plt.Axes:
    """Show a ``(T, T)`` position-by-position matrix as an image, row i against col j.

    Introduced in chapter 4 (*Three kinds of tower*) for the influence of each input
    position on each output position, and used in chapter 5 for attention patterns.
    With ``log`` the image is ``log10`` of the values and exact zeros stay blank, so a
    position that cannot influence another is visibly empty rather than dark.

    Args:
        matrix: 2-D array-like of non-negative numbers.
        ax: Axes to draw on; a new figure is made when ``None``.
        log: Draw ``log10`` of the values, zeros left blank.
        labels: Tick labels (tokens) for both axes; ``None`` keeps numeric ticks.
        title: Axes title.
        xlabel: Label of the columns.
        ylabel: Label of the rows.
        cmap: Matplotlib colour map.
        colorbar: Add a colour bar next to the image.

    Returns:
        The axes drawn on.
    """
    ax = _axes(ax)
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2:
        raise TwotowerError(f"position_map needs a 2-D matrix, got shape "
                            f"{values.shape}")
    if log:
        positive = values > 0
        values = np.where(positive, np.log10(np.where(positive, values, 1.0)), np.nan)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, interpolation="nearest")
    ax.grid(False)
    if labels is not None:
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        bar.set_label("log10" if log else "")
    return ax


# --- chapter 8: a sorted curve with its error band, SVG charts with tooltips ---------

def sorted_band(values, errors, ax: plt.Axes | None = None, *,
                label: str | None = None, color: str | None = None,
                band_label: str | None = "± 1 standard error") -> plt.Axes:
    """:func:`sorted_curve` with a shaded band of ``values ± errors`` around it.

    Entries whose value is NaN are dropped; a NaN error draws no band at that rank.

    Args:
        values: 1-D array-like, e.g. the preference of every token.
        errors: 1-D array-like of the same length, e.g. each preference's standard
            error.
        ax: Axes to draw on; a new figure is made when ``None``.
        label: Legend label of the curve.
        color: Colour of the curve and (lighter) of the band.
        band_label: Legend label of the band (``None``: no entry).

    Returns:
        The axes drawn on.
    """
    values, errors = _two_flat(values, errors, "sorted_band needs one error per value, "
                               "got {} values and {} errors")
    keep = np.isfinite(values)
    order = np.argsort(-values[keep], kind="stable")
    ordered, spread = values[keep][order], errors[keep][order]
    rank = np.arange(1, ordered.size + 1)
    ax = _axes(ax)
    color = color or TOWER_COLORS["A"]
    ax.fill_between(rank, ordered - spread, ordered + spread, color=color, alpha=0.25,
                    linewidth=0, label=band_label)
    ax.plot(rank, ordered, color=color, label=label)
    ax.axhline(0.0, color=SHARED_COLOR, linewidth=0.8, zorder=0)
    ax.set_xlabel("rank")
    if label or band_label:
        ax.legend()
    return ax


_SYMBOL = re.compile(r'<(path|rect|circle|line|text)\b([^>]*?role="graphics-symbol"'
                     r'[^>]*?)/>')
_LABEL = re.compile(r'aria-label="([^"]*)"')
_FIELD_BREAK = re.compile(r"(&#?\w+;)|; ")


def svg_with_tooltips(chart) -> str:
    """An Altair chart as SVG markup whose marks show their tooltip on hover.

    vl-convert writes a mark's fields only into its ``aria-label`` (read by screen
    readers, ignored by a mouse): every encoded field, or the mark's ``description``
    encoding when it has one. This copies each label into a ``<title>`` child, one
    ``"; "``-separated field per line, which every browser shows as a native tooltip,
    so a static page keeps working tooltips without any JavaScript. Displayed with
    :func:`chart_with_tooltips`; an ``<img>`` of the same SVG would lose them.

    Args:
        chart: an Altair chart; give it a ``description`` encoding to choose what its
            tooltips say.

    Returns:
        The SVG document as a string.
    """
    import vl_convert

    svg = vl_convert.vegalite_to_svg(chart.to_json())

    def add_title(match: re.Match) -> str:
        tag, attributes = match.group(1), match.group(2)
        label = _LABEL.search(attributes)
        if label is None:
            return match.group(0)
        # one field per line: split at "; " but not inside an entity such as &quot;
        title = _FIELD_BREAK.sub(lambda m: m.group(1) or "\n", label.group(1))
        return f"<{tag}{attributes}><title>{title}</title></{tag}>"

    return _SYMBOL.sub(add_title, svg)


def chart_with_tooltips(chart):
    """Display object of :func:`svg_with_tooltips`: inline SVG in the page.

    Returns:
        ``IPython.display.HTML`` (the last expression of a cell shows it).
    """
    from IPython.display import HTML

    label = html.escape(alt_text.chart_alt_text(chart.to_dict()), quote=True)
    return HTML(f'<div class="twotower-chart" role="img" aria-label="{label}">'
                f'{svg_with_tooltips(chart)}</div>')
