"""The chapters' reader and student copies, in plain Markdown for Colab and Jupyter.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
Colab and plain Jupyter render CommonMark, not MyST, so every chapter
``book/NN_x.ipynb`` has two copies, committed so that Colab opens them from GitHub: the
*reader copy* ``colab/reader/NN_x.ipynb`` (with the solutions) and the *student copy*
``colab/student/NN_x.ipynb`` (no cell tagged ``solution``), which the chapter's badge
opens (:func:`twotower.book.notebooks.colab_url`). In both, outputs are stripped and
an exercise becomes a ``#### Exercise: <title>`` heading (in the student copy, its last
line says where the solution is), an admonition a quote under its bold title, a
solution's start a ``**Solution**`` line, ``{term}`` its text, ``{cite}`` "(Author,
year)" from the bibliography (listed in a last References cell), ``{doc}`` and relative
links addresses on GitHub; ``$`` math stays. Any other MyST construct stops with one
line naming the chapter, cell and construct, so nothing reaches a reader raw. The badge
opens the copy itself, the line under it the other copy.
``python -m twotower.book copies`` writes them (byte for byte the same from the same
sources), ``check`` reports a stale one, ``student --out DIR`` writes student copies
elsewhere.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from twotower.book.notebooks import (COLAB_LINK, COPIES, FIX_LINKS, copy_url,
                                     read_notebook, repository, repository_path,
                                     strip_notebook)
from twotower.atomic import write_bytes
from twotower.errors import TwotowerError

KINDS = ("reader", "student")
FIX_COPIES = "run python -m twotower.book copies"
TEACH = ("write it in plain Markdown, or teach twotower/book/copies.py to convert it "
         "(it knows the directives {}, the roles {})")
OPTIONS = {"exercise": {"label", "class", "nonumber"}, "admonition": {"class", "name"},
           "solution-start": {"label", "class"}, "solution-end": set()}
ROLES = ("term", "cite", "cite:p", "doc")
# what CommonMark (with $ math) renders; any other token is a construct to convert
PLAIN = {"paragraph_open", "paragraph_close", "heading_open", "heading_close",
         "bullet_list_open", "bullet_list_close", "ordered_list_open",
         "ordered_list_close", "list_item_open", "list_item_close", "blockquote_open",
         "blockquote_close", "code_block", "fence", "html_block", "hr", "inline",
         "math_block", "text", "text_special", "softbreak", "hardbreak", "code_inline",
         "em_open", "em_close", "strong_open", "strong_close", "link_open",
         "link_close", "image", "html_inline", "math_inline", "math_inline_double"}
DIRECTIVE = re.compile(r"^\{([\w:+-]+)\}\s*(.*)$")
OPTION = re.compile(r"^:([\w-]+):(.*)$")
ROLE = re.compile(r"\{([A-Za-z0-9_+:-]+)\}(`+)(.+?)\2(?!`)", re.S)
TARGET = re.compile(r"(.+?)\s*<([^<>]+)>$", re.S)  # {term}`text <target>`
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|#|/)")


class _Unknown(Exception):
    """A construct the copies cannot convert; the caller adds the chapter and cell."""


@functools.cache
def _parser():
    # MyST's own block and inline plugins, so that every MyST construct comes out as a
    # token of its own type instead of passing for plain text
    from markdown_it import MarkdownIt
    from mdit_py_plugins.amsmath import amsmath_plugin
    from mdit_py_plugins.colon_fence import colon_fence_plugin
    from mdit_py_plugins.deflist import deflist_plugin
    from mdit_py_plugins.dollarmath import dollarmath_plugin
    from mdit_py_plugins.footnote import footnote_plugin
    from mdit_py_plugins.myst_blocks import myst_block_plugin
    from mdit_py_plugins.myst_role import myst_role_plugin
    from mdit_py_plugins.substitution import substitution_plugin

    parser = MarkdownIt("commonmark")
    for plugin in (colon_fence_plugin, dollarmath_plugin, amsmath_plugin,
                   myst_role_plugin, myst_block_plugin, substitution_plugin,
                   deflist_plugin, footnote_plugin):
        parser.use(plugin)
    return parser


def _walk(tokens):
    for token in tokens:
        yield token
        yield from _walk(token.children or [])


def _plain(text: str) -> str:
    return " ".join(text.split())


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in
                     text.splitlines())


@dataclass
class Book:
    """What every copy reads: the repository root, ``_config.yml`` and the
    bibliography (``bibtex_bibfiles``, parsed once, when a chapter first cites)."""

    root: Path
    config: dict
    _entries: dict | None = field(default=None, repr=False)

    def bibfiles(self) -> list[str]:
        """The bibliography's files, relative to the root."""
        return list(self.config.get("bibtex_bibfiles", ["references.bib"]))

    def entries(self) -> dict:
        """The bibliography's entries by key."""
        if self._entries is None:
            from pybtex.database import parse_file

            self._entries = {}
            for name in self.bibfiles():
                self._entries.update(parse_file(self.root / name, "bibtex").entries)
        return self._entries

    def github(self, path: str, raw: bool = False) -> str:
        """The address on GitHub of ``path`` (relative to the root); ``raw``: the file
        itself, for an image."""
        owner, name, branch = repository(self.config)
        path = repository_path(self.config, path)
        if raw:
            return f"https://raw.githubusercontent.com/{owner}/{name}/{branch}/{path}"
        return f"https://github.com/{owner}/{name}/blob/{branch}/{path}"


