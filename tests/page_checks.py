"""What a reader would see go wrong on a page of the built book, measured in Chromium.

``open_browser()`` starts the system Chromium through the system chromedriver (Debian's
``chromium`` and ``chromium-driver``; Selenium never downloads a browser or a driver).
``serve(folder)`` serves a folder over http on localhost, so pages load as a reader's
would. ``page_problems(driver, base, page, folder)`` opens one page and returns one line
per problem, each naming the page and the element:

- a code block (``pre``) whose content is wider than its box (cut, or a scrollbar);
- a table whose right edge is past the article column's, unless it sits in a box that
  scrolls sideways on purpose (overflow-x auto or scroll) and that box fits the column
  (with ``whole_tables``, for pages whose every table must be seen whole, not even then);
- an image that did not load; an image whose alt text is empty or its own file name;
- an output image shown at less than ``MIN_IMAGE_SCALE`` of its natural width;
- an error in the browser console. ``CONSOLE_ALLOWED`` would list, each with why, any
  that the theme logs and no author can fix; none so far (each seen was the book's);
- an error output (``output_error``, ``traceback``, or a Python traceback's text);
- raw MyST in the page's text. Code blocks that an author wrote (input cells, literal
  blocks in prose) and inline code are left out, since a page may show MyST syntax on
  purpose; outputs are searched, since no output should show MyST source;
- a path of the build machine in the page's HTML source.

Each page is opened as a reader's first visit (no cache, no stored theme choice; only
the favicon is asked for once per browser). Before measuring, every ``details`` is
opened and every toggled block shown: a reader can open them, and what overflows there
overflows for the reader.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import re
import shutil
import tempfile
import threading
from pathlib import Path

MIN_IMAGE_SCALE = 0.85  # smaller, and a figure's fonts become hard to read
SLACK_PX = 1  # sub-pixel rounding
RAW_MYST = (":::{", "```{", "{term}", "{cite}", "{cite:p}", "{cite:t}", "{doc}",
            "{ref}", "{numref}", "{eq}", ":label:", ":class:")
BUILD_PREFIXES = ("/root/", "/home/", "/tmp/")
CONSOLE_ALLOWED: dict[str, str] = {
    # "text in the message": "why no page author can fix it",
}
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")

MEASURE = r"""
const [openAll, done] = arguments;  // openAll: open what a reader can open
const px = (v) => Math.round(v);
const snippet = (text) => text.replace(/\s+/g, " ").trim().slice(0, 50);
const longest = (text) => text.split("\n").reduce(
  (a, b) => b.length > a.length ? b : a, "");
