"""Drawing a workflow's state machine: Mermaid text always, SVG or PNG through Graphviz.

Both come from the ``transitions`` diagram extension: Mermaid needs nothing installed,
the images need Graphviz's ``dot`` program and the ``graphviz`` Python package
(``pip install 'phaseledger[diagrams]'``).
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


def image(workflow: Workflow[Any], fmt: str) -> bytes:
    """The workflow drawn by Graphviz as ``svg`` or ``png`` bytes.

    Final phases get a double border; guarded transitions show their guard's name.
    """
    missing = graphviz_available()
    if missing:
        raise CommandError(missing)
    from transitions.extensions import GraphMachine

    workflow.validate()
    machine = GraphMachine(
        states=list(workflow.phases),
        initial=workflow.initial_phase,
        transitions=workflow._transition_specs(),  # the same table the engine validates with
        auto_transitions=False,
        send_event=True,
        graph_engine="graphviz",
        show_conditions=True,
        title=f"{workflow.name} v{workflow.version}",
    )
    graph = machine.get_graph()
    for phase in workflow.phases.values():
        if phase.final:
            graph.node(phase.name, peripheries="2")
    data = graph.draw(None, format=fmt)
    return data if isinstance(data, bytes) else str(data).encode()
