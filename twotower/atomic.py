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

A temporary file is created like any other file (``0o666`` less the user's umask, and a
folder's default ACL applies), so a run folder shared on a cluster stays readable to
the others. A full disk or quota (``ENOSPC``, ``EDQUOT``) ends in one line naming the
folder and the space needed (:func:`no_space`), as ``book/when_things_go_wrong.md``
lists.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from twotower.errors import TwotowerError

TMP_SUFFIX = ".tmp"  # what an interrupted write leaves behind (ignored by readers)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a full quota


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

    Raises:
        TwotowerError: when the disk or the quota is full (:func:`no_space`); any other
            error of the block or of the file system is raised as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(path.parent, f".{path.name}.")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        written = tmp.stat().st_size if tmp.exists() else 0
        raise TwotowerError(f"{no_space(path, path.parent, written)}; free some space, "
                            "then rerun the same command: it resumes where it stopped"
                            ) from None
    finally:
        tmp.unlink(missing_ok=True)  # only still there after an error


def _new_file(folder: Path, prefix: str) -> Path:
    """An empty file ``folder/<prefix><random>.tmp`` that did not exist before.

    Not ``tempfile.mkstemp``: its files are private (``0o600``) whatever the umask;
    here the operating system applies the umask (and a default ACL), as for any file.
    """
    for _ in range(100):
        name = folder / f"{prefix}{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def out_of_space(err: BaseException, folder: str | Path, needed: int = 0) -> bool:
    """Whether ``err``, raised while writing ``needed`` bytes into ``folder``, means
    the disk (or the quota) is full.

    An ``OSError`` says so by its ``errno``, a writer written in Rust (safetensors) in
    its text; torch's zip writer only says ``file write failed`` or ``unexpected pos``,
    so then the folder's free space decides.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in NO_SPACE
    text = str(err)
    if any(sign in text for sign in ("No space left", "Disk quota", "os error 28",
                                      "os error 122")):
        return True
    free = free_bytes(folder)
    return free is not None and free < needed


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of ``folder`` (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def no_space(what: str | Path, folder: str | Path, needed: int) -> str:
    """The start of the one-line message for a full disk: what could not be written,
    where, and how much space it needs."""
    free = free_bytes(folder)
    need = f"{_size(needed)} or more" if needed > 0 else "space"
    left = "" if free is None else f", {_size(free)} free"
    return (f"No space left on device: could not write {what} (it needs {need} in "
            f"{folder}{left})")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.1f} kB"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (checksums of the bundled data, the
    record of a run's files, the book's manifest)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (the owner of a temporary file
    or of a lock that a crash may have left behind)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


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
