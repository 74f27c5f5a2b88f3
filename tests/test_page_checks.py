"""The browser checks of the built book catch each fault planted in a page, and pass a
page that has none (tests/page_checks.py). No built book is needed, only Chromium.

Without Chromium, chromedriver or Selenium the tests are skipped locally and FAIL when
``CI`` is set, because CI installs them (``python3 tasks.py browser``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import page_checks

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>planted</title>
<link rel="icon" href="data:,">
</head><body><article class="bd-article" style="width: 600px; padding: 0 20px">
<p>A paragraph.</p>{}</article></body></html>"""
WIDE_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="50"></svg>'
TABLE = '<table style="width: 900px"><tr><td>a wide table</td></tr></table>'

FAULTS = {  # name: (HTML planted in the article, what the problem line says)
    "code block wider than its box": (
        f"<pre>{'x' * 300}</pre>", "code block 1 needs"),
    "table wider than the column": (TABLE, "table 1 is 900 px wide in a 600 px column"),
    "table in a scrolling box that is itself too wide": (
        f'<div style="overflow-x: auto; width: 800px">{TABLE}</div>', "table 1 is"),
    "image that did not load": (
        '<img src="missing.png" alt="a chart">', "image 1 did not load"),
    "image without alt text": ('<img src="small.svg">', "image 1 has no alt text"),
    "image whose alt text is its path": (
        '<img src="small.svg" alt="../small.svg">', "has its file name as alt text"),
    "output image shrunk": (
        '<div class="cell_output"><img src="wide.svg" alt="a chart" '
        'style="width: 300px"></div>', "image 1 is shown at 30% of its width"),
    "console error": (
        '<script>console.error("planted failure")</script>', "console error"),
    "error output": ('<div class="cell_output"><div class="output traceback">'
                     "<pre>ValueError: planted</pre></div></div>", "error output"),
    "traceback text in an output": (
        '<div class="cell_output"><pre>Traceback (most recent call last):\n'
        '  File "x.py"</pre></div>', "error output"),
    "raw MyST directive": ("<p>:::{note}</p>", "raw MyST ':::{'"),
    "raw MyST role": ("<p>a {term}`tower` here</p>", "raw MyST '{term}'"),
    "raw MyST in an output": (
        '<div class="cell_output"><pre>```{figure} x.png</pre></div>',
        "raw MyST '```{'"),
    "tmp path": ("<p>saved in /tmp/tt/cache/run</p>",
                 "build-machine path '/tmp/tt/cache/run'"),
    "repository path": (f"<p>{ROOT}/book/x.ipynb</p>",
                        f"build-machine path '{ROOT}/book/x.ipynb'"),
}
CLEAN = (  # what a good page does: scroll a wide table on purpose, show MyST as code
    f'<div style="overflow-x: auto">{TABLE}</div><pre>print("fits")</pre>'
    '<pre>:::{note}\nMyST shown on purpose\n:::</pre><p>the <code>{term}</code> role, '
    'at <a href="https://example.org/home/">example.org/home/</a></p>'
    '<div class="cell_output"><img src="small.svg" alt="a small chart"></div>')


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser checks must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    reason = page_checks.missing()
    if reason:
        _unavailable(reason)
    with page_checks.open_browser() as driver:
        yield driver


@pytest.fixture
def planted(tmp_path, browser):
    """Problems of a page made of the given HTML, served from a fresh folder."""
    (tmp_path / "small.svg").write_text(WIDE_SVG.format(100))
    (tmp_path / "wide.svg").write_text(WIDE_SVG.format(1000))

    def problems(body: str, whole_tables: bool = False) -> list[str]:
        (tmp_path / "page.html").write_text(PAGE.format(body), encoding="utf-8")
        with page_checks.serve(tmp_path) as base:
            return page_checks.page_problems(browser, base, "page.html", tmp_path,
                                             whole_tables)
    return problems


@pytest.mark.parametrize("fault", FAULTS, ids=list(FAULTS))
def test_a_planted_fault_is_reported_in_one_line_naming_page_and_element(
        planted, fault):
    body, expected = FAULTS[fault]
    found = planted(body)
    assert any(line.startswith("page.html: ") and expected in line for line in found), \
        found


def test_a_page_without_faults_reports_nothing(planted):
    assert planted(CLEAN) == []


def test_a_table_that_scrolls_is_reported_where_every_table_must_be_whole(planted):
    scrolling = f'<div style="overflow-x: auto">{TABLE}</div>'
    assert planted(scrolling) == []
    found = planted(scrolling, whole_tables=True)
    assert len(found) == 1 and "scrolls inside its box" in found[0], found


def test_an_overflow_planted_in_a_built_chapter_is_reported(tmp_path, browser):
    """The same checks on a real page, with the theme's CSS: a copy of a built chapter
    with a long code line and a wide table added at the end of its article."""
    chapters = sorted((HTML / "book").glob("[0-9][0-9]_*.html"))
    if not chapters:
        _unavailable(f"no built chapter in {HTML}/book (python -m twotower.book build)")
    page = chapters[0].relative_to(HTML).as_posix()
    for entry in HTML.iterdir():  # the build, linked; only the planted page is new
        if entry.name != "book":
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "book").mkdir()
    for entry in (HTML / "book").iterdir():
        (tmp_path / "book" / entry.name).symlink_to(entry)
    built = (HTML / page).read_text(encoding="utf-8")
    plant = f"<pre>{'planted_overflow ' * 30}</pre>{TABLE.replace('900', '2000')}"
    assert built.count("</article>") == 1, "the chapter page has no single <article>"
    (tmp_path / page).unlink()
    (tmp_path / page).write_text(built, encoding="utf-8")
    with page_checks.serve(tmp_path) as base:  # a first visit also logs the favicon
        unplanted = page_checks.page_problems(browser, base, page, tmp_path)
        (tmp_path / page).write_text(built.replace("</article>", plant + "</article>"),
                                     encoding="utf-8")
        planted = page_checks.page_problems(browser, base, page, tmp_path)
    new = [line for line in planted if line not in unplanted]
    assert len(new) == 2 and "is 2000 px wide" in new[0], new
    assert "code block" in new[1] and "planted_overflow" in new[1], new
