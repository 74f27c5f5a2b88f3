"""Chapters call one namespace, ``import twotower as tt``, and every name they use exists.

``tt.<name>`` (:data:`twotower.NAMES`) and ``tt.<module>`` (:data:`twotower.MODULES`)
are imported on first use, so ``import twotower`` alone is quick and imports no torch.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import twotower as tt

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    magic = re.compile(r"^(\s*)[%!].*$", re.M)  # IPython only: a no-op for the parser
    return [magic.sub(r"\1pass", "".join(c["source"]))
            for c in cells if c["cell_type"] == "code"]


def test_every_name_and_module_of_the_namespace_resolves():
    for name, module in tt.NAMES.items():
        assert getattr(tt, name) is getattr(__import__(module, fromlist=[name]), name)
    for short, module in tt.MODULES.items():
        assert getattr(tt, short).__name__ == module


def test_every_module_of_the_package_is_in_the_namespace():
    package = ROOT / "twotower"
    found = {".".join(("twotower",) + p.relative_to(package).with_suffix("").parts)
             for p in package.rglob("*.py")
             if not any(part.startswith("_") for part in p.relative_to(package).parts)}
    missing = found - set(tt.MODULES.values()) - {
        "twotower.cli", "twotower.config", "twotower.errors", "twotower.atomic",
        "twotower.book.setup"}  # tt.setup is the chapter's set-up function
    missing = {m for m in missing if not m.startswith("twotower.book.exercises.")}
    assert not missing, f"add to twotower.MODULES: {sorted(missing)}"


def test_an_unknown_name_fails_with_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        tt.not_a_name  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, twotower; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name[:2])
def test_a_chapter_imports_only_tt_and_its_exercises(chapter):
    number = chapter.name[:2]
    for source in code_cells(chapter):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "twotower"):
                assert node.module == "twotower.book.exercises", \
                    f"{chapter.name}: from {node.module} import ..."
                assert [a.name for a in node.names] == [f"ch{number}"]
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("twotower"):
                        assert (alias.name, alias.asname) == ("twotower", "tt"), \
                            f"{chapter.name}: import {alias.name}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name[:2])
def test_every_tt_name_a_chapter_uses_exists(chapter):
    used = set()
    for source in code_cells(chapter):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "tt":
                used.add(node.attr)
            # tt.module.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and isinstance(node.value.value, ast.Name) \
                    and node.value.value.id == "tt" and node.value.attr in tt.MODULES:
                assert hasattr(getattr(tt, node.value.attr), node.attr), \
                    f"{chapter.name}: tt.{node.value.attr}.{node.attr} does not exist"
    unknown = {name for name in used if not hasattr(tt, name)}
    assert not unknown, f"{chapter.name} uses tt.{sorted(unknown)}"
