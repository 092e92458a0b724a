"""The ``phaseledger`` command: inspect, drive and draw workflow runs from a shell.

``phaseledger --help`` lists the commands; ``phaseledger demo`` shows a run killed
part-way and resumed from its log. The command is a thin layer over
:class:`phaseledger.Engine`: everything it does, the Python API does too.

Besides :data:`app` and :func:`main`, a few of the command's rendering functions are
public, for programs that present runs the way the command does (the demo uses them): the
console, one-line errors and event summaries, the history timeline, and diagrams drawn by
Graphviz.
"""

from phaseledger.cli._app import app, main
from phaseledger.cli._diagram import draw_diagram, graphviz_missing
from phaseledger.cli._render import call_name, event_summary, print_error, print_history, token_counts
from phaseledger.cli._session import make_console

__all__ = [
    "app",
    "call_name",
    "draw_diagram",
    "event_summary",
    "graphviz_missing",
    "main",
    "make_console",
    "print_error",
    "print_history",
    "token_counts",
]
