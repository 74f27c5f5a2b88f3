"""Sphinx extension of the twotower book: the tables of the page *For teachers*.

``.. chapter-sessions::`` draws one row per chapter of the built book: its exercises
with the minutes their statements announce, how long the chapter took to execute at
each preset a build recorded (``book/_timings/<preset>.json``; the book build writes its
own), and sessions of 90 minutes packed from both. Everything comes from
:mod:`twotower.book.teaching`; nothing in the table is typed by hand.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.util.docutils import SphinxDirective

from twotower.book import teaching
from twotower.book.durations import format_duration
from twotower.book.notebooks import read_notebook
from twotower.config import PRESETS


def _title(chapter: Path) -> str:
    first = read_notebook(chapter).cells[0].source
    return first.splitlines()[0].lstrip("# ").strip()


class ChapterSessions(SphinxDirective):
    """The table of chapters, exercises, execution times and sessions."""

    has_content = False

    def run(self):
        book = Path(self.env.srcdir) / "book"
        chapters = sorted(book.glob("[0-9][0-9]_*.ipynb"))
        timings = teaching.recorded_timings(book / teaching.TIMINGS_FOLDER)
        presets = [p for p in PRESETS if p in timings]
        basis = presets[-1] if presets else None  # the largest preset recorded
        found = [teaching.exercises(chapter) for chapter in chapters]
        opening = [timings.get(basis, {}).get(c.stem, 0.0) / 60 for c in chapters]
        packed = teaching.sessions(found, opening)
        header = ["Chapter", "Exercises (minutes announced)",
                  *[f"Runs in ({p})" for p in presets],
                  f"Sessions of {teaching.SESSION_MINUTES} min"
                  + (f" (runs at {basis})" if basis else "")]
        rows = []
        for chapter, exercises, sessions in zip(chapters, found, packed):
            listed = "; ".join(f"{e.title} ({e.minutes})" for e in exercises)
            times = [format_duration(timings[p][chapter.stem])
                     if chapter.stem in timings[p] else "not recorded"
                     for p in presets]
            rows.append([f"{chapter.stem[:2]}. {_title(chapter)}", listed, *times,
                         " · ".join(f"{i}: {s}" for i, s in enumerate(sessions, 1))])
        # the page is MyST Markdown, so the table is written as MyST's list-table
        lines = [":::{list-table}", ":header-rows: 1", ":class: teaching-table", ""]
        for row in [header, *rows]:
            lines.append(f"* - {row[0]}")
            lines += [f"  - {cell}" for cell in row[1:]]
        lines.append(":::")
        container = self.parse_text_to_nodes("\n".join(lines))
        self.env.note_dependency(str(book / teaching.TIMINGS_FOLDER))
        return container


def setup(app):
    app.add_directive("chapter-sessions", ChapterSessions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
