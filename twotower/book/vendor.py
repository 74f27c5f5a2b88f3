"""The HTML's own copies of MathJax, the widget embedder and RequireJS, so that the
book never asks a CDN for them, and the script that lets the embedder find its fonts
and typeset with MathJax 3 (:data:`EMBED_SETUP_JS`).

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
``python -m twotower.book vendor`` (run by ``make setup``) fetches them, and
:mod:`twotower.book.build` checks the built pages with :func:`offline_problems`.
"""

from __future__ import annotations

import base64
import re
import shutil
import tarfile
from pathlib import Path

from twotower.data import sources

# npm packages served from the build: name -> (exact version, the registry's integrity
# hash of its tarball), so every build gets the same bytes, with no npm needed
VENDOR = {
    "mathjax": ("3.2.2", "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x7"
                         "7k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="),
    "@jupyter-widgets/html-manager": (
        "1.0.15", "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTo"
                  "pvFi//SABeNz1yp47bCrJ3CQA=="),
    "requirejs": ("2.3.8", "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce"
                           "5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw=="),
}
NPM_REGISTRY = "https://registry.npmjs.org"
# what of each npm tarball is kept, and where it goes under <html>/vendor/
VENDOR_LAYOUT = {
    "mathjax": ("package/es5/", "mathjax/es5/"),
    "jupyter-widgets-html-manager": ("package/dist/", "html-manager/dist/"),
    "requirejs": ("package/require.js", "requirejs/require.js"),
}
CDN_PATTERN = re.compile(
    r"""(?:src|href)\s*=\s*["'](?:https?:)?//[^"']*(?:mathjax|require(?:\.min)?\.js|"""
    r"""jupyter-widgets|html-manager|embed-amd)[^"']*["']|data-jupyter-widgets-cdn""",
    re.IGNORECASE)
# files of those folders that no page loads (other MathJax bundles, source maps)
VENDOR_SKIP = re.compile(r"^mathjax/es5/(?!tex-mml-chtml\.js$)[^/]+\.js$|\.map$|"
                         r"^html-manager/dist/(embed|libembed-amd)\.js$")

# The book's own script, loaded between RequireJS and the embedder on pages with widgets
# (_config.yml: nb_ipywidgets_js). Two things the embedder assumes of a page:
# - its fonts are found next to the module "@jupyter-widgets/html-manager/dist/...",
#   and a second copy of its Font Awesome stylesheet looks for them under
#   "@jupyter-widgets/": RequireJS resolves both against the page's folder (a 404 per
#   font) unless told that both live in dist/;
# - MathJax 2's MathJax.Hub.Queue typesets a widget's label; the book loads MathJax 3,
#   so a Hub that forwards to MathJax 3's typesetPromise is added to whichever MathJax
#   object the page holds (not enumerable: MathJax 3 never sees it as an option).
EMBED_SETUP = "html-manager/embed-setup.js"
EMBED_SETUP_JS = """\
(function () {
  var here = document.currentScript.src;
  var dist = here.slice(0, here.lastIndexOf("/")) + "/dist";
  require.config({paths: {"@jupyter-widgets/html-manager/dist": dist,
                          "@jupyter-widgets": dist}});
  var hub = {Queue: function (job) {
    var m = window.MathJax;
    if (m && m.typesetPromise && Array.isArray(job) && job[2]) {
      m.typesetPromise([job[2]]).catch(function () {});
    }
  }};
  function withHub(m) {
    if (m && typeof m === "object" && !("Hub" in m)) {
      Object.defineProperty(m, "Hub", {value: hub, configurable: true});
    }
    return m;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {configurable: true, enumerable: true,
    get: function () { return current; },
    set: function (m) { current = withHub(m); }});
})();
"""


def vendor_url(name: str, version: str) -> str:
    """The npm registry's address of a package's tarball."""
    return f"{NPM_REGISTRY}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def fetch_vendor(out: Path) -> Path:
    """MathJax, the widget embedder and RequireJS, unpacked under ``out/vendor``.

    The tarballs come straight from the npm registry over HTTPS (no npm needed),
    checked against the registry's integrity hashes in :data:`VENDOR` and kept in
    the download cache (:func:`twotower.data.sources.default_cache_dir`). ``make setup``
    runs this (``python -m twotower.book vendor``): a build never starts without them.

    Raises:
        TwotowerError: a tarball that cannot be downloaded or does not match its hash.
    """
    extra = out / "vendor" / "extra"
    target = extra / "vendor"
    if not ((target / "mathjax/es5/tex-mml-chtml.js").is_file() and
            (target / "html-manager/dist/embed-amd.js").is_file() and
            (target / "requirejs/require.js").is_file()):
        _unpack_vendor(target)
    (target / EMBED_SETUP).write_text(EMBED_SETUP_JS, encoding="utf-8")
    return extra


def _unpack_vendor(target: Path) -> None:
    """Download the :data:`VENDOR` tarballs (checked, cached) and unpack what
    :data:`VENDOR_LAYOUT` keeps of each into ``target``, replacing what was there."""
    tarballs = {}
    for name, (version, integrity) in VENDOR.items():
        algorithm, digest = integrity.split("-", 1)
        tarballs[name] = sources.download(vendor_url(name, version),
                                  f"{algorithm}:{base64.b64decode(digest).hex()}",
                                  sources.default_cache_dir() / "downloads" / "npm",
                                  fix="the HTML needs it (or build with --no-html)")
    shutil.rmtree(target, ignore_errors=True)
    for name, tarball in tarballs.items():
        inside, destination = VENDOR_LAYOUT[name.replace("@", "").replace("/", "-")]
        with tarfile.open(tarball) as archive:
            for member in archive.getmembers():
                if not member.isfile() or not member.name.startswith(inside) or \
                        ".." in Path(member.name).parts:
                    continue
                relative = destination + member.name[len(inside):]
                if VENDOR_SKIP.search(relative.rstrip("/")):
                    continue
                path = target / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.extractfile(member).read())


def offline_problems(html: Path) -> list[str]:
    """Pages that would load MathJax, RequireJS or the widget embedder from a CDN."""
    problems = []
    for page in sorted(html.rglob("*.html")):
        for match in CDN_PATTERN.findall(page.read_text(encoding="utf-8",
                                                       errors="replace")):
            problems.append(f"{page.relative_to(html)}: {match}")
    return problems
