"""Sphinx extension of the twotower book: pages that load without console errors.

Two faults of the theme stack show in every page's browser console, and the browser
test (``tests/test_book_html.py``) fails on any console error:

- sphinx-thebe adds its inline configuration script each time Sphinx reads the
  sources; a page that declares ``const THEBE_JS_URL`` twice throws a SyntaxError.
  Each page keeps one copy of each script (:func:`one_copy_of_each_script`).
- pydata-sphinx-theme writes its template variable ``default_mode`` into the page,
  and Jupyter Book leaves it empty ("Got invalid theme mode"). The book opens in the
  light mode (:data:`DEFAULT_MODE`) unless the reader chose another with the theme's
  switch (:func:`default_mode`).
"""

from __future__ import annotations

DEFAULT_MODE = "light"


def one_copy_of_each_script(app, pagename, templatename, context, doctree) -> None:
    """Drop repeated entries of the page's ``script_files`` (same file or body, same
    attributes), keeping the first. An inline script added twice comes back once with
    the filename ``None`` and once with ``""`` (Sphinx re-adds registered scripts as
    ``filename or ''``), so those two count as the same."""
    kept, seen = [], set()
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        filename = getattr(script, "filename", script) or ""  # inline: None or ""
        key = (str(filename),
               tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def default_mode(app, pagename, templatename, context, doctree) -> None:
    """Give the page's template a light ``default_mode`` when none is set (it is a
    template variable of pydata-sphinx-theme, not one of its theme options)."""
    if not context.get("default_mode"):
        context["default_mode"] = DEFAULT_MODE


def setup(app):
    app.connect("html-page-context", default_mode)
    app.connect("html-page-context", one_copy_of_each_script)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
