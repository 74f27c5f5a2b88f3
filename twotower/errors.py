"""One exception type for every mistake a reader can make.

Met first in chapter 1 (*Is language divisible?*), whose set-up stops with one when a
corpus the chapter reads is missing.

Anything the user can fix (a bad argument, a missing file, a run directory made with
another config, a loss that became NaN) raises :class:`TwotowerError` with a one-line
message that names what was wrong and how to fix it. The CLI prints that line and exits
with status 2 instead of showing a traceback from deep inside the library.
"""

from __future__ import annotations


class TwotowerError(ValueError):
    """A user-facing error whose message is one line: what is wrong, and the fix."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`TwotowerError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise TwotowerError(message)
