"""The book in class (twotower.book.teaching): exercises and their minutes, recorded
timings, sessions, and grading students' notebooks with the checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from twotower.book import build as book
from twotower.book import teaching

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.chapters(ROOT)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem[:2])
def test_every_exercise_of_a_chapter_is_found_with_its_minutes(chapter):
    found = teaching.exercises(chapter)
    text = chapter.read_text(encoding="utf-8")
    assert len(found) == len(re.findall(r"\{exercise\}", text)) >= 2
    assert all(e.minutes > 0 and e.title for e in found), found


def test_sessions_open_with_the_run_and_never_pass_the_budget():
    def ex(title, minutes):
        return teaching.Exercise("01_x", title, minutes)

    packed = teaching.sessions(
        [[ex("a", 40), ex("b", 30), ex("c", 30)], [ex("d", 10)], []],
        [25.0, 0.0, 3.0], budget=90)
    assert packed == [["a (65 min)", "b, c (60 min)"], ["d (10 min)"],
                      ["reading only (3 min)"]]


def test_an_exercise_longer_than_a_session_gets_one_of_its_own():
    long = teaching.Exercise("01_x", "long", 120)
    assert teaching.sessions([[long]], [10.0], budget=90) == [["long (130 min)"]]


def test_timings_are_recorded_per_preset_from_successful_executions(tmp_path):
    manifest = {"copies": {
        "book/01_a.ipynb": {"status": "ok", "seconds": 8.4,
                            "parameters": {"PRESET": "smoke"}},
        "book/02_b.ipynb": {"status": "failed", "seconds": 3.0,
                            "parameters": {"PRESET": "smoke"}},
        "book/03_c.ipynb": {"status": "ok", "seconds": 99.0,
                            "parameters": {"PRESET": "small"}}}}
    teaching.record_timings(manifest, "smoke", tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    assert teaching.recorded_timings(tmp_path) == {"smoke": {"01_a": 8.4}}
    assert teaching.recorded_timings(tmp_path / "nowhere") == {}


def _notebook_with_checks(path, passes):
    body = ["import sys, types",
            "ex = types.SimpleNamespace(check_f=lambda f: print('✔ check_f passed: 2 "
            "cases') or f, check_g=lambda g: print('✘ check_g: wrong. Hint: h') or g)",
            "pass" if passes else "raise ValueError('student bug')",
            "f = ex.check_f(f)", "g = ex.check_g(g)"]
    cells = [new_markdown_cell("# A chapter"), new_code_cell("f = g = print"),
             *map(new_code_cell, body)]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)


def test_grading_runs_the_notebook_and_reports_every_check(tmp_path):
    _notebook_with_checks(tmp_path / "alice.ipynb", passes=True)
    report = teaching.grade(tmp_path / "alice.ipynb", tmp_path / "work")
    assert report == {"check_f": "passed", "check_g": "failed"}


def test_grading_says_where_a_notebook_stopped_and_what_was_never_run(tmp_path):
    _notebook_with_checks(tmp_path / "bob.ipynb", passes=False)
    report = teaching.grade(tmp_path / "bob.ipynb", tmp_path / "work")
    assert report["check_f"] == report["check_g"] == "not run"
    assert "ValueError: student bug" in report["error"]


def test_grading_without_execution_reads_the_outputs_held(tmp_path, capsys):
    cell = new_code_cell("f = ex.check_f(f)", outputs=[new_output(
        "stream", name="stdout", text="✔ check_f passed: 3 cases\n")])
    nbformat.write(new_notebook(cells=[cell]), tmp_path / "carol.ipynb")
    assert book.main(["--root", str(ROOT), "grade", "--no-execute",
                      str(tmp_path / "carol.ipynb")]) == 0
    assert capsys.readouterr().out.strip().endswith("1/1 checks passed")


def test_grading_a_missing_notebook_says_so_in_one_line(tmp_path, capsys):
    assert book.main(["--root", str(ROOT), "grade", str(tmp_path / "no.ipynb")]) == 2
    assert capsys.readouterr().out.strip().splitlines() == [
        f"error: no such notebook: {tmp_path / 'no.ipynb'}"]


def test_the_teachers_page_draws_its_table_and_is_in_the_book():
    page = (ROOT / "book" / "for_teachers.md").read_text(encoding="utf-8")
    assert "```{chapter-sessions}" in page
    assert "book/for_teachers" in (ROOT / "_toc.yml").read_text(encoding="utf-8")
    assert not re.search(r"\b\d+ (minutes|seconds|chapters|exercises)\b", page)
    recorded = teaching.recorded_timings(ROOT / "book" / teaching.TIMINGS_FOLDER)
    for preset, seconds in recorded.items():
        assert set(seconds) <= {c.stem for c in CHAPTERS}, preset
    json.dumps(recorded)  # what the page's directive reads is plain data
