"""``phaseledger projections status|catch-up|rebuild`` and ``phaseledger report``.

``projections_app`` is a typer app mounted by the main command
(``app.add_typer(projections_app, name="projections")``) and :func:`report` a command
(``app.command("report")(report)``). The store is the main command's ``--store`` (then
``$PHASELEDGER_STORE``, then ``sqlite:///phaseledger.db``); ``--store URL`` after the
command name is kept as an alias. On a terminal the output is a rich table (and rebuilds
show a progress bar); otherwise it is plain text; ``--json`` prints JSON for scripts, as
every ``phaseledger`` command does (``--format json`` is a deprecated alias). A SQLite
file that does not exist is refused, not created.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from phaseledger.domain.errors import PhaseledgerError

if TYPE_CHECKING:
    from phaseledger.projections.models import ProjectionStatus, SummaryReport
    from phaseledger.projections.reports import Reports


class OutputFormat(str, enum.Enum):
    """How a command prints its result."""

    table = "table"
    json = "json"


StoreOpt = Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer reads the annotation
    "--store", metavar="URL", show_default=False, hidden=True,
    help="Store URL; an alias of the global --store (given before the command).",
)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
FormatOpt = Annotated[Optional[OutputFormat], typer.Option(  # noqa: UP045 - typer reads the annotation
    "--format", hidden=True, show_default=False, help="Deprecated: use --json.")]
PageOpt = Annotated[int, typer.Option("--page-size", min=1, metavar="N", help="Events applied per transaction.")]

projections_app = typer.Typer(
    name="projections",
    help="Run the report projections: see where they stand, catch them up, rebuild them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _console() -> Console:
    probe = Console()
    if probe.is_terminal:
        return Console(highlight=False)
    return Console(highlight=False, no_color=True, width=240, soft_wrap=True)


def _store_url(ctx: typer.Context, store: str | None) -> str | None:
    if store:
        return store
    root = ctx.find_root().obj  # the main command's --store, when mounted there
    return getattr(root, "store", None)


def _wants_json(as_json: bool, output: OutputFormat | None) -> bool:
    """``--json``, or the deprecated ``--format json`` (which says so on stderr)."""
    if output is not None:
        from phaseledger.cli._session import warn_deprecated

        warn_deprecated(f"--format {output.value}", "--json for JSON (a table is the default)")
    return as_json or output is OutputFormat.json


@contextmanager
def _reports(ctx: typer.Context, store: str | None) -> Iterator[Reports]:
    from phaseledger.cli._session import refuse_missing_store
    from phaseledger.projections.reports import Reports

    url = _store_url(ctx, store)
    try:
        refuse_missing_store(url)
        reports = Reports(url)
    except PhaseledgerError as exc:
        _fail(exc)
    try:
        yield reports
    except PhaseledgerError as exc:
        _fail(exc)
    finally:
        reports.close()


def _fail(exc: BaseException) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise typer.Exit(1)


def _json(value: Any) -> None:
    print(json.dumps(value, default=str, indent=2, ensure_ascii=False))


@projections_app.command("status")
def status(ctx: typer.Context, as_json: JsonOpt = False, store: StoreOpt = None, output: FormatOpt = None) -> None:
    """Show the position of the report tables in the log, their lag and their row counts."""
    as_json = _wants_json(as_json, output)
    with _reports(ctx, store) as reports:
        state = reports.status()
    if as_json:
        _json(state.model_dump(mode="json"))
        return
    _console().print(_status_table(state))


def _status_table(state: ProjectionStatus) -> Table:
    table = Table(title="report projection", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("store", state.store)
    table.add_row("position", "none (empty)" if state.position is None else str(state.position))
    table.add_row("lag", f"{state.lag} event(s) behind" if state.lag else "up to date")
    table.add_row("generation", str(state.generation))
    layout = f"v{state.schema_version}"
    if state.outdated:
        layout += f" (outdated: this version uses v{state.expected_schema_version}; run `projections rebuild`)"
    table.add_row("layout", layout)
    for name, count in state.rows.items():
        table.add_row(name, f"{count} row(s)")
    return table


@projections_app.command("catch-up")
def catch_up(ctx: typer.Context, page_size: PageOpt = 500, as_json: JsonOpt = False, store: StoreOpt = None,
             output: FormatOpt = None) -> None:
    """Apply the events the report tables do not include yet."""
    as_json = _wants_json(as_json, output)
    with _reports(ctx, store) as reports:
        applied = _with_progress(reports, "catching up", lambda p: reports.catch_up(p, page_size=page_size), as_json)
        state = reports.status()
    if as_json:
        _json({"applied": applied, "position": state.position, "lag": state.lag})
        return
    _console().print(f"applied {applied} event(s); position {state.position}, lag {state.lag}")


@projections_app.command("rebuild")
def rebuild(ctx: typer.Context, page_size: PageOpt = 500, as_json: JsonOpt = False, store: StoreOpt = None,
            output: FormatOpt = None) -> None:
    """Drop the report tables and fill them again from the whole log."""
    as_json = _wants_json(as_json, output)
    with _reports(ctx, store) as reports:
        applied = _with_progress(reports, "rebuilding", lambda p: reports.rebuild(p, page_size=page_size), as_json)
        state = reports.status()
    if as_json:
        _json({"applied": applied, "position": state.position, "generation": state.generation})
        return
    _console().print(f"rebuilt from {applied} event(s); position {state.position}, generation {state.generation}")


def _with_progress(reports: Reports, label: str, work: Any, as_json: bool) -> int:
    console = _console()
    if as_json or not console.is_terminal:
        return int(work(None))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return int(work(progress))


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
    as_json = _wants_json(as_json, output)
    with _reports(ctx, store) as reports:
        if catch_up_first:
            reports.catch_up()
        summary = reports.summary()
    if as_json:
        _json(summary.model_dump(mode="json"))
        return
    console = _console()
    for table in _summary_tables(summary):
        console.print(table)


def _summary_tables(summary: SummaryReport) -> list[Table]:
    runs = Table(title="runs by status")
    runs.add_column("status")
    runs.add_column("runs", justify="right")
    for status_name, count in summary.runs_by_status.items():
        runs.add_row(status_name, str(count))
    runs.add_row("total", str(sum(summary.runs_by_status.values())))

    phases = Table(title="phase durations (finished visits)")
    for name, justify in (("workflow", "left"), ("phase", "left"), ("visits", "right"), ("mean s", "right"),
                          ("max s", "right"), ("total s", "right")):
        phases.add_column(name, justify=justify)  # type: ignore[arg-type]
    for p in summary.phases:
        phases.add_row(p.workflow, p.phase, str(p.visits), _num(p.mean_seconds), _num(p.max_seconds),
                       _num(p.total_seconds))

    usage = Table(title="tokens and cost by workflow")
    for name in ("workflow", "runs", "requests", "input tokens", "output tokens", "cost"):
        usage.add_column(name, justify="left" if name == "workflow" else "right")
    for w in summary.workflows:
        usage.add_row(w.workflow, str(w.runs), str(w.model_requests), str(w.input_tokens), str(w.output_tokens),
                      "-" if w.cost is None else f"{w.cost:.4f}")
    tables = [runs, phases, usage]
    if summary.lag:
        note = Table(show_header=False, box=None)
        note.add_row(f"{summary.lag} event(s) not included yet (run `phaseledger projections catch-up`)")
        tables.append(note)
    return tables


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


report_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
"""``report`` alone as a typer app (for running it without the main command)."""
report_app.command("report")(report)