(async () => {
  if (document.readyState !== "complete") {  // driver.get may return before the load
    await new Promise((ok) => window.addEventListener("load", ok, {once: true})); }
  if (openAll) {
    document.querySelectorAll("details").forEach((d) => { d.open = true; });
    document.querySelectorAll(".toggle-hidden").forEach(
      (e) => e.classList.remove("toggle-hidden")); }
  const images = [...document.images];
  images.forEach((i) => { i.loading = "eager"; });
  await Promise.all(images.map((i) => i.complete ? null : new Promise((ok) => {
    i.addEventListener("load", ok); i.addEventListener("error", ok);
    setTimeout(ok, 10000); })));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise; }
  await new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok)));
  const article = document.querySelector("article.bd-article")
    || document.querySelector("main") || document.body;
  const a = article.getBoundingClientRect(), style = getComputedStyle(article);
  const left = a.left + parseFloat(style.paddingLeft);
  const right = a.right - parseFloat(style.paddingRight);
  const scroller = (e) => {
    for (let p = e.parentElement; p && p !== article; p = p.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(p).overflowX)) {
        return {right: px(p.getBoundingClientRect().right)}; } }
    return null; };
  const author = (e) => !e.closest(".cell_output");
  const text = [];
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const p = n.parentElement;
    if (p.closest("script, style, noscript, textarea, code, .MathJax, mjx-container")
        || (p.closest("pre") && author(p))) { continue; }
    text.push(n.nodeValue); }
  return {
    viewport: window.innerWidth,
    column: {left: px(left), right: px(right), width: px(right - left)},
    tables: [...document.querySelectorAll("table")].map((t) => {
      const r = t.getBoundingClientRect();
      return {width: px(r.width), right: px(r.right), scroller: scroller(t),
              text: snippet(t.innerText)}; }),
    blocks: [...document.querySelectorAll("pre")].map((p) => ({
      content: p.scrollWidth, box: p.clientWidth, output: !author(p),
      line: snippet(longest(p.innerText)), chars: longest(p.innerText).length})),
    images: images.map((i) => ({
      src: i.getAttribute("src") || "", alt: i.getAttribute("alt"),
      broken: i.complete && i.naturalWidth === 0, natural: i.naturalWidth,
      shown: px(i.getBoundingClientRect().width), output: !author(i)})),
    errors: [...document.querySelectorAll(".output_error, .traceback, .cell_output")]
      .filter((e) => !e.matches(".cell_output") || (!e.querySelector(".traceback")
        && e.innerText.includes("Traceback (most recent call last)")))
      .map((e) => ({classes: e.className, text: snippet(e.innerText)})),
    text: text.join("\n"),
  };
})().then(done, (error) => done({failed: String(error)}));
"""


def missing() -> str | None:
    """Why the browser checks cannot run here, or None when they can."""
    try:
        import selenium  # noqa: F401 (only whether it imports)
    except ImportError:
        return "Selenium is not installed (pip install -e '.[test]')"
    if tools() is None:
        return ("Chromium or chromedriver is not installed (python3 tasks.py browser, "
                "or apt-get install -y chromium chromium-driver)")
    return None


def tools() -> tuple[str, str] | None:
    """The system Chromium and chromedriver, or None when either is missing."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))),
                   None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def open_browser(width: int = 1280, height: int = 900):
    """One headless Chromium, driven by Selenium, that logs the console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = tools()
    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}",
                     f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options,
                                  service=Service(executable_path=driver_path))
        try:
            driver.set_script_timeout(60)
            # every page is a reader's first: nothing cached that an earlier page loaded
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
            yield driver
        finally:
            driver.quit()


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on localhost over http; yields the base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


def measure(driver, url: str) -> tuple[dict, list[dict]]:
    """Open ``url``; its measurements (see MEASURE) and its console messages."""
    driver.get_log("browser")  # drop what an earlier page logged
    origin = "/".join(url.split("/")[:3])  # nor kept, as a theme keeps its dark mode
    driver.execute_cdp_cmd("Storage.clearDataForOrigin",
                           {"origin": origin, "storageTypes": "all"})
    driver.get(url)
    measured = driver.execute_async_script(MEASURE, True)
    assert "failed" not in measured, f"{url}: measuring failed: {measured['failed']}"
    return measured, driver.get_log("browser")


def page_problems(driver, base: str, page: str, folder: Path,
                  whole_tables: bool = False) -> list[str]:
    """One line per problem on ``page`` (a path relative to ``folder``); with
    ``whole_tables``, a table that scrolls inside its box is one too."""
    measured, console = measure(driver, base + page)
    html = (folder / page).read_text(encoding="utf-8", errors="replace")
    build_paths = [str(Path(__file__).resolve().parents[1]), str(folder.resolve())]
    found = problems(measured, console, html, build_paths, whole_tables)
    return [f"{page}: {line}" for line in found]


def problems(measured: dict, console: list[dict], html: str,
             build_paths: list[str], whole_tables: bool = False) -> list[str]:
    """Turn one page's measurements into problem lines (without the page's name)."""
    out = []
    column = measured["column"]
    for number, table in enumerate(measured["tables"], 1):
        box = table["scroller"]
        past = table["right"] - column["right"]
        if past <= SLACK_PX:
            continue
        if box and box["right"] <= column["right"] + SLACK_PX:
            if whole_tables:
                out.append(f"table {number} is {table['width']} px wide in a "
                           f"{column['width']} px column and scrolls inside its box; "
                           f"this page must show it whole: {table['text']!r}")
            continue
        scrolls = " (its scrolling box too)" if box else ""
        out.append(f"table {number} is {table['width']} px wide in a {column['width']} "
                   f"px column, {past} px past its right edge{scrolls}: "
                   f"{table['text']!r}")
    for number, block in enumerate(measured["blocks"], 1):
        if block["content"] > block["box"] + SLACK_PX:
            kind = "output" if block["output"] else "code"
            out.append(f"{kind} block {number} needs {block['content']} px in a "
                       f"{block['box']} px box (longest line {block['chars']} "
                       f"characters: {block['line']!r})")
    for number, image in enumerate(measured["images"], 1):
        out += [f"image {number} {line} ({image['src']})" for line in _image(image)]
    for entry in console:
        if entry["level"] == "SEVERE" and not any(
                allowed in entry["message"] for allowed in CONSOLE_ALLOWED):
            out.append(f"console error: {entry['message'][:200]}")
    out += [f"error output ({error['classes']}): {error['text']!r}"
            for error in measured["errors"]]
    for raw in RAW_MYST:
        for found in re.finditer(re.escape(raw), measured["text"]):
            around = _around(measured["text"], found)
            out.append(f"raw MyST {raw!r} in the text: {around}")
    out += _paths(html, build_paths)
    return out


def _image(image: dict) -> list[str]:
    alt, src = (image["alt"] or "").strip(), image["src"]
    name = src.rsplit("/", 1)[-1]
    lines = ["did not load"] if image["broken"] else []
    if not alt:
        lines.append("has no alt text")
    elif alt in (src, name) or alt.rsplit("/", 1)[-1] == name:
        lines.append(f"has its file name as alt text ({alt!r})")
    if image["output"] and image["natural"] and not image["broken"]:
        scale = image["shown"] / image["natural"]
        if scale < MIN_IMAGE_SCALE:
            lines.append(f"is shown at {scale:.0%} of its width ({image['shown']} of "
                         f"{image['natural']} px; at least {MIN_IMAGE_SCALE:.0%})")
    return lines


def _paths(html: str, build_paths: list[str]) -> list[str]:
    pattern = "|".join(re.escape(p) for p in (*build_paths, *BUILD_PREFIXES))
    found: dict[str, int] = {}
    # not inside a longer path or a URL: "https://example.org/home/" is no build path
    for match in re.finditer(f"(?<![\\w.~-])(?:{pattern})[^\\s\"'<>&)]*", html):
        found[match.group()] = found.get(match.group(), 0) + 1
    return [f"build-machine path {path!r} in the HTML "
            f"({'once' if count == 1 else f'{count} times'})"
            for path, count in found.items()]


def _around(text: str, found: re.Match) -> str:
    start, end = max(found.start() - 30, 0), found.end() + 30
    return repr(" ".join(text[start:end].split()))


def screenshot(driver, url: str, target: Path, width: int) -> Path:
    """A full-height screenshot of ``url`` at ``width`` px (the window as tall as the
    page), written to ``target``."""
    driver.set_window_size(width, 900)
    driver.get(url)
    driver.execute_async_script(MEASURE, False)  # loaded, typeset, nothing opened
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, height)
    target.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(target))
    return target
