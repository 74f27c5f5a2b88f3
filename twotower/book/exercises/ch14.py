"""Exercise checks of chapter 14 (*The tokenizer matters*).

Introduced in chapter 14 (*The tokenizer matters*): loss per character, which compares
tokenizers, and the number of steps a loss curve takes to reach a level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.book.exercises.framework import Attempt, exercise
from twotower.experiments.plasticity import steps_to_reach

# --- loss per character ---------------------------------------------------------------


def reference_loss_per_char(token_losses, sentences):
    """The exercise's solution: all token losses over all characters, each sentence
    one character longer for its end."""
    total = sum(float(np.sum(losses)) for losses in token_losses)
    return total / sum(len(sentence) + 1 for sentence in sentences)


def _sentence_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(140)
    cases = []
    for n in (1, 5, 40):
        sentences = ["x" * int(rng.integers(3, 60)) for _ in range(n)]
        cases.append(dict(token_losses=[rng.gamma(2.0, 1.5, int(rng.integers(2, 20)))
                                        for _ in range(n)], sentences=sentences))
    return cases


@exercise(reference_loss_per_char, hint=(
    "Hint: sum every token's loss of every sentence (the end-of-sentence token "
    "included), and divide by the sum of len(sentence) + 1; do not average per "
    "sentence first."))
def check_loss_per_char(attempt: Attempt) -> str:
    """Check ``loss_per_char(token_losses, sentences)``: all token losses summed, over
    all characters, each sentence counting one extra character for its end."""
    return attempt.compare(_sentence_cases(),
                           lambda c: f"{len(c['sentences'])} sentences", "cases")


# --- steps to reach a level -----------------------------------------------------------


@exercise(steps_to_reach, hint=(
    "Hint: walk through consecutive points (s0, v0), (s1, v1); at the first pair with "
    "v0 > level >= v1 return s0 + (v0 - level) / (v0 - v1) * (s1 - s0); return 0.0 if "
    "the first value is already <= level, NaN if none is."))
def check_steps_to_reach(attempt: Attempt) -> str:
    """Check ``steps_to_reach(curve, level)``: the first step at which a falling
    curve of ``(step, loss)`` points reaches ``level``, interpolated linearly between
    the two points around it; 0 if it starts there, NaN if it never gets there. The
    reference is :func:`twotower.experiments.plasticity.steps_to_reach`."""
    curve = [(0, 3.0), (10, 2.0), (20, 1.5), (40, 1.4)]
    cases = [dict(curve=curve, level=level) for level in (2.5, 1.5, 1.45, 3.5, 1.0)]
    cases.append(dict(curve=[(0, 2.0), (5, 2.2), (10, 1.0)], level=1.6))
    return attempt.compare(cases, lambda c: f"level {c['level']}",
                           "levels, never reached and already reached included",
                           atol=1e-9)
