"""The reader and student copies in colab/: plain Markdown that Colab and Jupyter
render, solutions where they belong, committed as ``python -m twotower.book copies``
writes them.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from markdown_it import MarkdownIt
from nbformat.v4 import new_markdown_cell, new_notebook

from twotower.book import build as book
from twotower.book import copies, notebooks
from twotower.errors import TwotowerError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = book.read_config(ROOT)
CHAPTERS = book.chapters(ROOT)
BOOK = copies.Book(ROOT, CONFIG)
COPIES = [(kind, chapter) for kind in copies.KINDS for chapter in CHAPTERS]
CHAPTER_8 = "08_emerging_preference.ipynb"
# what MyST leaves in the HTML of a renderer that does not know it
MYST_LEFTOVERS = ("{exercise}", "{admonition}", "{solution-", "{term}", "{cite}",
                  "{doc}", ":::", ":label:", ":class:", "language-{")
STUB = "raise NotImplementedError"
CHECK = re.compile(r"\bex\.check_\w+\(")


def _ids(item) -> str:
    kind, chapter = item
    return f"{kind}-{chapter.name[:2]}"


def _tags(cell) -> list[str]:
    return cell.metadata.get("tags", [])


def myst_leftovers(path: Path) -> list[str]:
    """MyST text in the HTML that CommonMark (Colab, Jupyter) makes of each markdown
    cell of ``path``."""
    render = MarkdownIt("commonmark").render
    cells = nbformat.read(path, as_version=4).cells
    return [f"cell {index}: {text}" for index, cell in enumerate(cells)
            if cell.cell_type == "markdown"
            for text in MYST_LEFTOVERS if text in render(cell.source)]


def _committed(kind: str, chapter: Path):
    return nbformat.read(copies.copy_path(ROOT, kind, chapter), as_version=4)


@functools.cache
def _fresh(kind: str, chapter: Path):
    # what `copies` writes now: the tests of content do not fail on a stale copy, which
    # test_the_committed_copy_is_what_the_copies_command_writes reports
    return nbformat.reads(copies.copy_text(chapter, kind, BOOK), as_version=4)


# --- (a, b) plain Markdown ------------------------------------------------------------

def test_the_student_copy_of_chapter_8_renders_without_myst_and_the_chapter_does_not():
    assert myst_leftovers(ROOT / "colab" / "student" / CHAPTER_8) == []
    raw = " ".join(myst_leftovers(ROOT / "book" / CHAPTER_8))
    for text in ("{exercise}", "{admonition}", "{solution-", ":::", ":label:",
                 ":class:", "language-{", "{term}", "{cite}"):
        assert text in raw  # the same check fails on the chapter itself


@pytest.mark.parametrize("item", COPIES, ids=_ids)
def test_every_copy_renders_without_myst(item):
    kind, chapter = item
    assert myst_leftovers(copies.copy_path(ROOT, kind, chapter)) == []


# --- (c) solutions where they belong --------------------------------------------------

@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name[:2])
def test_the_student_copy_has_every_stub_and_check_and_no_solution(chapter):
    source = nbformat.read(chapter, as_version=4).cells
    student = _fresh("student", chapter).cells
    assert not [c for c in student if "solution" in _tags(c)]
    assert "**Solution**" not in " ".join(c.source for c in student)
    code = [c.source for c in student if c.cell_type == "code"]
    stubs = [i for i, text in enumerate(code) if STUB in text]
    assert len(stubs) == sum(STUB in c.source for c in source
                             if c.cell_type == "code" and "solution" not in _tags(c))
    assert len(stubs) >= 2
    for i in stubs:  # the next code cell checks the stub
        assert CHECK.search(code[i + 1]), f"no check after the stub {code[i][:60]!r}"
    exercises = [c.source for c in student if c.source.startswith("#### Exercise")]
    reader = notebooks.copy_url(CONFIG, "reader", chapter.stem)
    assert len(exercises) == len(stubs)
    assert all(text.splitlines()[-1].startswith("*Its solution is in the [") and
               f"]({reader})" in text.splitlines()[-1] for text in exercises)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name[:2])
def test_the_reader_copy_keeps_every_solution_under_a_solution_line(chapter):
    source = nbformat.read(chapter, as_version=4).cells
    reader = _fresh("reader", chapter).cells
    wanted = [c.source for c in source if c.cell_type == "code" and
              "solution" in _tags(c)]
    kept = [(before.source, cell.source) for before, cell in zip(reader, reader[1:])
            if cell.cell_type == "code" and "solution" in _tags(cell)]
    assert [code for _, code in kept] == wanted and len(wanted) >= 2
    assert all(line == "**Solution**" for line, _ in kept)
    assert [c.source for c in reader if c.cell_type == "code"] == \
        [c.source for c in source if c.cell_type == "code"]


# --- (d) committed as written ---------------------------------------------------------

@pytest.mark.parametrize("item", COPIES, ids=_ids)
def test_the_committed_copy_is_what_the_copies_command_writes(item):
    kind, chapter = item
    path = copies.copy_path(ROOT, kind, chapter)
    assert path.is_file(), "run python -m twotower.book copies"
    assert path.read_bytes() == copies.copy_text(chapter, kind, BOOK).encode(), \
        f"{path.relative_to(ROOT)} is stale: run python -m twotower.book copies"


def test_copies_are_deterministic_outputs_stripped_and_without_strays():
    chapter = ROOT / "book" / CHAPTER_8
    first = copies.copy_text(chapter, "reader", copies.Book(ROOT, CONFIG))
    assert first == copies.copy_text(chapter, "reader", copies.Book(ROOT, CONFIG))
    notebook = nbformat.reads(first, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None
               for c in notebook.cells if c.cell_type == "code")
    assert {p.name for kind in copies.KINDS
            for p in (ROOT / "colab" / kind).glob("*.ipynb")} == \
        {chapter.name for chapter in CHAPTERS}


def _tiny_book(root: Path, *cells: str) -> Path:
    """A book of one chapter, ``book/99_tiny.ipynb``: a title with its badge, then
    ``cells`` as markdown cells."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "references.bib"):
        shutil.copy(ROOT / name, root / name)
    (root / "_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "book/intro",
         "chapters": [{"file": "book/99_tiny"}]}))
    (root / "book").mkdir()
    (root / "book" / "intro.md").write_text("# Intro\n")
    badge = notebooks.colab_url(CONFIG, "book/99_tiny")
    title = f"# Tiny\n\n[![Open in Colab](_assets/badge.svg)]({badge})\n\nText."
    (root / "book" / "_assets").mkdir()
    (root / "book" / "_assets" / "badge.svg").write_text("<svg/>")
    chapter = root / "book" / "99_tiny.ipynb"
    nbformat.write(new_notebook(cells=[new_markdown_cell(title)] +
                                [new_markdown_cell(text) for text in cells]), chapter)
    return chapter


