"""Files replaced whole or not at all (``twotower.atomic``)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from twotower import atomic
from twotower.errors import TwotowerError


def test_write_text_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic.write_text(path, "old")
    atomic.write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "scores.npz"
    atomic.write_bytes(path, b"old content")
    with pytest.raises(RuntimeError):
        with atomic.replacing(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("killed while writing")
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.npz"]


def test_the_temporary_file_is_in_the_same_folder_and_hidden(tmp_path):
    # Same folder: the final rename never crosses file systems (which would copy).
    with atomic.replacing(tmp_path / "a.csv") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".a.csv.") and tmp.name.endswith(atomic.TMP_SUFFIX)
        tmp.write_text("x")


def test_two_writers_of_one_file_do_not_collide(tmp_path):
    """Two ranks filling the same cache entry: each has its own temporary file and
    the reader sees one writer's whole content."""
    path = tmp_path / "cache.json"
    inside, go = threading.Barrier(3), threading.Event()  # 2 writers + this test
    errors = []

    def writer(text):
        try:
            with atomic.replacing(path) as tmp:
                tmp.write_text(text)
                inside.wait(timeout=5)  # both temporaries exist at once
                go.wait(timeout=5)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in "ab"]
    for t in threads:
        t.start()
    inside.wait(timeout=5)
    go.set()
    for t in threads:
        t.join(timeout=5)
    assert not errors
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["disk", "quota"])
def test_a_full_disk_is_one_line_naming_the_folder_and_the_space_needed(
        code, tmp_path, monkeypatch):
    """The lowest write call of a replacement, the flush to disk, fails as a full disk
    (or quota) makes it fail: one plain line, the old file kept, no temporary left."""
    path = tmp_path / "results.json"
    atomic.write_text(path, "old")

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TwotowerError) as err:
        atomic.write_text(path, "x" * 50_000)
    message = str(err.value)
    assert message.startswith(f"No space left on device: could not write {path} ")
    assert f"50.0 kB or more in {tmp_path}" in message and "\n" not in message
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_full_disk_inside_the_block_is_the_same_line_and_other_errors_pass(
        tmp_path):
    path = tmp_path / "scores.npz"
    with pytest.raises(TwotowerError, match="^No space left on device: .* 1.0 kB or"):
        with atomic.replacing(path) as tmp:
            tmp.write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    with pytest.raises(PermissionError):  # not a full disk: raised as it is
        with atomic.replacing(path) as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert list(tmp_path.iterdir()) == []
