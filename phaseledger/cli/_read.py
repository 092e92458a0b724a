"""Commands that read the log: ``runs``, ``show``, ``history``, ``in-doubt``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from phaseledger.cli import _render as render
from phaseledger.cli._base import JsonOpt, RunArg, app, session_of
from phaseledger.cli._session import CommandError, Session

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine
    from phaseledger.engine.views import Run


@app.command()
def runs(
    ctx: typer.Context,
    status: Annotated[Optional[str], typer.Option(
        "--status", metavar="STATUS", help="Only runs with this status (running, waiting, sleeping, retrying, "
                                           "completed, failed, cancelled, or damaged: a stored row cannot be read).",
        show_default=False)] = None,
    workflow: Annotated[Optional[str], typer.Option(
        "--workflow", metavar="WORKFLOW", help="Only runs of this workflow.", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=1, metavar="N", help="Show at most this many runs (the latest).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON for scripts: a summary of each run (`show RUN --json` has its state).")] = False,
    full: Annotated[bool, typer.Option(
        "--full",
        help="With --json: each run's whole view, state and output included (what --json printed before).")] = False,
) -> None:
    """List the runs in the store, oldest first (damaged runs too, with status damaged)."""
    from phaseledger.domain.status import DAMAGED, STATUSES

    session = session_of(ctx)
    if status is not None and status not in (*STATUSES, DAMAGED):
        raise CommandError(f"unknown status {status!r}: use one of {', '.join((*STATUSES, DAMAGED))}")
    with session.engine() as engine, session.console.status("reading runs…"):
        found = engine.runs(status=status, workflow=workflow)
    if limit is not None:
        found = found[-limit:]
    if as_json:
        render.print_json([render.run_as_json(run) if full else render.run_summary_json(run) for run in found])
        return
    if not found:
        what = " ".join(filter(None, [status, f"{workflow!r}" if workflow else None]))
        session.console.print(f"no {what + ' ' if what else ''}runs in {session.store_url}")
        return
    render.emit(session.console, render.runs_table(session.console, found))


@app.command()
def show(
    ctx: typer.Context,
    run_id: RunArg,
    at: Annotated[Optional[int], typer.Option(
        "--at", min=1, metavar="VERSION", show_default=False,
        help="Show the run as it stood after this many events (see `history` for the numbers).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run: status, phase, state, output, recorded steps, model usage and last error.

    A damaged run (a stored row of it cannot be read) is shown as such, with the reason,
    and the command exits with status 1.
    """
    from phaseledger.domain.errors import CorruptEvent
    from phaseledger.domain.status import DAMAGED
    from phaseledger.engine.views import event_view

    session = session_of(ctx)
    with session.engine() as engine:
        try:
            run = _run_at(engine, run_id, at)
        except CorruptEvent:
            if at is not None:
                raise
            run = engine.get(run_id, allow_damaged=True)
        events = [event_view(e) for e in engine.store.events(run_id, lte=run.version)] if run.version else []
    if as_json:
        data = render.run_as_json(run)
        data["steps_recorded"] = [e.data for e in events if e.type == "StepRecorded"]
        render.print_json(data)
    else:
        _print_run(session, run, events, at=at)
    if run.status == DAMAGED:
        raise typer.Exit(1)


def _run_at(engine: Engine, run_id: str, at: int | None) -> Run:
    from phaseledger.domain.errors import CorruptEvent

    if at is None:
        return engine.get(run_id)
    try:
        head = engine.get(run_id).version
    except CorruptEvent as exc:  # a damaged run can be shown up to its unreadable row
        head = exc.version - 1
    if at > head:
        raise CommandError(f"run {run_id!r} has {head} readable events; --at must be between 1 and that")
    return engine.state_at(run_id, at)


