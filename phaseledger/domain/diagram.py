"""Drawing a workflow's state machine: its edges, how guards read, and Mermaid text.

An edge is labelled only by its guard: ``[needs_review]`` for a named function, the
expression of a short lambda (``[len(state.notes) < 2]``), else ``[guard]``. An edge
without a guard has no label (the arrow already names its target). Mermaid text needs
nothing installed; ``phaseledger diagram --format svg|png`` draws the same edges with
Graphviz.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

GUARD_TEXT_LIMIT = 40
"""The longest lambda expression shown as it is; longer ones read ``[guard]``."""

_PLAIN_TEXT = re.compile(r"[\w .,()+\-*/%<>=!']+")
"""Characters a Mermaid edge label takes without escaping (no brackets, colons, quotes or ``#;{}``)."""
_TAG_LIKE = re.compile(r"<[A-Za-z/!]")
"""``<b``-like text that Mermaid's HTML sanitising would eat."""


@dataclass(frozen=True)
class Edge:
    """One allowed phase change, with how its guard reads (None: unguarded)."""

    source: str
    target: str
    guard: str | None = None

    @property
    def label(self) -> str:
        """The edge's label in a diagram: ``[guard]`` or nothing."""
        return f"[{self.guard}]" if self.guard else ""


def guard_label(guard: Callable[[Any], bool]) -> str:
    """How a diagram names a guard: a function's name, a short lambda's expression, else ``guard``."""
    name = getattr(guard, "__name__", "")
    if name and name != "<lambda>":
        return name
    text = _lambda_expression(guard)
    if text and len(text) <= GUARD_TEXT_LIMIT and _PLAIN_TEXT.fullmatch(text) and not _TAG_LIKE.search(text):
        return text
    return "guard"


def _lambda_expression(guard: Callable[[Any], bool]) -> str | None:
    """The source text of a lambda's expression (whitespace folded), or None when unknown."""
    code = getattr(guard, "__code__", None)
    if code is None:
        return None
    try:
        filename = inspect.getsourcefile(guard)
    except TypeError:
        return None
    if not filename:
        return None
    source, lambdas = _lambdas_of(filename)
    found = [node for node in lambdas if node.lineno == code.co_firstlineno]
    if len(found) > 1:
        found = [node for node in found if _same_body(node, code)]
    if len(found) != 1:
        return None
    segment = ast.get_source_segment(source, found[0].body)
    return " ".join(segment.split()) if segment else None


@lru_cache(maxsize=32)
def _lambdas_of(filename: str) -> tuple[str, tuple[ast.Lambda, ...]]:
    """A source file's text and every lambda in it (empty when it cannot be read or parsed)."""
    source = "".join(linecache.getlines(filename))
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source, ()
    return source, tuple(node for node in ast.walk(tree) if isinstance(node, ast.Lambda))


def _same_body(node: ast.Lambda, code: Any) -> bool:
    """Whether a lambda node is the one compiled to ``code`` (its instructions lie in its body)."""
    body = node.body
    for line, _, column, _ in code.co_positions():
        if line is None or column is None:
            continue
        start = (body.lineno, body.col_offset)
        end = (body.end_lineno or body.lineno, body.end_col_offset or 0)
        if start <= (line, column) < end:
            return True
    return False


def mermaid(title: str, initial: str, edges: Iterable[Edge], finals: Iterable[str], *,
            active: str | None = None) -> str:
    """Mermaid ``stateDiagram-v2`` text: the title, the edges, the final phases, styling last."""
    lines = ["---", f"title: {title}", "---", "stateDiagram-v2", "  direction LR", f"  [*] --> {initial}"]
    for edge in edges:
        label = f": {edge.label}" if edge.label else ""
        lines.append(f"  {edge.source} --> {edge.target}{label}")
    lines.extend(f"  {phase} --> [*]" for phase in finals)
    if active is not None:
        lines += ["  classDef active color:red,fill:darksalmon", f"  class {active} active"]
    return "\n".join(lines) + "\n"
