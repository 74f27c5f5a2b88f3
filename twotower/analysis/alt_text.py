"""What a figure shows, in words: the alt text of every figure of the book.

Introduced in chapter 1 (*Is language divisible?*), with the book's figure style
(:mod:`twotower.analysis.plotting`). A reader who cannot see a figure, or whose browser
did not load it, reads its alt text; without one, the HTML shows the image's file name.
The text comes from what the figure already says about itself: its title (a matplotlib
suptitle, each panel's title, an Altair chart's title), else its axis labels
("y against x"). :func:`twotower.book.setup.setup` attaches it to every figure a chapter
shows, and the book build puts it in the page.
"""

from __future__ import annotations

from typing import Any

#: Altair renderer that :func:`twotower.analysis.plotting.setup` enables.
RENDERER = "twotower-svg"


def _join(parts: list[str]) -> str:
    return "; ".join(dict.fromkeys(p.strip() for p in parts if p and p.strip()))


def figure_alt_text(figure) -> str:
    """Alt text of a matplotlib figure: its suptitle and the titles of its panels, or
    for a panel without a title, "<y label> against <x label>".

    Returns:
        One line; ``"figure"`` when the figure says nothing about itself.
    """
    suptitle = figure.get_suptitle() if hasattr(figure, "get_suptitle") else ""
    panels = []
    for ax in figure.get_axes():
        title = _join([ax.get_title(loc) for loc in ("left", "center", "right")])
        if not title and (ax.get_xlabel() or ax.get_ylabel()):
            title = f"{ax.get_ylabel() or 'values'} against {ax.get_xlabel() or 'x'}"
        panels.append(title)
    text = _join([suptitle, *panels])
    return " ".join(text.split()) or "figure"


def _title(node: Any) -> str:
    if isinstance(node, dict):
        node = node.get("text", "")
    if isinstance(node, list):
        node = " ".join(map(str, node))
    return str(node or "")


def _axis_titles(spec: dict) -> str:
    encoding = spec.get("encoding", {})
    titles = {}
    for channel in ("x", "y"):
        field = encoding.get(channel, {})
        titles[channel] = _title(field.get("title")) or str(field.get("field", ""))
    if titles["x"] or titles["y"]:
        return f"{titles['y'] or 'values'} against {titles['x'] or 'x'}"
    return ""


def chart_alt_text(spec: dict) -> str:
    """Alt text of an Altair chart from its Vega-Lite ``spec``: its title, the titles
    of its layers or panels, else its axes ("y against x").

    Returns:
        One line; ``"chart"`` when the chart says nothing about itself.
    """
    parts = [_title(spec.get("title")), _title(spec.get("description"))]
    children = [c for key in ("layer", "hconcat", "vconcat", "concat")
                for c in spec.get(key, [])]
    if "spec" in spec:  # a faceted or repeated chart
        children.append(spec["spec"])
    parts += [_title(child.get("title")) for child in children]
    text = _join(parts)
    if not text:
        text = _join([_axis_titles(s) for s in [spec, *children]])
    return " ".join(text.split()) or "chart"


def svg_bundle(spec: dict, **_options) -> tuple[dict, dict]:
    """Altair renderer: the chart as static SVG (vl-convert), with its alt text.

    Returns:
        ``(data, metadata)``, as IPython's rich display takes them:
        ``{"image/svg+xml": svg}`` and ``{"image/svg+xml": {"alt": text}}``.
    """
    import vl_convert

    svg = vl_convert.vegalite_to_svg(spec)
    return ({"image/svg+xml": svg},
            {"image/svg+xml": {"alt": chart_alt_text(spec)}})