def _print_run(session: Session, run: Run, events: list[Any], *, at: int | None) -> None:
    console = session.console
    title = f"run {run.run_id}" + (f" at version {at}" if at else "")
    console.print(f"[bold]{escape(title)}[/]" if console.is_terminal else title)
    rows = [
        ("workflow", f"{run.workflow} v{run.workflow_version}"),
        ("status", render.status_text(run.status)),
        *([("driver", escape(run.driver_status or ""))] if run.driver_status and at is None else []),
        ("phase", run.phase or "-"),
        ("events", str(run.version)),
        ("attempts", ", ".join(f"{phase}×{n}" for phase, n in run.attempts.items()) or "-"),
        ("steps", f"{run.steps} recorded" + (f", {run.replayed_steps} served from the log on resumes"
                                             if run.replayed_steps else "")),
        ("started", render.when(run.created_on)),
        ("updated", render.when(run.updated_on)),
    ]
    if run.finished_on:
        rows.append(("finished", render.when(run.finished_on)))
    if run.parent:
        rows.append(("forked from", render.compact(run.parent)))
    for doubt in run.in_doubt:
        rows.append(("in doubt", escape(f"step {doubt.name!r} (key {doubt.key}, idempotency key {doubt.effect_key}, "
                                        f"policy {doubt.policy}) since {render.when(doubt.since)}")))
    if run.awaits_effect_decision:
        rows.append(("waiting for", escape(f"a decision on an effect in doubt: phaseledger resolve {run.run_id} "
                                           "--happened [--result JSON] | --not-happened")))
    elif run.suspended:
        waits = [f"signal {run.suspended['signal']!r}" if run.suspended.get("signal") else "",
                 f"until {render.when(run.suspended['until'])}" if run.suspended.get("until") else ""]
        rows.append(("waiting for", " or ".join(w for w in waits if w) or run.suspended.get("reason", "")))
    for line in render.usage_lines(run):
        label, _, value = line.partition(": ")
        rows.append((label, value))
    if run.error:
        where = f" (in phase {run.error['phase']})" if run.error.get("phase") else ""
        rows.append(("last error", escape(f"{run.error.get('type')}: {run.error.get('message')}{where}")))
    grid = render.table(console, ["", ""])
    grid.show_header = False
    for label, value in rows:
        grid.add_row(f"[dim]{label}[/]" if console.is_terminal else label, value)
    render.emit(console, grid)
    console.print("state:")
    render.print_value(console, run.state)
    if run.output is not None:
        console.print("output:")
        render.print_value(console, run.output)
    if run.error and session.debug and run.error.get("traceback"):
        console.print(escape(run.error["traceback"]), soft_wrap=True)
    steps, cut = render.steps_table(console, events)
    if steps.row_count:
        console.print(f"recorded steps{f' (the last {steps.row_count}; {cut} earlier)' if cut else ''}:")
        render.emit(console, steps)


@app.command()
def history(ctx: typer.Context, run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Show a run's event log as a timeline (every event, in order)."""
    session = session_of(ctx)
    with session.engine() as engine:
        events = engine.history(run_id)
    if as_json:
        render.print_json([e.model_dump(mode="json") for e in events])
        return
    render.print_history(session.console, events, title=f"history of run {run_id}")


@app.command("in-doubt")
def in_doubt(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the steps with an external effect that are in doubt: intent recorded, outcome not.

    A step whose run is still driven is in flight; one whose driver is gone (orphaned), or
    whose run failed or waits for a decision, may or may not have happened. Decide a step
    of policy ``ask`` with `resolve`.
    """
    from phaseledger.domain.status import DAMAGED

    session = session_of(ctx)
    found: list[tuple[Run, Any]] = []
    with session.engine() as engine, session.console.status("reading runs…"):
        for listed in engine.runs():
            if listed.status == DAMAGED or listed.status in ("completed", "cancelled"):
                continue
            run = engine.get(listed.run_id)
            found.extend((run, doubt) for doubt in run.in_doubt)
    if as_json:
        render.print_json([{"run_id": run.run_id, "status": run.status, "driver_status": run.driver_status,
                            "awaits_decision": run.awaits_effect_decision, **doubt.model_dump(mode="json")}
                           for run, doubt in found])
        return
    if not found:
        session.console.print(f"no steps in doubt in {session.store_url}")
        return
    table = render.table(session.console, ["run", "status", "step", "key", "idempotency key", "policy", "since",
                                           "driver"])
    for run, doubt in found:
        status = "waiting for a decision" if run.awaits_effect_decision else run.status
        table.add_row(escape(run.run_id), status, escape(doubt.name), escape(doubt.key), escape(doubt.effect_key),
                      doubt.policy, render.when(doubt.since), escape(run.driver_status or "-"))
    render.emit(session.console, table)
