"""The command tree of ``phaseledger`` and its entry point.

Every command opens the engine on ``--store`` (or ``$PHASELEDGER_STORE``), does one
thing and closes it. Exit statuses: 0 done; 1 an error, printed as one ``error:`` line on
stderr (``--debug`` shows the traceback instead); 2 a wrong command line; 3 a run the
command drove ended failed; 130 interrupted (Ctrl-C), with one line saying how to resume.
The commands live in ``_read`` (runs, show, history), ``_act`` (start, resume, retry,
signal, cancel) and ``_tools`` (worker, diff, diagram, demo); projections and reports next
to their subsystem.
"""

from __future__ import annotations

import os
import sys

from phaseledger.cli import (
    _act,  # noqa: F401
    _read,  # noqa: F401, I001 - commands register on import, in the order of --help
    _tools,  # noqa: F401
)
from phaseledger.cli import _render as render
from phaseledger.cli._base import app
from phaseledger.cli._drive import INTERRUPTED, Interrupted
from phaseledger.cli._help import Command, Group

__all__ = ["app", "main"]


def _mount_subsystem_commands() -> None:
    """Mount the projection and report commands (their own module, ``cli/reports.py``)."""
    from typer.core import TyperCommand

    from phaseledger.cli import reports as projections_cli

    for command in projections_cli.projections_app.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default: use ours, for help without placeholders
            command.cls = Command
    app.add_typer(projections_cli.projections_app, name="projections", cls=Group)
    app.command("report")(projections_cli.report)


_mount_subsystem_commands()


# -- entry point --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the command line; errors print one line on stderr (a traceback with ``--debug``)."""
    from phaseledger.domain.errors import PhaseledgerError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PHASELEDGER_DEBUG", "") not in ("", "0")
    try:
        app(args=args, prog_name="phaseledger")  # usage errors exit 2 with click's message
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit 130)
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except SystemExit as exc:
        if exc.code == INTERRUPTED:  # typer's silent exit after Ctrl-C outside a run
            print("interrupted", file=sys.stderr)
        raise
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(INTERRUPTED)
    except PhaseledgerError as exc:
        if debug:
            raise
        render.print_error(str(exc))
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:  # an unexpected failure: still one line, the traceback on request
        if debug:
            raise
        render.print_error(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