def test_check_reports_a_missing_stale_or_stray_copy_and_copies_fixes_it(tmp_path,
                                                                          capsys):
    chapter = _tiny_book(tmp_path, "Some {term}`text <target>`.")
    stray = tmp_path / "colab" / "reader" / "98_gone.ipynb"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    problems = copies.copy_problems(copies.Book(tmp_path, CONFIG), [chapter])
    missing = "is missing (run python -m twotower.book copies)"
    assert [p.split(" ", 1)[1] for p in problems] == [
        missing, "is the copy of no chapter in _toc.yml (run python -m twotower.book "
        "copies, which removes it)", missing]
    assert book.main(["--root", str(tmp_path), "copies"]) == 0
    assert "2 copies, 2 written, 1 removed" in capsys.readouterr().out
    assert not stray.exists()
    assert copies.copy_problems(copies.Book(tmp_path, CONFIG), [chapter]) == []
    notebook = nbformat.read(chapter, as_version=4)
    notebook.cells[1].source = "Edited."
    nbformat.write(notebook, chapter)
    assert book.main(["--root", str(tmp_path), "check"]) == 1
    out = capsys.readouterr().out
    assert "colab/student/99_tiny.ipynb is stale: it differs from its chapter " \
        "book/99_tiny.ipynb (run python -m twotower.book copies)" in out


# --- (e) conversion, and constructs it does not know ---------------------------------

def _converted(tmp_path: Path, text: str, kind: str = "reader") -> str:
    chapter = _tiny_book(tmp_path, text)
    return copies.chapter_copy(chapter, kind, copies.Book(tmp_path, CONFIG)).cells[1] \
        .source


