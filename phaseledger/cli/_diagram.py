"""Rendering a workflow's state machine: Mermaid text always, SVG or PNG through Graphviz.

Every format draws the one :class:`~phaseledger.domain.diagram.StateDiagram` of the
workflow: its edges labelled by their guards only. Mermaid needs nothing installed; the
images need Graphviz's ``dot`` program and the ``graphviz`` Python package
(``pip install 'phaseledger[diagrams]'``).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from phaseledger.cli._session import CommandError
from phaseledger.domain.diagram import StateDiagram

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow

FORMATS = ("mermaid", "svg", "png")
"""What ``phaseledger diagram --format`` draws: Mermaid text, or an image drawn by Graphviz."""


def graphviz_missing() -> str | None:
    """What is missing to draw SVG or PNG here, and how to get it; None when nothing is."""
    if shutil.which("dot") is None:
        return (
            "drawing SVG or PNG needs Graphviz, and its `dot` program is not on PATH: install Graphviz "
            "(apt install graphviz, brew install graphviz, or see graphviz.org), or use the default "
            "Mermaid output, which needs nothing installed"
        )
    try:
        import graphviz  # noqa: F401
    except ImportError:
        return (
            "drawing SVG or PNG needs the graphviz Python package: pip install 'phaseledger[diagrams]', "
            "or use the default Mermaid output"
        )
    return None


def graph(workflow: Workflow[Any]) -> Any:
    """The workflow's diagram as a ``graphviz.Digraph``: a start dot, phases (finals with a
    double border), and edges labelled by their guards only."""
    import graphviz

    diagram = StateDiagram.of(workflow)
    digraph = graphviz.Digraph(
        name=workflow.name,
        graph_attr={"rankdir": "LR", "label": diagram.title, "labelloc": "t"},
        node_attr={"shape": "box", "style": "rounded"},
    )
    digraph.node("__start__", label="", shape="circle", style="filled", fillcolor="black", width="0.15")
    for phase in diagram.phases:
        digraph.node(phase, peripheries="2" if phase in diagram.finals else "1")
    digraph.edge("__start__", diagram.initial)
    for edge in diagram.edges:
        digraph.edge(edge.source, edge.target, **({"label": edge.label} if edge.label else {}))
    return digraph


def draw_diagram(workflow: Workflow[Any], fmt: str) -> bytes:
    """The workflow's state machine drawn by Graphviz as ``svg`` or ``png`` bytes.

    Raises a :class:`~phaseledger.PhaseledgerError` saying what to install when Graphviz
    is missing (see :func:`graphviz_missing`).
    """
    missing = graphviz_missing()
    if missing:
        raise CommandError(missing)
    data = graph(workflow).pipe(format=fmt)
    return data if isinstance(data, bytes) else str(data).encode()
