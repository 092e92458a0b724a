"""The ``phaseledger`` typer app, the options given before every command, and shared options.

The output convention lives here too: a command that prints data takes ``--json``
(:data:`JsonOpt`) and prints JSON for scripts; where a command once took ``--format json``
for that, :data:`FormatOpt` keeps it as a hidden, deprecated alias (:func:`wants_json`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from typer.models import CommandFunctionType

from phaseledger.cli._command import Command, Group
from phaseledger.cli._session import WORKFLOWS_ENV_VAR, Session, debug_from_env, warn_deprecated


class App(typer.Typer):
    """A typer app whose commands default to :class:`~phaseledger.cli._command.Command`
    (tidy help, errors as one line)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        """Register a command (see :meth:`typer.Typer.command`)."""
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(
    name="phaseledger",
    cls=Group,
    help="Inspect, drive and draw durable workflow runs kept in an event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


class OutputFormat(str, enum.Enum):
    """What the deprecated ``--format`` chose: a table (the default output) or JSON."""

    table = "table"
    json = "json"


RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
FormatOpt = Annotated[Optional[OutputFormat], typer.Option(
    "--format", hidden=True, show_default=False, help="Deprecated: use --json.")]
WorkflowVersionOpt = Annotated[Optional[int], typer.Option(
    "--workflow-version", min=1, metavar="N", show_default=False,
    help="The workflow version (default: the latest loaded).")]


def wants_json(as_json: bool, output: OutputFormat | None) -> bool:
    """Whether to print JSON: ``--json``, or the deprecated ``--format json`` (which says so on stderr)."""
    if output is not None:
        warn_deprecated(f"--format {output.value}", "--json for JSON (a table is the default)")
    return as_json or output is OutputFormat.json


def session_of(ctx: typer.Context) -> Session:
    """The :class:`Session` built from the options given before the command (the defaults for a
    command run in a typer app of its own)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Session):
        root.obj = Session()
    return root.obj


def _version(value: bool) -> None:
    if value:
        from phaseledger import __version__

        print(f"phaseledger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[Optional[str], typer.Option(
        "--store", envvar="PHASELEDGER_STORE", show_default=False, metavar="URL",
        help="Store URL: sqlite:///phaseledger.db (default), postgresql://user:pw@host/db, memory://.",
    )] = None,
    workflows: Annotated[Optional[list[str]], typer.Option(
        "--workflows", "-w", envvar=WORKFLOWS_ENV_VAR, show_default=False, metavar="MODULE",
        help="Module that defines workflows (import path, MODULE:ATTR or file.py); repeatable. "
             "Needed to resume, retry, signal, run workers and draw diagrams.",
    )] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.",
    )] = False,
) -> None:
    """Inspect, drive and draw durable workflow runs kept in an event log.

    Options before the command apply to every command, e.g.
    [bold]phaseledger --store sqlite:///runs.db runs --status failed[/].
    """
    ctx.obj = Session(store=store, workflow_modules=list(workflows or []), debug=debug or debug_from_env())