@pytest.mark.parametrize("text, construct", [
    ("```{figure} a.png\n```", "unknown directive {figure}"),
    (":::{dropdown} More\nx\n:::", "unknown directive {dropdown}"),
    ("See {ref}`ex-a`.", "unknown role {ref}`ex-a`"),
    ("(sec-a)=\n# A", "unknown MyST construct myst_target"),
    ("Version {{ version }}.", "unknown MyST construct substitution_inline"),
    ("```{exercise} T\n:foo: 1\n\nx\n```", "option :foo: of {exercise}"),
    ("- item\n\n  ```{admonition} T\n  x\n  ```",
     "directive {admonition} inside a list"),
    ("As {cite}`nobody2099`.", "cites nobody2099, which is not in references.bib"),
    ("Write `{term}`x`` like this.", "a role inside `code`"),
])
def test_an_unknown_construct_stops_with_one_line_naming_chapter_cell_and_it(
        tmp_path, text, construct):
    with pytest.raises(TwotowerError) as error:
        _converted(tmp_path, text)
    message = str(error.value)
    assert message.startswith("book/99_tiny.ipynb, cell 1: ") and construct in message
    assert "\n" not in message and "twotower/book/copies.py" in message


def test_copies_writes_nothing_when_one_chapter_cannot_be_converted(tmp_path, capsys):
    _tiny_book(tmp_path, "```{figure} a.png\n```")
    assert book.main(["--root", str(tmp_path), "copies"]) == 2
    assert "unknown directive {figure}" in capsys.readouterr().err
    assert not (tmp_path / "colab").exists()


def test_exercises_admonitions_and_roles_become_commonmark(tmp_path):
    text = ("::::{admonition} Running {term}`it <running>`\n:class: tip dropdown\n\n"
            "See {doc}`intro`.\n\n```{exercise} Two towers\n"
            ":label: ex-t\n\nDo it, as {cite}`spearman1910correlation,"
            "brown1910experimental` did: $a_{i}$.\n```\n::::")
    assert _converted(tmp_path / "reader", text) == (
        "> **Running it**\n>\n> See [Intro](https://github.com/twotower-book/twotower/"
        "blob/main/book/intro.md).\n>\n> #### Exercise: Two towers\n>\n> Do it, as "
        "(Spearman, 1910; Brown, 1910) did: $a_{i}$.")
    student = _converted(tmp_path / "student", text, "student")
    assert student.splitlines()[-1].startswith("> *Its solution is in the [copy")


def test_the_solution_start_becomes_a_line_and_the_end_nothing(tmp_path):
    chapter = _tiny_book(tmp_path, "```{solution-start} ex-t\n:class: dropdown\n```",
                         "```{solution-end}\n```")
    notebook = copies.chapter_copy(chapter, "reader", copies.Book(tmp_path, CONFIG))
    assert [c.source for c in notebook.cells[1:]] == ["**Solution**"]


# --- (f) the badges -------------------------------------------------------------------

def test_a_chapter_badge_opens_its_student_copy_and_the_theme_has_no_colab_button():
    for chapter in CHAPTERS:
        url = notebooks.colab_url(CONFIG, f"book/{chapter.stem}")
        assert url == notebooks.copy_url(CONFIG, "student", chapter.stem)
        assert url.endswith(f"/colab/student/{chapter.name}")
        assert copies.copy_path(ROOT, "student", chapter).is_file()
        assert notebooks.COLAB_LINK.findall(nbformat.read(chapter, 4).cells[0].source) \
            == [url]
    assert "colab_url" not in CONFIG.get("launch_buttons", {})


@pytest.mark.parametrize("item", COPIES, ids=_ids)
def test_a_copy_badge_opens_itself_and_the_line_under_it_the_other_copy(item):
    kind, chapter = item
    other = "student" if kind == "reader" else "reader"
    first = _committed(kind, chapter).cells[0].source
    assert notebooks.COLAB_LINK.findall(first) == [
        notebooks.copy_url(CONFIG, kind, chapter.stem),
        notebooks.copy_url(CONFIG, other, chapter.stem)]
    assert re.search(r"^\[!\[Open in Colab\]\(https://raw\.githubusercontent\.com/"
                     r"[^)]+/book/_assets/colab-badge\.svg\)\]", first, re.M)
    line = "This copy has no solutions" if kind == "student" else \
        "This copy has the solution under each exercise"
    assert line in first
