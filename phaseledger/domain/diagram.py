"""The one builder of a workflow's state-machine diagram, and its Mermaid text.

:meth:`StateDiagram.of` reads a workflow into what every drawing shows: a title, the
initial phase, the phases (final ones marked), the edges and an optional highlighted
phase. Mermaid text (:meth:`StateDiagram.mermaid`, what :meth:`Workflow.diagram
<phaseledger.Workflow.diagram>` returns) is rendered here, as it needs nothing installed;
``phaseledger diagram --format svg|png`` renders the same diagram with Graphviz
(``phaseledger.cli``). Building is pure: nothing here writes or runs a program.

An edge is labelled only by its guard: ``[needs_review]`` for a named function, the
expression of a short lambda (``[len(state.notes) < 2]``), else ``[guard]``. An edge
without a guard has no label (the arrow already names its target).

The ``transitions`` library can draw its machines too (``GraphMachine``), but it labels
edges with their triggers, marks no final states and writes other Mermaid text; the
diagrams documented here are built from the workflow's own definition instead.
"""

from __future__ import annotations

import ast
import inspect
import linecache
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from phaseledger.domain.errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow

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


@dataclass(frozen=True)
class StateDiagram:
    """A workflow's state machine as every drawing shows it (Mermaid text, Graphviz images)."""

    title: str
    """``name vVERSION``."""
    initial: str
    """The phase every run starts in (drawn with an arrow from a start dot)."""
    phases: tuple[str, ...]
    """Every phase, in definition order."""
    finals: tuple[str, ...]
    """The final phases (drawn leading to the end, or with a double border)."""
    edges: tuple[Edge, ...]
    """Every allowed phase change, in definition order."""
    active: str | None = None
    """A phase to highlight (the phase a run is in), or None."""

    @classmethod
    def of(cls, workflow: Workflow[Any], *, active: str | None = None) -> StateDiagram:
        """The diagram of a workflow (checked first); ``active`` must be one of its phases."""
        workflow.validate()
        if active is not None and active not in workflow.phases:
            raise WorkflowDefinitionError(f"workflow {workflow.name!r} has no phase {active!r} to highlight")
        return cls(
            title=f"{workflow.name} v{workflow.version}",
            initial=workflow.initial_phase,
            phases=tuple(workflow.phases),
            finals=tuple(p.name for p in workflow.phases.values() if p.final),
            edges=tuple(workflow.edges()),
            active=active,
        )

    def mermaid(self) -> str:
        """Mermaid ``stateDiagram-v2`` text: the title, the edges, the final phases, styling last."""
        lines = ["---", f"title: {self.title}", "---", "stateDiagram-v2", "  direction LR", f"  [*] --> {self.initial}"]
        for edge in self.edges:
            label = f": {edge.label}" if edge.label else ""
            lines.append(f"  {edge.source} --> {edge.target}{label}")
        lines.extend(f"  {phase} --> [*]" for phase in self.finals)
        if self.active is not None:
            lines += ["  classDef active color:red,fill:darksalmon", f"  class {self.active} active"]
        return "\n".join(lines) + "\n"
