"""Widgets a reader types into: look a token up in a preference table.

Introduced in chapter 8 (*The emerging preference*), whose token explorer shows any
token's row of the preference table.
"""

from __future__ import annotations


def lookup_token(table, text: str, limit: int = 10):
    """Rows of a preference table for one token string (chapter 8).

    Exact match first (WordPiece is uncased here, so the text is lower-cased); when
    nothing matches, up to ``limit`` tokens that start with the text, most frequent
    first.

    Args:
        table: a :func:`twotower.analysis.preference.token_preference` table with a
            ``token`` column.
        text: what the reader typed.
        limit: most rows returned for a prefix search.

    Returns:
        The matching rows (possibly none).
    """
    text = str(text).strip()
    tokens = table["token"].astype(str)
    exact = table[(tokens == text) | (tokens == text.lower())]
    if len(exact) or not text:
        return exact
    prefix = table[tokens.str.startswith(text.lower())]
    return prefix.sort_values("count", ascending=False).head(limit)


def token_explorer(table, default: str = "the"):
    """A text box that shows a token's row of a preference table (chapter 8).

    In a live kernel every edit of the box looks the token up with
    :func:`lookup_token`. A static page (the HTML book) keeps the widget as it was
    when the notebook ran, showing ``default``: typing there cannot run Python.

    Args:
        table: a :func:`twotower.analysis.preference.token_preference` table.
        default: token shown before anything is typed.

    Returns:
        An ``ipywidgets.VBox`` to display (the last expression of a cell).
    """
    import ipywidgets as widgets
    from IPython.display import display

    box = widgets.Text(value=default, description="token",
                       placeholder="a word or word piece, e.g. the or ##s")
    out = widgets.Output()

    def show(change=None) -> None:
        out.clear_output(wait=True)
        with out:
            rows = lookup_token(table, box.value)
            if len(rows):
                display(rows.round(3))
            else:
                print(f"{box.value!r} is not a scored token of this run")

    box.observe(show, names="value")
    show()
    return widgets.VBox([box, out])