@functools.cache
def _pybtex(group: str, name: str):
    # pybtex looks a plugin up among every installed entry point: seconds, so once
    from pybtex.plugin import find_plugin

    return find_plugin(group, name)()


def _author_year(entry) -> str:
    # as sphinxcontrib-bibtex's author_year style: "A", "A and B" or "A et al."
    from pybtex.richtext import Text

    text = _pybtex("pybtex.backends", "text")
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [Text.from_latex(" ".join(p.prelast_names + p.last_names)).render(text)
             for p in people]
    if len(names) > 2 or names[-1:] == ["others"]:
        who = f"{names[0]} et al."
    else:
        who = " and ".join(names) or "Anonymous"
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class _Converter:
    """MyST -> CommonMark for the markdown cells of one copy of one chapter."""

    def __init__(self, book: Book, chapter: Path, kind: str):
        self.book, self.chapter, self.kind = book, chapter, kind
        self.cited: list[str] = []

    def markdown(self, text: str) -> str:
        """``text`` with every MyST construct converted; raises :class:`_Unknown`."""
        tokens = _parser().parse(text)
        lines = text.splitlines(keepends=True)
        blocks = []  # top-level blocks: the token with the line map, then its inside
        for token in tokens:
            if token.level == 0 and token.map is not None:
                blocks.append([token])
            elif blocks:
                blocks[-1].append(token)
        out, line = [], 0
        for block in blocks:
            start, end = block[0].map
            out.append("".join(lines[line:start]))
            converted = self._block(block, "".join(lines[start:end]))
            out.append(converted + ("\n" if end < len(lines) and converted else ""))
            line = end
        out.append("".join(lines[line:]))
        return "".join(out).strip("\n")

    def _block(self, block: list, text: str) -> str:
        first = block[0]
        if first.type in ("fence", "colon_fence"):
            match = DIRECTIVE.match(first.info.strip())
            if match:
                return self._directive(match.group(1), match.group(2), first.content)
            if first.type == "colon_fence":
                raise _Unknown(f"a ':::' fence without a directive ({first.info!r})")
            return text.rstrip("\n")
        if first.type == "amsmath":  # a bare LaTeX environment: display math
            return f"$$\n{first.content.strip()}\n$$"
        for token in _walk(block):
            if token.type not in PLAIN and token.type != "myst_role":
                what = token.info or token.content or token.markup
                raise _Unknown(f"unknown MyST construct {token.type} "
                               f"({_plain(what)[:40]!r})")
            if token.type in ("fence", "colon_fence") and \
                    DIRECTIVE.match(token.info.strip()):
                raise _Unknown(f"directive {token.info.split()[0]} inside a list or "
                               "quote; move it to the top level of its cell")
        if first.type in ("fence", "code_block", "html_block", "math_block"):
            return text.rstrip("\n")
        return self._inline(block, text.rstrip("\n"))

    def _inline(self, block: list, text: str) -> str:
        roles = [(t.meta["name"], _plain(t.content)) for t in _walk(block)
                 if t.type == "myst_role"]
        found = [(m.group(1), _plain(m.group(3))) for m in ROLE.finditer(text)]
        if found != roles:
            raise _Unknown(f"roles {found} read as {roles} by the parser (a role "
                           "inside `code`, or an escaped one?)")
        text = ROLE.sub(lambda m: self._role(m.group(1), _plain(m.group(3))), text)
        for token in _walk(block):
            target = token.attrs.get("href" if token.type == "link_open" else "src")
            if token.type in ("link_open", "image") and not SCHEME.match(target):
                if f"]({target}" not in text:
                    raise _Unknown(f"a relative link to {target} that is not written "
                                   "[text](target)")
                text = text.replace(f"]({target}", f"]({self._rebase(target, token)}")
        return text

    def _rebase(self, target: str, token) -> str:
        path, _, anchor = target.partition("#")
        found = (self.chapter.parent / path).resolve()
        if not found.exists():
            raise _Unknown(f"a link to {target}, which does not exist")
        address = self.book.github(found.relative_to(self.book.root).as_posix(),
                                   raw=token.type == "image")
        return address + (f"#{anchor}" if anchor else "")

    # --- directives -------------------------------------------------------------------

    def _directive(self, name: str, argument: str, content: str) -> str:
        if name not in OPTIONS:
            raise _Unknown(f"unknown directive {{{name}}}")
        lines = content.splitlines()
        if lines and lines[0].strip() == "---":
            raise _Unknown(f"{{{name}}} with a YAML block of options; write them as "
                           ":key: value lines")
        while lines and OPTION.match(lines[0]):
            key = OPTION.match(lines.pop(0)).group(1)
            if key not in OPTIONS[name]:
                raise _Unknown(f"option :{key}: of {{{name}}}, which the copies do not "
                               f"know (they know {sorted(OPTIONS[name])})")
        body = self.markdown("\n".join(lines))
        if name == "solution-start":
            return "**Solution**"
        if name == "solution-end":
            return ""
        if name == "exercise":
            title = self.markdown(argument)
            heading = f"#### Exercise: {title}" if title else "#### Exercise"
            text = f"{heading}\n\n{body}"
            if self.kind == "student":
                reader = copy_url(self.book.config, "reader", self.chapter.stem)
                text += (f"\n\n*Its solution is in the [copy of this chapter with the "
                         f"solutions]({reader}), right after this exercise.*")
            return text
        if not argument:
            raise _Unknown("{admonition} without a title")
        return _quote(f"**{self.markdown(argument)}**\n\n{body}")

    # --- roles ------------------------------------------------------------------------

    def _role(self, name: str, content: str) -> str:
        if name not in ROLES:
            raise _Unknown(f"unknown role {{{name}}}`{content}`")
        labelled = TARGET.match(content)
        text, target = labelled.groups() if labelled else (None, content)
        if name == "term":
            return text or target
        if name == "doc":
            return self._doc(text, target)
        entries, cites = self.book.entries(), []
        for key in (key.strip() for key in content.split(",")):
            if key not in entries:
                raise _Unknown(f"{{{name}}}`{content}` cites {key}, which is not in "
                               f"{', '.join(self.book.bibfiles())}")
            if key not in self.cited:
                self.cited.append(key)
            cites.append(_author_year(entries[key]))
        return f"({'; '.join(cites)})"

    def _doc(self, text: str | None, target: str) -> str:
        base = self.book.root if target.startswith("/") else self.chapter.parent
        for suffix in (".md", ".ipynb"):
            path = (base / target.lstrip("/")).with_suffix(suffix).resolve()
            if path.is_file():
                break
        else:
            raise _Unknown(f"{{doc}}`{target}`: no {target}.md or .ipynb")
        if suffix == ".ipynb":
            source = read_notebook(path).cells[0].source
            address = copy_url(self.book.config, self.kind, path.stem)
        else:
            source = path.read_text(encoding="utf-8")
            address = self.book.github(path.relative_to(self.book.root).as_posix())
        title = re.search(r"^# (.+)$", source, re.M)
        return f"[{text or (title.group(1).strip() if title else target)}]({address})"

    def references(self) -> str:
        """The entries this copy cited, in the order first cited, as a Markdown list."""
        style = _pybtex("pybtex.style.formatting", "plain")
        backend = _pybtex("pybtex.backends", "markdown")
        entries = [self.book.entries()[key] for key in self.cited]
        items = [f"- **{_author_year(entry)}**: "
                 f"{_plain(style.format_entry('', entry).text.render(backend))}"
                 for entry in entries]  # format_entries would sort them
        return "## References\n\n" + "\n".join(items)


