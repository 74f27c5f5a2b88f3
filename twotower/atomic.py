"""Files that are replaced whole or not at all.

Introduced in chapter 6 (*Training on a GPU (or not)*).

Every file ``twotower`` writes that a later step reads (checkpoints, caches, results)
goes through :func:`replacing`: the content is written to a uniquely named temporary
file in the same folder, flushed to disk (``fsync``), renamed onto the destination
(``rename`` is atomic on POSIX and Windows file systems), and the folder entry is
flushed. A reader, or a run restarted after ``kill -9`` or a power cut, sees the old
file or the new one, never a half-written one. Two processes writing the same file (two
ranks filling a cache) do not collide: each has its own temporary name and the last
rename wins. :func:`read_json` reads such a file back, with a one-line error when it is
missing or damaged.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from twotower.errors import TwotowerError

TMP_SUFFIX = ".tmp"  # what an interrupted write leaves behind (ignored by readers)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders
    cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's content to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an error,
    flush it to disk and rename it onto ``path``. On an error the temporary file is
    removed and ``path`` is untouched.

    Example::

        with replacing(out / "scores.npz") as tmp:
            np.savez_compressed(tmp, ...)   # write to tmp, any way you like
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # only still there after an error


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def read_json(file: str | Path, fix: str) -> dict:
    """The JSON object in ``file``.

    Raises:
        TwotowerError: naming the file and ``fix`` when it is missing, not UTF-8, not
            JSON, or not a JSON object.
    """
    file = Path(file)
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TwotowerError(f"{file} is missing; {fix}") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError too
        raise TwotowerError(f"{file} is unreadable ({str(err)[:100]}); {fix}") from None
    if not isinstance(value, dict):
        raise TwotowerError(f"{file} holds a JSON {type(value).__name__}, not an "
                            f"object; {fix}")
    return value
