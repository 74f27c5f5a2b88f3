"""The chapters as files: outputs stripped, the chapter template and Colab links.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
:mod:`twotower.book.build` runs these as ``python -m twotower.book check``, ``strip``
and ``links``, and hashes a chapter (:func:`source_sha256`) so that a rebuild executes
only the chapters that changed. A chapter's badge opens its student copy in Colab
(:func:`colab_url`); :mod:`twotower.book.copies` writes the copies.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from twotower.errors import TwotowerError

COLAB = "https://colab.research.google.com"
COPIES = "colab"  # the copies that Colab opens: colab/reader/, colab/student/
# the variables that python -m twotower.book build injects into every chapter
CHAPTER_PARAMETERS = ("PRESET", "SEED", "DEVICE", "RUNS_DIR")
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^\s)\"'>\]]+")
GIT_INSTALL = re.compile(r"git\+https?://[^\s\"'@#]+(?:@[\w./-]+)?")
FIX_LINKS = "run: python -m twotower.book links"
VOLATILE_CELL_KEYS = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled")
VOLATILE_NOTEBOOK_KEYS = ("widgets", "papermill", "signature")


# --- the repository in _config.yml ----------------------------------------------------

def repository(config: dict) -> tuple[str, str, str]:
    """``(owner, name, branch)`` of the book's GitHub repository (``_config.yml``)."""
    repo = config.get("repository", {})
    match = re.match(r"https://github\.com/([^/]+)/([^/]+?)(?:\.git)?/?$",
                     str(repo.get("url", "")))
    if not match:
        raise TwotowerError("repository.url in _config.yml must look like "
                            "https://github.com/OWNER/NAME")
    return match.group(1), match.group(2), str(repo.get("branch", "main"))


def repository_path(config: dict, path: str) -> str:
    """``path`` (relative to the folder of ``_config.yml``) from the repository root."""
    prefix = str(config.get("repository", {}).get("path_to_book", "")).strip("/")
    return f"{prefix}/{path}" if prefix else path


def copy_url(config: dict, kind: str, name: str) -> str:
    """The Colab link of a chapter's copy, ``colab/<kind>/<name>.ipynb``: ``kind`` is
    ``"reader"`` (with the solutions) or ``"student"`` (without)."""
    owner, repo, branch = repository(config)
    path = repository_path(config, f"{COPIES}/{kind}/{name}.ipynb")
    return f"{COLAB}/github/{owner}/{repo}/blob/{branch}/{path}"


def colab_url(config: dict, docname: str) -> str:
    """The link of a chapter's Colab badge: its student copy, which has no solutions,
    e.g. for ``docname="book/01_is_language_divisible"``."""
    return copy_url(config, "student", docname.rsplit("/", 1)[-1])


def git_install(config: dict) -> str:
    """The ``git+https://...@branch`` spec that the Colab install cells pip-install."""
    owner, name, branch = repository(config)
    return f"git+https://github.com/{owner}/{name}@{branch}"


# --- notebook hygiene -----------------------------------------------------------------

def read_notebook(path: Path):
    """A notebook file, as ``nbformat`` version 4."""
    import nbformat

    return nbformat.read(path, as_version=4)


def write_notebook(notebook, path: Path) -> None:
    """Write ``notebook`` to ``path``, making its folder if needed."""
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)


def strip_notebook(notebook) -> bool:
    """Remove outputs, execution counts and volatile metadata; True if any changed."""
    changed = False
    for cell in notebook.cells:
        if cell.cell_type == "code":
            changed |= bool(cell.outputs) or cell.execution_count is not None
            cell.outputs, cell.execution_count = [], None
        for key in VOLATILE_CELL_KEYS:
            changed |= cell.metadata.pop(key, None) is not None
    for key in VOLATILE_NOTEBOOK_KEYS:
        changed |= notebook.metadata.pop(key, None) is not None
    return changed