# --- one copy -------------------------------------------------------------------------

def chapter_copy(chapter: Path, kind: str, book: Book):
    """The ``kind`` copy (``"reader"`` or ``"student"``) of ``chapter``, as a notebook.

    Raises:
        TwotowerError: naming the chapter, the cell and the construct that the copies
            cannot convert, or a first cell without the Colab badge.
    """
    from nbformat.v4 import new_markdown_cell

    if kind not in KINDS:
        raise TwotowerError(f"unknown kind of copy {kind!r}; choose one of {KINDS}")
    notebook = read_notebook(chapter)
    strip_notebook(notebook)
    name = chapter.relative_to(book.root).as_posix()
    if not notebook.cells or notebook.cells[0].cell_type != "markdown":
        raise TwotowerError(f"{name}, cell 0: not the markdown cell with the title and "
                            "the Colab badge (book/CONTRIBUTING.md, item 1)")
    converter, cells = _Converter(book, chapter, kind), []
    for index, cell in enumerate(notebook.cells):
        if kind == "student" and "solution" in cell.metadata.get("tags", []):
            continue
        if cell.cell_type == "markdown":
            try:
                cell.source = converter.markdown(cell.source)
            except _Unknown as problem:
                raise TwotowerError(f"{name}, cell {index}: {problem}; "
                                    + TEACH.format(", ".join(OPTIONS), ", ".join(ROLES))
                                    ) from None
            if index == 0:
                cell.source = _badges(cell.source, kind, chapter.stem, book, name)
            if not cell.source:
                continue  # a solution's end
        cells.append(cell)
    if converter.cited:
        cells.append(new_markdown_cell(converter.references()))
        cells[-1].id = "references"
    notebook.cells = cells
    return notebook


