"""The package's folders are its layers, and every import runs one way (downwards).

foundations (``config``, ``errors``, ``atomic``) -> ``data`` -> ``models`` -> ``training``
-> ``analysis`` -> ``experiments`` -> ``book`` -> the command line and the package's own
namespace (``twotower/__init__.py``). A module may import its own layer or a lower one,
never a higher one, not even inside a function; inside a function it imports nothing of
the package at all (imports there are for optional dependencies only); and no set of
modules imports itself round in a cycle. A planted upward import must make this fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "twotower"
LAYERS = ("foundations", "data", "models", "training", "analysis", "experiments", "book",
          "entry")
FOUNDATIONS = ("errors", "atomic", "config")   # lowest first: each imports only earlier


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "__main__"):
        return LAYERS.index("entry")
    if parts[1] in FOUNDATIONS:
        return LAYERS.index("foundations")
    return LAYERS.index(parts[1])


def imports(path: Path, root: Path) -> list[tuple[str, int, bool]]:
    """(imported twotower module, line, inside a function) for each import in ``path``."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from twotower.x import y`` imports module x.y where there is one
                for alias in child.names:
                    candidate = root.parent / Path(*base.split("."), alias.name)
                    if candidate.with_suffix(".py").is_file() or candidate.is_dir():
                        targets.append(f"{base}.{alias.name}")
                    elif base not in targets:
                        targets.append(base)
            for target in targets:
                if target == "twotower" or target.startswith("twotower."):
                    found.append((target, child.lineno, inside))
            visit(child, inside)
    visit(tree, False)
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    """Every upward import, package import inside a function, and import cycle."""
    problems, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        here = module_name(path, root)
        graph.setdefault(here, set())
        for target, line, inside in imports(path, root):
            where = f"{path.relative_to(root.parent)}:{line}"
            if inside:
                problems.append(f"{where}: imports {target} inside a function")
            if layer(target) > layer(here):
                problems.append(f"{where}: {LAYERS[layer(here)]} imports "
                                f"{LAYERS[layer(target)]} ({target})")
            low, high = here.split(".")[-1], target.split(".")[-1]
            if low in FOUNDATIONS and high in FOUNDATIONS and \
                    FOUNDATIONS.index(high) > FOUNDATIONS.index(low):
                problems.append(f"{where}: foundation {low} imports {high}")
            if target != here and not here.startswith(target + "."):
                graph[here].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_runs_down_the_layers():
    problems = violations()
    assert not problems, "\n".join(problems)


def test_every_layer_folder_says_what_it_is_for():
    for folder in ("data", "models", "training", "analysis", "experiments", "book"):
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 8, f"twotower/{folder}/__init__.py"


@pytest.mark.parametrize("plant, expected", [
    ("data/tokenizer.py", "data imports experiments"),
    ("models/layers.py", "inside a function"),
])
def test_a_planted_upward_import_is_caught(tmp_path, plant, expected):
    copy = tmp_path / "twotower"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("_data", "__pycache__"))
    target = copy / plant
    if "function" in expected:
        extra = "\n\ndef planted():\n    from twotower.data import corpus\n"
    else:
        extra = "\nfrom twotower.experiments import store\n"
    target.write_text(target.read_text() + extra)
    assert any(expected in p for p in violations(copy)), violations(copy)


def test_a_planted_cycle_is_caught(tmp_path):
    copy = tmp_path / "twotower"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("_data", "__pycache__"))
    planted = copy / "experiments" / "planted.py"   # power imports planted already
    planted.write_text(planted.read_text() + "\nfrom twotower.experiments import power\n")
    found = violations(copy)
    assert any(p.startswith("import cycle") and "planted" in p and "power" in p
               for p in found), found
