"""Per-position scores: the record the readouts write and every instrument reads.

Introduced in chapter 7 (*Reading each tower alone*).

Scoring (:func:`twotower.training.readouts.score_readouts`) turns a model and its
readouts into one plain record per scored position; the analysis (preference,
stability, neurons) reads nothing else, so this record needs only numpy and lives
below both. It is saved as ``scores.npz`` in every run folder.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twotower import atomic
from twotower.errors import TwotowerError

_ARRAYS = ("target", "ll", "joint", "window", "article")


@dataclass(frozen=True)
class TokenScores:
    """Per scored position: the target id and each predictor's log-probability of it.

    ``ll[k]`` is readout k's fp32 log-probability of the true token; ``joint`` the
    fused head's. All arrays have one entry per scored position (N,). ``window`` and
    ``article`` say where each position lies (the index of its scored window, and of
    that window's article): statistics resample or split by them, since positions of
    one passage are not independent. They are None in scores written by twotower
    versions before they existed, and ``article`` for text without articles.
    """

    target: np.ndarray  # (N,) int32
    ll: np.ndarray  # (K, N) float32
    joint: np.ndarray  # (N,) float32
    window: np.ndarray | None = None  # (N,) int32
    article: np.ndarray | None = None  # (N,) int32

    def subset(self, keep: np.ndarray) -> "TokenScores":
        """The positions where ``keep`` (a boolean mask or an index) selects."""
        def part(a):
            return None if a is None else a[keep]
        return TokenScores(self.target[keep], self.ll[:, keep], self.joint[keep],
                           part(self.window), part(self.article))

    @property
    def ll_a(self) -> np.ndarray:
        return self.ll[0]

    @property
    def ll_b(self) -> np.ndarray:
        return self.ll[1]

    def save(self, path: Path) -> None:
        """Write ``path`` (``.npz``) atomically: a crash leaves the old file or none."""
        where = {name: value for name in ("window", "article")
                 if (value := getattr(self, name)) is not None}
        with atomic.replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, target=self.target, ll=self.ll, joint=self.joint,
                                **where)

    @classmethod
    def load(cls, path: Path, fix: str = "score again to write it") -> "TokenScores":
        """Read ``path`` as :meth:`save` wrote it.

        Raises:
            TwotowerError: naming the file, what is wrong and ``fix`` when it is
                missing, truncated, not an ``.npz`` archive, or lacks an array or has
                one of the wrong shape (see ``book/when_things_go_wrong.md``).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {name: z[name] for name in _ARRAYS if name in z.files}
        except FileNotFoundError:
            raise TwotowerError(f"{path} is missing; {fix}") from None
        except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile,
                zlib.error) as err:  # TypeError: a .npy file (no ``with``)
            reason = ("an .npy array" if isinstance(err, TypeError) else
                      str(err).splitlines()[0][:100] or type(err).__name__)
            raise TwotowerError(f"{path} is truncated or not an .npz file of scores "
                                f"({reason}); {fix}") from None
        problem = _shape_problem(arrays)
        if problem:
            raise TwotowerError(f"{path} is not a scores file of twotower ({problem}); "
                                f"{fix}")
        return cls(*(arrays.get(name) for name in _ARRAYS))


def _shape_problem(arrays: dict[str, np.ndarray]) -> str:
    """What is wrong with the arrays of a scores file ("" when nothing)."""
    missing = [name for name in _ARRAYS[:3] if name not in arrays]
    if missing:
        return f"no array {missing[0]!r}"
    n = arrays["target"].shape
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(n) != 1 or arrays["ll"].ndim != 2 or arrays["ll"].shape[1:] != n or any(
            shapes[name] != n for name in shapes if name not in ("target", "ll")):
        return f"arrays of mismatched shapes {shapes}"
    return ""
