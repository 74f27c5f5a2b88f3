"""The built book, as a reader sees it: every chapter opened in headless Chromium.

Needs ``_build/html`` (``python -m twotower.book build``) and Chromium
(``apt-get install -y chromium``). Without either the tests are skipped locally and FAIL
when the environment variable ``CI`` is set, because CI builds the book first.
Set ``BOOK_HTML`` to test another build folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from twotower.book import build as book
from twotower.book import notebooks, vendor

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = book.chapters(ROOT)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                  "--virtual-time-budget=5000"]


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the built book must be tested)")
    pytest.skip(reason)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    _unavailable("Chromium is not installed (apt-get install -y chromium)")


def _run_chromium(*arguments: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        command = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _page(chapter: Path) -> Path:
    if not (HTML / "index.html").is_file():
        _unavailable(f"no built book in {HTML} (python -m twotower.book build)")
    page = HTML / chapter.relative_to(ROOT).with_suffix(".html")
    assert page.is_file(), f"{page} was not built (is the chapter in _toc.yml?)"
    return page


class _Dom(HTMLParser):
    """What the tests need from a rendered page."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self._in_title = "", False
        self.links: list[str] = []
        self.figures = 0  # img or svg inside a cell's output area
        self.errors: list[str] = []  # output elements that show an error
        self.math = 0  # MathJax-rendered formulas
        self._output_depth: list[int] = []  # depths at which output areas opened
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self._depth += 1
        if tag == "title":
            self._in_title = True
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag == "mjx-container":
            self.math += 1
        if "cell_output" in classes:
            self._output_depth.append(self._depth)
        if self._output_depth:
            if tag in ("img", "svg"):
                self.figures += 1
            if {"traceback", "error"} & set(classes) or "output_error" in classes:
                self.errors.append(" ".join(classes))
        if tag in ("img", "br", "meta", "link", "input", "hr", "source"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if self._output_depth and self._depth == self._output_depth[-1]:
            self._output_depth.pop()
        self._depth -= 1

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._output_depth and "Traceback (most recent call last)" in data:
            self.errors.append("Traceback text")


def _chapter_title(chapter: Path) -> str:
    first = nbformat.read(chapter, as_version=4).cells[0].source
    return first.splitlines()[0].lstrip("# ").strip()


@pytest.fixture(scope="module", params=CHAPTERS, ids=lambda p: p.stem)
def rendered(request):
    chapter = request.param
    page = _page(chapter)
    done = _run_chromium("--dump-dom", page.as_uri())
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    return chapter, page, dom


def test_chapter_page_has_the_chapter_title(rendered):
    chapter, _, dom = rendered
    assert _chapter_title(chapter) in dom.title


def test_chapter_page_shows_at_least_one_figure(rendered):
    _, _, dom = rendered
    assert dom.figures >= 1, "no img or svg in any output: did the figure cells run?"


def test_chapter_page_has_no_error_output(rendered):
    _, _, dom = rendered
    assert dom.errors == []


def test_chapter_page_links_to_colab(rendered):
    chapter, _, dom = rendered
    docname = chapter.relative_to(ROOT).with_suffix("").as_posix()
    assert notebooks.colab_url(book.read_config(ROOT), docname) in dom.links


def test_chapter_math_is_typeset_by_the_local_mathjax(rendered):
    _, page, dom = rendered
    if 'class="math' in page.read_text(encoding="utf-8"):
        assert dom.math > 0, "MathJax did not typeset: is vendor/mathjax in the build?"


def test_no_page_loads_mathjax_or_widgets_from_a_cdn():
    if not (HTML / "index.html").is_file():
        _unavailable(f"no built book in {HTML} (python -m twotower.book build)")
    assert vendor.offline_problems(HTML) == []


def test_screenshot_of_the_first_chapter():
    page = _page(CHAPTERS[0])
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{CHAPTERS[0].stem}.png"
    target.unlink(missing_ok=True)
    done = _run_chromium("--window-size=1280,2400", f"--screenshot={target}",
                         page.as_uri())
    assert target.is_file() and target.stat().st_size > 20_000, done.stderr[-2000:]
