"""``phaseledger check``: the deploy gate, before new workflow code replaces the running one.

Exit statuses: 0 no unfinished run would break; 4 some would (the table or ``--json``
says which and why); 1 an error (the store cannot be read, the module cannot be imported).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from phaseledger.cli import _render as render
from phaseledger.cli._base import JsonOpt, app, session_of
from phaseledger.cli._session import CommandError, load_workflows

if TYPE_CHECKING:
    from rich.console import Console

    from phaseledger.deploys import CheckReport, RunCompatibility

WOULD_BREAK = 4
"""The exit status of a check that found runs the new code would break."""

VERDICT_STYLES = {"compatible": "green", "upcast": "cyan", "pinned": "yellow", "diverges": "red", "fails": "red"}


@app.command()
def check(
    ctx: typer.Context,
    workflows: Annotated[Optional[list[str]], typer.Option(
        "--workflows", "-w", show_default=False, metavar="MODULE",
        help="The new code: module(s) defining every workflow version it registers (default: the "
             "--workflows given before the command).")] = None,
    store: Annotated[Optional[str], typer.Option(
        "--store", show_default=False, metavar="URL",
        help="The store to check (default: the --store given before the command, or $PHASELEDGER_STORE).")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every run, compatible ones too.")] = False,
    limit: Annotated[int, typer.Option(
        "--limit", min=1, metavar="N", help="Runs listed at most (breaking runs first).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Check the runs of a store against new workflow code before deploying it; nothing is written.

    Every unfinished run is replayed against the new code, executing nothing: recorded calls
    are served from the log, and the first call that would run live ends the replay. Each
    run is [bold]compatible[/], compatible after an [bold]upcast[/] of its recorded data,
    [bold]pinned[/] to its old workflow version (breaking if the new code drops it),
    [bold]diverges[/] at a sequence (the recorded and the new call side by side) or
    [bold]fails[/]. Exits 4 when any run would break. The versions table says which old
    versions no run needs any more (safe to retire). An encrypted store needs
    $PHASELEDGER_CIPHER_KEY.
    """
    from phaseledger.cli._session import refuse_missing_store
    from phaseledger.deploys import check_deploy

    session = session_of(ctx)
    specs = list(workflows or session.workflow_modules)
    if not specs:
        raise CommandError("check needs the new code: pass --workflows MODULE (the module about to be deployed)")
    loaded: list[Any] = []
    for spec in specs:
        for workflow in load_workflows(spec):
            if all(workflow is not other for other in loaded):
                loaded.append(workflow)
    url = store or session.store
    refuse_missing_store(url)
    report = asyncio.run(check_deploy(url, loaded))
    if as_json:
        render.print_json(report.model_dump(mode="json"))
    else:
        print_report(session.console, report, show_all=show_all, limit=limit)
    if not report.ok:
        raise typer.Exit(WOULD_BREAK)


def _verdict(run: RunCompatibility) -> str:
    text = run.verdict if run.verdict != "pinned" else f"pinned v{run.workflow_version}"
    if run.verdict == "pinned" and not run.version_registered:
        text += " (not registered)"
    style = "red" if run.breaking else VERDICT_STYLES[run.verdict]
    return f"[{style}]{text}[/]"


def _call(call: Any) -> str:
    if call is None:
        return "-"
    text = render.call_label(call.kind, call.name)
    return escape(f"{text} [{call.fingerprint}]" if call.fingerprint else text)


def _cut(text: str, limit: int) -> str:
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


def print_report(console: Console, report: CheckReport, *, show_all: bool = False, limit: int = 50) -> None:
    """The check's summary, its versions and the runs that need a look, as tables."""
    summary = render.table(console, ["verdict", "runs"], title="unfinished runs")
    for verdict, count in report.counts.items():
        summary.add_row(verdict, str(count))
    render.emit(console, summary)
    console.print()
    versions = render.table(console, ["workflow", "version", "registered", "unfinished runs", "status"],
                            title="workflow versions")
    for use in report.versions:
        if use.latest:
            state = "latest: new runs start here"
        elif use.safe_to_retire:
            state = "safe to retire"
        elif use.registered:
            state = "needed by unfinished runs"
        else:
            state = "[red]needed, not registered[/]" if use.unfinished_runs else "not registered"
        versions.add_row(use.workflow, str(use.version), "yes" if use.registered else "no",
                         str(use.unfinished_runs), state)
    render.emit(console, versions)
    shown = sorted((r for r in report.runs if show_all or r.verdict != "compatible"),
                   key=lambda r: (not r.breaking, r.verdict == "pinned"))
    if shown:
        console.print()
        runs = render.table(console, ["run", "workflow", "phase", "verdict", "seq", "recorded", "new code", "detail"],
                            title="runs")
        for run in shown[:limit]:
            runs.add_row(
                escape(run.run_id), f"{run.workflow}@{run.workflow_version}", run.phase or "-", _verdict(run),
                "-" if run.sequence is None else str(run.sequence), _call(run.recorded), _call(run.new),
                _cut(run.detail, 160),
            )
        render.emit(console, runs)
        if len(shown) > limit:
            console.print(f"... and {len(shown) - limit} more (--limit N, or --json for all)")
    if report.unreadable:
        console.print(f"[red]{len(report.unreadable)} run(s) cannot be read and were not checked:[/] "
                      + ", ".join(report.unreadable[:10]))
    console.print()
    broken = report.breaking()
    if broken:
        console.print(f"[red]{len(broken)} of {len(report.runs)} unfinished run(s) would break: do not deploy "
                      "this code as it is[/]")
    else:
        console.print(f"[green]ok: none of {len(report.runs)} unfinished run(s) would break[/]")
