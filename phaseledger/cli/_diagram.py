"""Drawing a workflow's state machine: Mermaid text always, SVG or PNG through Graphviz.

Both draw the edges of :meth:`Workflow.edges <phaseledger.Workflow.edges>`, labelled by
their guards only. Mermaid needs nothing installed; the images need Graphviz's ``dot``
program and the ``graphviz`` Python package (``pip install 'phaseledger[diagrams]'``).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Any

from phaseledger.cli._session import CommandError

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow

FORMATS = ("mermaid", "svg", "png")


def mermaid(workflow: Workflow[Any]) -> str:
    """The workflow as Mermaid ``stateDiagram-v2`` text."""
    return workflow.diagram()


def graphviz_available() -> str | None:
    """None when SVG and PNG can be drawn here, else what is missing and how to get it."""
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
    """The workflow as a ``graphviz.Digraph``: a start dot, phases (finals with a double
    border), and edges labelled by their guards only."""
    import graphviz

    workflow.validate()
    title = f"{workflow.name} v{workflow.version}"
    digraph = graphviz.Digraph(
        name=workflow.name,
        graph_attr={"rankdir": "LR", "label": title, "labelloc": "t"},
        node_attr={"shape": "box", "style": "rounded"},
    )
    digraph.node("__start__", label="", shape="circle", style="filled", fillcolor="black", width="0.15")
    for phase in workflow.phases.values():
        digraph.node(phase.name, peripheries="2" if phase.final else "1")
    digraph.edge("__start__", workflow.initial_phase)
    for edge in workflow.edges():
        digraph.edge(edge.source, edge.target, **({"label": edge.label} if edge.label else {}))
    return digraph


def image(workflow: Workflow[Any], fmt: str) -> bytes:
    """The workflow drawn by Graphviz as ``svg`` or ``png`` bytes (see :func:`graph`)."""
    missing = graphviz_available()
    if missing:
        raise CommandError(missing)
    data = graph(workflow).pipe(format=fmt)
    return data if isinstance(data, bytes) else str(data).encode()
