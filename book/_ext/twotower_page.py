"""Sphinx extension of the twotower book: pages that load without console errors.

Two faults of the theme stack show in every page's browser console, and the browser
test (``tests/test_book_html.py``) fails on any console error:

- sphinx-thebe adds its inline configuration script each time Sphinx reads the
  sources; a page that declares ``const THEBE_JS_URL`` twice throws a SyntaxError.
  Each page keeps one copy of each script (:func:`one_copy_of_each_script`).
- pydata-sphinx-theme writes ``default_mode`` into the page, and Jupyter Book leaves it
  empty ("Got invalid theme mode"). The book opens in the light mode
  (:data:`DEFAULT_MODE`) unless the reader chose another with the theme's switch.
"""

from __future__ import annotations

DEFAULT_MODE = "light"


def one_copy_of_each_script(app, pagename, templatename, context, doctree) -> None:
    """Drop repeated entries of the page's ``script_files`` (same file or body, same
    attributes), keeping the first."""
    kept, seen = [], set()
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        key = (str(getattr(script, "filename", script)),
               tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def default_mode(app, config) -> None:
    """Give the theme a light default mode when the configuration names none."""
    options = dict(config.html_theme_options or {})
    if not options.get("default_mode"):
        options["default_mode"] = DEFAULT_MODE
        config.html_theme_options = options


def setup(app):
    app.connect("config-inited", default_mode)
    app.connect("html-page-context", one_copy_of_each_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
