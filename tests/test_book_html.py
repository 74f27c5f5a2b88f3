"""The built book, as a reader meets it: every page opened in headless Chromium.

Each page is served over http from ``_build/html`` and opened by Selenium in the system
Chromium, 1280 px wide; ``page_checks`` measures what a reader would see go wrong (an
overflowing table or code block, a missing image, a console error, an error output, raw
MyST, a path of the build machine). Chapters must also show their title, a figure, the
Colab link and typeset math. ``test_screenshots`` writes ``_build/screenshots/``.

Needs the built book (``python -m twotower.book build``), Chromium, chromedriver and
Selenium (``python3 tasks.py browser``; ``pip install -e '.[test]'``). Without them the
tests are skipped locally and FAIL when ``CI`` is set, because CI builds the book first.
Set ``BOOK_HTML`` to test another build folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

import page_checks
from twotower.book import build as book
from twotower.book import notebooks, vendor

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = [f"{entry}.html" for entry in book.toc_entries(ROOT)]
CHAPTERS = book.chapters(ROOT)
NOT_CHECKED = {  # pages that Sphinx generates, with no author's content in them
    "genindex.html": "the general index: a generated list of links",
    "search.html": "the search page: empty until a query fills it by JavaScript",
    "py-modindex.html": "the module index: a generated list of links",
}
SCREENSHOT_WIDTHS = {"08": (1280,), "09": (1280,), "11": (1280, 390)}  # 390: a phone
# chapters whose tables a reader compares side by side: at 1280 px each is shown whole,
# never in a box that scrolls sideways (elsewhere, a long table may scroll in its box)
WHOLE_TABLES = ("08", "09", "11")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the built book must be tested)")
    pytest.skip(reason)


def _built() -> None:
    if not (HTML / "index.html").is_file():
        _unavailable(f"no built book in {HTML} (python -m twotower.book build)")


class Reader:
    """Opens each page once, in one browser, and keeps what the tests ask of it."""

    def __init__(self, driver, base: str) -> None:
        self.driver, self.base, self._seen = driver, base, {}

    def visit(self, page: str) -> dict:
        if page not in self._seen:
            assert (HTML / page).is_file(), f"{page} was not built (is it in _toc.yml?)"
            whole = Path(page).name[:2] in WHOLE_TABLES
            problems = page_checks.page_problems(self.driver, self.base, page, HTML,
                                                 whole_tables=whole)
            find = self.driver.find_elements
            self._seen[page] = {
                "problems": problems, "title": self.driver.title,
                "links": [a.get_attribute("href") for a in find("css selector", "a")],
                "figures": len(find("css selector", ".cell_output img, "
                                    ".cell_output svg")),
                "math": len(find("css selector", "mjx-container")),
            }
        return self._seen[page]


@pytest.fixture(scope="module")
def reader():
    _built()
    reason = page_checks.missing()
    if reason:
        _unavailable(reason)
    with page_checks.serve(HTML) as base, page_checks.open_browser() as driver:
        yield Reader(driver, base)


@pytest.mark.parametrize("page", PAGES)
def test_page_shows_no_problem_to_a_reader(reader, page):
    problems = reader.visit(page)["problems"]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def test_every_built_page_is_checked_or_left_out_with_a_reason():
    _built()
    built = {path.relative_to(HTML).as_posix() for path in HTML.rglob("*.html")
             if not path.relative_to(HTML).parts[0].startswith("_")}
    unchecked = built - set(PAGES) - set(NOT_CHECKED) - {"index.html"}  # a redirect
    assert not unchecked, f"add to _toc.yml or NOT_CHECKED: {sorted(unchecked)}"


def _page(chapter: Path) -> str:
    return chapter.relative_to(ROOT).with_suffix(".html").as_posix()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_chapter_page_has_its_title_a_figure_the_colab_link_and_math(reader, chapter):
    seen = reader.visit(_page(chapter))
    title = nbformat.read(chapter, as_version=4).cells[0].source.splitlines()[0]
    assert title.lstrip("# ").strip() in seen["title"]
    assert seen["figures"] >= 1, "no img or svg in an output: did the figure cells run?"
    docname = chapter.relative_to(ROOT).with_suffix("").as_posix()
    assert notebooks.colab_url(book.read_config(ROOT), docname) in seen["links"]
    if 'class="math' in (HTML / _page(chapter)).read_text(encoding="utf-8"):
        assert seen["math"] > 0, "MathJax typeset nothing: is vendor/mathjax built?"


def test_no_page_loads_mathjax_or_widgets_from_a_cdn():
    _built()
    assert vendor.offline_problems(HTML) == []


def test_the_scorecard_shows_every_table_whole_on_a_phone(reader):
    """Chapter 11 at 390 px: its tables shrink to the screen (twotower.css's phone
    rules), none scrolls sideways. Code may scroll there: a 76-character line cannot
    fit a phone at a legible size."""
    chapter = next(c for c in CHAPTERS if c.stem.startswith("11"))
    reader.driver.set_window_size(390, 900)
    try:
        found = page_checks.page_problems(reader.driver, reader.base, _page(chapter),
                                          HTML, whole_tables=True)
    finally:
        reader.driver.set_window_size(1280, 900)
    tables = [line for line in found if ": table " in line]
    assert not tables, "\n".join(tables)


def test_screenshots(reader):
    """Full-height screenshots of chapters 8, 9 and 11 at 1280 px and 11 on a phone;
    in ``_build/screenshots/`` (not committed), to look at after a layout change."""
    shots = [(chapter, width) for chapter in CHAPTERS
             for width in SCREENSHOT_WIDTHS.get(chapter.stem[:2], ())]
    assert len(shots) == 4, f"chapters {list(SCREENSHOT_WIDTHS)} are not all in the toc"
    try:
        for chapter, width in shots:
            target = SCREENSHOTS / f"{chapter.stem}-{width}.png"
            target.unlink(missing_ok=True)
            page_checks.screenshot(reader.driver, reader.base + _page(chapter), target,
                                   width)
            assert target.stat().st_size > 20_000, f"{target} is blank"
    finally:
        reader.driver.set_window_size(1280, 900)
