"""Files replaced whole or not at all (``twotower.atomic``)."""

from __future__ import annotations

import threading

import pytest

from twotower import atomic


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
