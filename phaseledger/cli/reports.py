"""``phaseledger projections status|catch-up|rebuild`` and ``phaseledger report``.

``projections_app`` is a typer app mounted by the main command as ``projections``, and
:func:`report` a command of it; ``report_app`` runs ``report`` alone. Like every command,
they read the store given by the main command's ``--store`` (then ``$PHASELEDGER_STORE``,
then ``sqlite:///phaseledger.db``) through the session, refuse a SQLite file that does not
exist, and print a rich table on a terminal (rebuilds with a progress bar), plain text
otherwise, or JSON with ``--json``. Kept as hidden, deprecated aliases: ``--format json``
(``--format table`` is the default output) and ``--store URL`` after the command name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from phaseledger.cli import _render as render
from phaseledger.cli import _render_reports as tables
from phaseledger.cli._base import App, FormatOpt, JsonOpt, session_of, wants_json
from phaseledger.cli._command import Group

if TYPE_CHECKING:
    from phaseledger.projections import ProjectionStatus, Reports

StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", metavar="URL", show_default=False, hidden=True,
    help="Store URL; an alias of the global --store (given before the command).",
)]
PageOpt = Annotated[int, typer.Option("--page-size", min=1, metavar="N", help="Events applied per transaction.")]

projections_app = App(
    name="projections",
    cls=Group,
    help="Run the report projections: see where they stand, catch them up, rebuild them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@projections_app.command("status")
def status(ctx: typer.Context, as_json: JsonOpt = False, store: StoreOpt = None, output: FormatOpt = None) -> None:
    """Show the position of the report tables in the log, their lag and their row counts."""
    as_json = wants_json(as_json, output)
    session = session_of(ctx)
    with session.reports(store) as reports:
        state = reports.status()
    if as_json:
        render.print_json(state.model_dump(mode="json"))
        return
    session.console.print(tables.status_table(state))


@projections_app.command("catch-up")
def catch_up(ctx: typer.Context, page_size: PageOpt = 500, as_json: JsonOpt = False, store: StoreOpt = None,
             output: FormatOpt = None) -> None:
    """Apply the events the report tables do not include yet."""
    _apply(ctx, store, wants_json(as_json, output), "catching up",
           lambda reports, progress: reports.catch_up(progress, page_size=page_size),
           lambda applied, state: ({"applied": applied, "position": state.position, "lag": state.lag},
                                   f"applied {applied} event(s); position {state.position}, lag {state.lag}"))


@projections_app.command("rebuild")
def rebuild(ctx: typer.Context, page_size: PageOpt = 500, as_json: JsonOpt = False, store: StoreOpt = None,
            output: FormatOpt = None) -> None:
    """Drop the report tables and fill them again from the whole log."""
    _apply(ctx, store, wants_json(as_json, output), "rebuilding",
           lambda reports, progress: reports.rebuild(progress, page_size=page_size),
           lambda applied, state: (
               {"applied": applied, "position": state.position, "generation": state.generation},
               f"rebuilt from {applied} event(s); position {state.position}, generation {state.generation}"))


def _apply(ctx: typer.Context, store: str | None, as_json: bool, doing: str,
           apply: Callable[[Reports, Any], int], outcome: Callable[[int, ProjectionStatus], tuple[Any, str]]) -> None:
    """Apply events to the report tables with a progress bar, then say where they stand (JSON or a line)."""
    session = session_of(ctx)
    with session.reports(store) as reports:
        applied = tables.with_progress(session.console, doing, lambda p: apply(reports, p), show=not as_json)
        data, line = outcome(applied, reports.status())
    if as_json:
        render.print_json(data)
    else:
        session.console.print(line)


def report(
    ctx: typer.Context,
    catch_up_first: Annotated[bool, typer.Option(
        "--catch-up/--no-catch-up",
        help="Apply new events before reporting (default) or report the tables as they are.",
    )] = True,
    as_json: JsonOpt = False,
    store: StoreOpt = None,
    output: FormatOpt = None,
) -> None:
    """Summarise the runs: runs by status, phase durations, tokens and cost by workflow."""
    as_json = wants_json(as_json, output)
    session = session_of(ctx)
    with session.reports(store) as reports:
        if catch_up_first:
            reports.catch_up()
        summary = reports.summary()
    if as_json:
        render.print_json(summary.model_dump(mode="json"))
        return
    for table in tables.summary_tables(summary):
        session.console.print(table)


report_app = App(add_completion=False, pretty_exceptions_enable=False)
"""``report`` alone as a typer app (for running it without the main command)."""
report_app.command("report")(report)
