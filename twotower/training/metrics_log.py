"""The metrics log of a run: ``metrics.jsonl``, one JSON line per logged step.

Introduced in chapter 6 (*Training on a GPU (or not)*).
"""

from __future__ import annotations

import json
from pathlib import Path

from twotower import atomic


class MetricsLog:
    """Append-only JSON lines, one per logged step; a resumed run drops the lines
    past its step."""

    def __init__(self, path: Path | None, phase: str, resume_step: int):
        self.path, self.phase = path, phase
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if rec.get("phase") != phase or rec.get("step", 0) <= resume_step:
                    kept.append(line)
        atomic.write_text(path, "".join(l + "\n" for l in kept))

    def write(self, record: dict) -> None:
        """Append ``record`` as one line, tagged with the phase."""
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"phase": self.phase, **record}) + "\n")