def source_sha256(path: Path) -> str:
    """A hash of a chapter as written: its cells and metadata with the outputs and the
    volatile keys stripped, so running it or ``strip`` leaves the hash as it was."""
    notebook = read_notebook(path)
    strip_notebook(notebook)
    text = json.dumps(notebook, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def notebook_problems(path: Path, config: dict | None = None,
                      root: Path | None = None) -> list[str]:
    """What is wrong with a stored chapter: invalid, outputs, stale Colab links."""
    import nbformat

    try:
        notebook = read_notebook(path)
        nbformat.validate(notebook)
    except Exception as error:  # any parse or schema error is a problem to report
        return [f"{path.name}: not a valid notebook ({str(error).splitlines()[0]})"]
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and cell.outputs:
            problems.append(f"{path.name}: cell {index} has outputs")
        if cell.cell_type == "code" and cell.execution_count is not None:
            problems.append(f"{path.name}: cell {index} has an execution count")
    if config is not None and root is not None:
        docname = path.relative_to(root).with_suffix("").as_posix()
        wanted_colab, wanted_git = colab_url(config, docname), git_install(config)
        for index, cell in enumerate(notebook.cells):
            for link in COLAB_LINK.findall(cell.source):
                if link != wanted_colab:
                    problems.append(f"{path.name}: cell {index} links {link}, expected "
                                    f"{wanted_colab} ({FIX_LINKS})")
            for spec in GIT_INSTALL.findall(cell.source):
                if spec != wanted_git:
                    problems.append(f"{path.name}: cell {index} installs {spec}, "
                                    f"expected {wanted_git} ({FIX_LINKS})")
    return problems


MAX_CELL_LINES = 15  # a code cell longer than this belongs in the package
MAX_CODE_CHARS = 76  # a longer line is cut at the right edge of the page (cells that
# the page leaves out, tagged remove-cell, are exempt: the Colab install line is longer)
# a check hands back the function the rest of the chapter uses (the reader's, or the
# package's reference when the exercise was skipped or is wrong)
CHECK_CALL = re.compile(r"^(\w+) = ex\.check_\1\(\s*\1\s*\)$", re.M)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def structure_problems(path: Path) -> list[str]:
    """Where a chapter departs from the template of book/CONTRIBUTING.md."""
    notebook = read_notebook(path)
    cells, name = notebook.cells, path.name
    problems = []
    markdown = "\n".join(c.source for c in cells if c.cell_type == "markdown").lower()
    code = [c for c in cells if c.cell_type == "code"]
    first = cells[0] if cells else None
    if first is None or first.cell_type != "markdown" or \
            not first.source.startswith("# ") or not COLAB_LINK.search(first.source):
        problems.append(f"{name}: the first cell must be the '# Title' with a Colab "
                        "badge")
    install = [i for i, c in enumerate(cells) if c.cell_type == "code" and
               "remove-cell" in _tags(c) and "google.colab" in c.source and
               "pip install" in c.source]
    imports = [i for i, c in enumerate(cells) if c.cell_type == "code" and
               re.search(r"^\s*(import|from)\s+twotower", c.source, re.M)]
    if not install or (imports and imports[0] < install[0]):
        problems.append(f"{name}: needs a Colab install cell (tag remove-cell) before "
                        "the first import of twotower")
    parameters = [c for c in code if "parameters" in _tags(c)]
    for variable in CHAPTER_PARAMETERS:
        if not any(re.search(rf"^{variable}\s*=", c.source, re.M) for c in parameters):
            problems.append(f"{name}: the cell tagged 'parameters' must set {variable}")
    for words in ("learning objectives", "running this notebook", "## summary"):
        if words not in markdown:
            problems.append(f"{name}: no '{words}' in the markdown cells")
    if not any("hide-input" in _tags(c) for c in code):
        problems.append(f"{name}: no figure cell tagged hide-input")
    checks = [c for c in code if "solution" not in _tags(c) and
              re.search(r"\bcheck_\w+\(", c.source)]
    solutions = [c for c in code if "solution" in _tags(c)]
    if len(checks) < 2 or len(solutions) < 2:
        problems.append(f"{name}: needs at least two exercises (a check cell calling "
                        "twotower.book.exercises.chNN.check_* and a code cell tagged "
                        "solution)")
    gates = [c for c in cells if c.cell_type == "markdown" and
             re.search(r"\{solution-(start|end)\}", c.source)]
    if any("solution" not in _tags(c) for c in gates):
        problems.append(f"{name}: tag the solution-start/solution-end markdown cells "
                        "'solution' too, so the student copy drops them")
    if sum("{solution-start}" in c.source for c in gates) != \
            sum("{solution-end}" in c.source for c in gates):
        problems.append(f"{name}: every solution-start needs a solution-end")
    for cell in checks:
        if not CHECK_CALL.search(cell.source):
            problems.append(f"{name}: write the check as `f = ex.check_f(f)`, so that "
                            "the chapter goes on with what the check hands back: "
                            f"{cell.source.strip()[:60]!r}")
    for index, cell in enumerate(cells):
        lines = len(cell.source.strip().splitlines())
        if cell.cell_type == "code" and "remove-cell" not in _tags(cell) and \
                lines > MAX_CELL_LINES:
            problems.append(f"{name}: cell {index} has {lines} lines (at most "
                            f"{MAX_CELL_LINES}); move the code into the package")
        shown = cell.cell_type == "code" and "remove-cell" not in _tags(cell)
        wide = [n for n, line in enumerate(cell.source.splitlines(), 1)
                if len(line) > MAX_CODE_CHARS] if shown else []
        if wide:
            problems.append(f"{name}: cell {index} has {len(wide)} line(s) longer than "
                            f"{MAX_CODE_CHARS} characters (line {wide[0]}); wrap them")
    return problems


def rewrite_links(path: Path, config: dict, root: Path) -> bool:
    """Point the Colab badge and the install cell at the repository in _config.yml."""
    notebook = read_notebook(path)
    docname = path.relative_to(root).with_suffix("").as_posix()
    changed = False
    for cell in notebook.cells:
        source = COLAB_LINK.sub(colab_url(config, docname), cell.source)
        source = GIT_INSTALL.sub(git_install(config), source)
        changed |= source != cell.source
        cell.source = source
    if changed:
        write_notebook(notebook, path)
    return changed

