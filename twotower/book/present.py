"""An executed chapter as its page shows it: the parameters it ran with, its figures'
alt texts, and whether an exercise check failed.

Introduced in chapter 1 (*Is language divisible?*), section "Running this notebook".
:func:`twotower.book.execution.execute_chapter` calls :func:`present` on each executed
copy and :func:`failed_check` to fail a chapter whose own solution does not pass its
check.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from twotower.book.notebooks import read_notebook, write_notebook

#: The line every ``check_*`` prints: ``✔ check_x passed: ...`` or ``✘ check_x: ...``.
CHECK_LINE = re.compile(r"^(?P<mark>[✔✘]) (?P<check>check_\w+)", re.M)


def failed_check(notebook) -> str:
    """The first exercise check that failed (its ``✘`` line) in an executed chapter,
    or ``""``. A check prints that line and lets the chapter go on with the package's
    reference, so a student copy runs to the end; in the book, where the chapter's own
    solution sits before the check, the line means the solution is wrong."""
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            for match in CHECK_LINE.finditer(str(out.get("text", ""))):
                if match["mark"] == "✘":
                    line = out["text"][match.start():].split("\n", 1)[0]
                    return f"cell {cell.get('execution_count')}: {line}"
    return ""


def shown_value(name: str, value, root: Path) -> str:
    """How the parameters cell shows ``value``: ``RUNS_DIR`` relative to ``root`` (the
    repository; never the machine's absolute path), strings in double quotes."""
    if name == "RUNS_DIR" and os.path.isabs(str(value)):
        value = Path(os.path.relpath(value, root)).as_posix()
    return json.dumps(value) if isinstance(value, str) else repr(value)


def show_executed_parameters(notebook, parameters: dict, root: Path) -> None:
    """Make the visible parameters cell show the values the chapter was executed with
    (papermill's injected cell, which holds them, goes): a reader of the HTML sees
    ``PRESET = "smoke"`` where the page ran at ``smoke``, not the notebook's default.
    Each line keeps its comment; the first comment line says where the values came
    from."""
    notebook.cells = [cell for cell in notebook.cells
                      if "injected-parameters" not in cell.metadata.get("tags", [])]
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            lines = cell.source.splitlines()
            for index, line in enumerate(lines):
                name, sep, rest = line.partition(" = ")
                if sep and name.strip() in parameters and not line.startswith("#"):
                    value = shown_value(name.strip(), parameters[name.strip()], root)
                    comment = rest[rest.index("#"):] if "#" in rest else ""
                    lines[index] = f"{name} = {value}  {comment}".rstrip()
                elif index == 0 and line.startswith("#"):
                    lines[index] = "# Parameters: the values this page was executed with"
            cell.source = "\n".join(lines)
            break


def alt_text_in_cells(notebook) -> int:
    """Copy each figure's alt text from its output's metadata (where
    :func:`twotower.book.setup.style_outputs` and Altair's renderer put it) into its
    cell's ``mystnb.image.alt``, the one place MyST-NB reads an image's alt text from.
    Figures of one cell share it (joined with " / "). Returns how many cells got one.
    """
    described = 0
    for cell in notebook.cells:
        texts = [meta.get("alt") for out in cell.get("outputs", [])
                 for meta in out.get("metadata", {}).values()
                 if isinstance(meta, dict) and meta.get("alt")]
        if texts:
            image = cell.metadata.setdefault("mystnb", {}).setdefault("image", {})
            image["alt"] = " / ".join(dict.fromkeys(texts))
            described += 1
    return described


def relative_paths_in_outputs(notebook, root: Path) -> int:
    """Write paths under ``root`` (the repository, where the build ran) relative to it
    in every text output: a warning that names a run directory reads
    ``_build/runs/...`` on the page, never the build machine's absolute path. Returns
    how many outputs changed."""
    prefixes = {str(Path(root).absolute()) + os.sep, str(Path(root).resolve()) + os.sep}
    changed = 0

    def line(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    def relative(text):  # a string, or the list of lines a notebook may keep
        return line(text) if isinstance(text, str) else [line(t) for t in text]

    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            fields = [(out, "text")] if "text" in out else []
            fields += [(out["data"], mime) for mime in out.get("data", {})
                       if mime.startswith("text/") or mime == "application/javascript"]
            edited = False
            for holder, key in fields:
                text = relative(holder[key])
                edited |= text != holder[key]
                holder[key] = text
            changed += edited
    return changed


def present(path: Path, parameters: dict, root: Path) -> None:
    """Prepare an executed chapter for its page: the parameters it ran with, shown
    (:func:`show_executed_parameters`), paths of the build machine written relative to
    the repository (:func:`relative_paths_in_outputs`), and its figures' alt texts
    (:func:`alt_text_in_cells`)."""
    notebook = read_notebook(path)
    show_executed_parameters(notebook, parameters, root)
    relative_paths_in_outputs(notebook, root)
    alt_text_in_cells(notebook)
    write_notebook(notebook, path)
