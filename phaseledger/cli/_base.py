"""The ``phaseledger`` typer app, the options given before every command, and shared argument types."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phaseledger.cli._session import WORKFLOWS_ENV_VAR, Session

app = typer.Typer(
    name="phaseledger",
    help="Inspect, drive and draw durable workflow runs kept in an event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

RunArg = Annotated[str, typer.Argument(help="The run id.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def session_of(ctx: typer.Context) -> Session:
    """The :class:`Session` built from the options given before the command."""
    return ctx.find_root().obj  # type: ignore[no-any-return]


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
    ctx.obj = Session(store=store, workflow_modules=list(workflows or []), debug=debug)
