"""Durations in the unit a reader thinks in: seconds, minutes, hours, days, years.

Introduced in chapter 6 (*Training on a GPU (or not)*), which turns FLOPs into the time
a run takes; chapter 9 (*Is the preference stable?*) says what its runs cost the same
way.
"""

from __future__ import annotations

import numpy as np


def format_duration(seconds: float) -> str:
    """``93.0 -> "1.6 min"``: seconds in the unit a reader thinks in (chapter 6)."""
    if not np.isfinite(seconds):
        return "n/a"
    for unit, size, limit in (("s", 1, 120), ("min", 60, 120), ("h", 3600, 72),
                              ("days", 86400, 730)):
        if seconds < size * limit:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / (365 * 86400):.3g} years"
