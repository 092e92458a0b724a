"""The command tree of ``phaseledger`` and its entry point.

Every command opens the engine on ``--store`` (or ``$PHASELEDGER_STORE``), does one
thing and closes it. Exit statuses: 0 done; 1 an error, printed as one ``error:`` line on
stderr (``--debug`` shows the traceback instead); 2 a wrong command line; 3 a run the
command drove ended failed; 130 interrupted (Ctrl-C), with one line saying how to resume.
The commands live in ``_read`` (runs, show, history), ``_act`` (start, resume, retry,
signal, cancel), ``_tools`` (worker, diff, diagram, keygen, demo), ``reports``
(projections, report) and ``serve`` (the web view); each reports its own errors (see ``_command``).
"""

from __future__ import annotations

import sys

from phaseledger.cli import (
    _act,  # noqa: F401
    _read,  # noqa: F401, I001 - commands register on import, in the order of --help
    _tools,  # noqa: F401
    _check,  # noqa: F401
    reports,
    serve,  # noqa: F401
)
from phaseledger.cli import _render as render
from phaseledger.cli._base import app
from phaseledger.cli._drive import INTERRUPTED
from phaseledger.cli._session import debug_from_env

__all__ = ["app", "main"]

app.add_typer(reports.projections_app, name="projections")
app.command("report")(reports.report)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; an unexpected failure prints one line on stderr (a traceback with ``--debug``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="phaseledger")  # usage errors exit 2 with click's message
    except KeyboardInterrupt:  # before a command started (commands report Ctrl-C themselves)
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:
        if "--debug" in args or debug_from_env():
            raise
        render.print_error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