def _badges(source: str, kind: str, stem: str, book: Book, name: str) -> str:
    # the badge opens this copy; the line under it, the other copy
    if not COLAB_LINK.search(source):
        raise TwotowerError(f"{name}, cell 0: no Colab badge for the copies to "
                            f"point at ({FIX_LINKS})")
    here = copy_url(book.config, kind, stem)
    source = COLAB_LINK.sub(here, source)
    if kind == "student":
        other = ("This copy has no solutions: work the exercises here. The chapter "
                 "with its solutions: [open in Colab]"
                 f"({copy_url(book.config, 'reader', stem)}).")
    else:
        other = ("This copy has the solution under each exercise. The chapter without "
                 "them, to work the exercises yourself: [open in Colab]"
                 f"({copy_url(book.config, 'student', stem)}).")
    lines = source.split("\n")
    at = next(i for i, line in enumerate(lines) if here in line)
    return "\n".join(lines[:at + 1] + ["", other] + lines[at + 1:])


def copy_text(chapter: Path, kind: str, book: Book) -> str:
    """The file text of a copy, exactly as :func:`write_copies` writes it."""
    import nbformat

    text = nbformat.writes(chapter_copy(chapter, kind, book))
    return text if text.endswith("\n") else text + "\n"


def copy_path(root: Path, kind: str, chapter: Path) -> Path:
    """Where the ``kind`` copy of ``chapter`` is committed: ``colab/<kind>/<name>``."""
    return root / COPIES / kind / chapter.name


# --- all copies -----------------------------------------------------------------------

def write_copies(book: Book, chapters: list[Path]) -> tuple[list[Path], list[Path]]:
    """Write both copies of every chapter into ``colab/`` and remove the copies of
    notebooks that are no longer chapters; return (written, removed): only the files
    that changed."""
    # every copy is made before any is written: a chapter that cannot be converted
    # leaves colab/ as it was
    wanted = {copy_path(book.root, kind, chapter):
              copy_text(chapter, kind, book).encode("utf-8")
              for kind in KINDS for chapter in chapters}
    written = [path for path, data in wanted.items()
               if not path.is_file() or path.read_bytes() != data]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, wanted[path])
    removed = [path for kind in KINDS for path in _strays(book.root, kind, chapters)]
    for path in removed:
        path.unlink()
    return written, removed


def _strays(root: Path, kind: str, chapters: list[Path]) -> list[Path]:
    names = {chapter.name for chapter in chapters}
    return [path for path in sorted((root / COPIES / kind).glob("*.ipynb"))
            if path.name not in names]


def copy_problems(book: Book, chapters: list[Path]) -> list[str]:
    """Every committed copy that is missing, stale (not what :func:`write_copies`
    would write) or left over from a notebook that is no longer a chapter."""
    problems = []
    for kind in KINDS:
        for chapter in chapters:
            path = copy_path(book.root, kind, chapter)
            name = path.relative_to(book.root).as_posix()
            try:
                text = copy_text(chapter, kind, book)
            except TwotowerError as error:  # once, not for each kind
                problems += [str(error)] if str(error) not in problems else []
                continue
            if not path.is_file():
                problems.append(f"{name} is missing ({FIX_COPIES})")
            elif path.read_bytes() != text.encode("utf-8"):
                problems.append(f"{name} is stale: it differs from its chapter "
                                f"{chapter.relative_to(book.root).as_posix()} "
                                f"({FIX_COPIES})")
        for path in _strays(book.root, kind, chapters):
            problems.append(f"{path.relative_to(book.root).as_posix()} is the copy of "
                            f"no chapter in _toc.yml ({FIX_COPIES}, which removes it)")
    return problems


def write_student_copies(book: Book, chapters: list[Path],
                         out: Path) -> dict[Path, int]:
    """Student copies of ``chapters`` in ``out`` (for a teacher); return each file
    with the number of solution cells left out."""
    written = {}
    for chapter in chapters:
        cells = read_notebook(chapter).cells
        solutions = sum("solution" in c.metadata.get("tags", []) for c in cells)
        path = out / chapter.name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, copy_text(chapter, "student", book).encode("utf-8"))
        written[path] = solutions
    return written
