"""Sphinx extension of the twotower book: make the package's docstrings build strictly.

The book is built with ``--nitpick --warningiserror``. Two habits of a maths-heavy code
base would fail that build for no good reason, so this extension absorbs them:

1. ``|influence|`` or ``|pred - gold|`` in a docstring means an absolute value, but reST
   reads ``|...|`` as a substitution and errors. The pipes are escaped before parsing.
2. :class:`TwotowerError` written in ``twotower.config`` names a class that lives in
   ``twotower.errors``; Sphinx only looks in the current module. A reference that does
   not resolve is looked up again among all documented objects whose dotted name ends
   with it (as Sphinx already does for the types in ``Args:``). A name that exists in
   the code but is not documented (a constant without a ``#:`` comment, a dataclass
   field) links to its class or module instead. Anything else still fails the build.

It also adds the directive ``.. twotower-module:: twotower.config``: a section titled
with the module's name holding its ``automodule``, so that ``book/api.md`` documents a
module in one line and every module gets its own entry in the page's contents.
"""

from __future__ import annotations

import importlib
import inspect
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode

# |x| with no space just inside the pipes: a substitution to reST, |x| to a reader
_ABSOLUTE_VALUE = re.compile(r"(?<![\\`|])\|(?=\S)([^|`\n]*?\S)\|(?![`|_])")


def _escape_absolute_values(app, what, name, obj, options, lines):
    for index, line in enumerate(lines):
        if "|" not in line or line.lstrip().startswith((">>>", "+")):
            continue
        parts = line.split("``")  # odd parts are inline literals: leave them alone
        parts[::2] = [_ABSOLUTE_VALUE.sub(r"\\|\1\\|", part) for part in parts[::2]]
        lines[index] = "``".join(parts)


def _defined(module: str, dotted: str) -> bool:
    """True if ``module.dotted`` exists in the code (fields, ``self.x = ...`` count)."""
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return False
    *path, last = dotted.split(".")
    for part in path:
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    if hasattr(obj, last) or last in getattr(obj, "__annotations__", {}):
        return True
    try:  # an instance attribute set in a method: ``self.labels = ...``
        source = inspect.getsource(obj) if inspect.isclass(obj) else ""
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{re.escape(last)}\s*[:=]", source) is not None


def _resolve_unqualified(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    if not node.hasattr("refspecific"):
        node["refspecific"] = True
        try:
            found = domain.resolve_xref(env, node["refdoc"], app.builder,
                                        node["reftype"], node["reftarget"], node,
                                        contnode)
        finally:
            del node["refspecific"]
        if found is not None:
            return found
    module, target = node.get("py:module"), node["reftarget"].lstrip("~.")
    if not module or not module.startswith("twotower") or not _defined(module, target):
        return None
    # real but undocumented (a constant, a field): link to what documents it
    parts = target.split(".")
    for end in range(len(parts) - 1, 0, -1):
        matches = domain.find_obj(env, module, None, ".".join(parts[:end]), None, 1)
        if len(matches) == 1:
            return make_refnode(app.builder, node["refdoc"], matches[0][1].docname,
                                matches[0][1].node_id, contnode, matches[0][0])
    return domain.resolve_xref(env, node["refdoc"], app.builder, "mod", module, node,
                               contnode)


class ModuleSection(SphinxDirective):
    """``.. twotower-module:: NAME``: a section titled NAME, then its automodule."""

    required_arguments = 1

    def run(self):
        name = self.arguments[0]
        section = nodes.section(ids=[nodes.make_id(f"api-{name}")],
                                names=[nodes.fully_normalize_name(name)])
        section += nodes.title(name, "", nodes.literal(name, name))
        body = StringList([f".. automodule:: {name}"], source=self.get_source_info()[0])
        self.state.nested_parse(body, self.content_offset, section)
        return [section]


def setup(app):
    app.add_directive("twotower-module", ModuleSection)
    app.connect("autodoc-process-docstring", _escape_absolute_values)
    app.connect("missing-reference", _resolve_unqualified)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
