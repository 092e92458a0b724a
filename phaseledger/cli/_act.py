"""Commands that drive runs: ``resume``, ``retry``, ``signal``, ``cancel``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from phaseledger.cli import _render as render
from phaseledger.cli._base import JsonOpt, RunArg, app, session_of
from phaseledger.cli._session import CommandError, Session

StealOpt = Annotated[bool, typer.Option(
    "--steal", help="Take the run over even while another live process drives it (that process stops at its "
                    "next step; the step it was running may run twice).")]

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine
    from phaseledger.engine.views import Run


@app.command()
def resume(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[str]], typer.Argument(
        help="Run ids to resume.", show_default=False)] = None,
    all_runs: Annotated[bool, typer.Option(
        "--all", help="Resume every unfinished run that is due (crashed, woken or retry due).")] = False,
    steal: StealOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue runs from their logs: recorded steps are replayed, the rest runs live.

    Needs --workflows: the code of the runs' workflows. A run that another live process
    drives is refused (its owner is named) unless --steal is given.
    """
    session = session_of(ctx)
    if not run_ids and not all_runs:
        raise CommandError("name the runs to resume, or pass --all")
    if run_ids and all_runs:
        raise CommandError("pass run ids or --all, not both")
    with session.engine() as engine:
        targets = run_ids or _unfinished(engine)
        results = asyncio.run(_resume_many(session, engine, targets, strict=not all_runs, steal=steal))
    _report_resumed(session, results, as_json=as_json)
    if any(r["error"] for r in results):
        raise typer.Exit(1)


def _unfinished(engine: Engine) -> list[str]:
    """Unfinished runs that are not damaged and that no other live process drives now."""
    from phaseledger.domain.run import DAMAGED

    return [run.run_id for run in engine.runs()
            if not run.finished and run.status != DAMAGED and not (run.driving is not None and run.driving.live)]


async def _resume_many(session: Session, engine: Engine, run_ids: list[str], *, strict: bool,
                       steal: bool) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from phaseledger.domain.errors import PhaseledgerError, UnknownWorkflow

    results = []
    progress = Progress(TextColumn("resuming"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        console=session.console, transient=True,
                        disable=len(run_ids) < 2 or not session.console.is_terminal)
    with progress:
        task = progress.add_task("", total=len(run_ids))
        for run_id in run_ids:
            progress.update(task, description=run_id)
            before = await engine._call_store(engine.get, run_id)
            try:
                after = await engine.resume(run_id, steal=steal)
                error = None
            except UnknownWorkflow as exc:
                if strict:
                    raise session.explain_unknown_workflow(exc) from None
                after, error = before, str(session.explain_unknown_workflow(exc))
            except PhaseledgerError as exc:
                if strict:
                    raise
                after, error = before, str(exc)
            results.append({
                "run_id": run_id, "before": before.status, "status": after.status, "phase": after.phase,
                "replayed": after.replayed_steps - before.replayed_steps,
                "executed": after.steps - before.steps,
                "tokens_saved": after.usage.tokens_saved - before.usage.tokens_saved,
                "error": error,
            })
            progress.advance(task)
    return results


def _report_resumed(session: Session, results: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        render.print_json(results)
        return
    console = session.console
    if not results:
        console.print("no unfinished runs to resume")
        return
    grid = render.table(console, ["run", "was", "now", "phase", "replayed", "executed", "tokens saved"])
    for r in results:
        grid.add_row(render.escape(r["run_id"]), r["before"], render.status_text(r["status"]), r["phase"] or "-",
                     str(r["replayed"]), str(r["executed"]), str(r["tokens_saved"]))
    render.emit(console, grid)
    for r in results:
        if r["error"]:
            render.print_error(f"{r['run_id']}: {r['error']}")


@app.command()
def retry(ctx: typer.Context, run_id: RunArg, steal: StealOpt = False, as_json: JsonOpt = False) -> None:
    """Re-enter the failed phase of a failed run, keeping the steps it recorded.

    Needs --workflows.
    """
    from phaseledger.domain.errors import UnknownWorkflow

    session = session_of(ctx)
    with session.engine() as engine:
        try:
            run = asyncio.run(engine.retry(run_id, steal=steal))
        except UnknownWorkflow as exc:
            raise session.explain_unknown_workflow(exc) from None
    _report_run(session, run, "retried", as_json=as_json)


@app.command()
def signal(
    ctx: typer.Context,
    run_id: RunArg,
    name: Annotated[str, typer.Argument(help="The signal's name.", show_default=False)],
    data: Annotated[Optional[str], typer.Option(
        "--data", metavar="JSON", show_default=False,
        help="The payload as JSON, or @file.json to read it from a file.")] = None,
    signal_id: Annotated[Optional[str], typer.Option(
        "--id", show_default=False, help="A signal id: sending twice with one id delivers once.")] = None,
    drive: Annotated[bool, typer.Option(
        "--resume", help="Drive the run right away instead of leaving it to a worker.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send a signal to a run; a run waiting for it becomes runnable.

    Needs --workflows (payloads are checked against the workflow's signal models).
    """
    from phaseledger.domain.errors import UnknownWorkflow

    session = session_of(ctx)
    payload = _parse_json(data, "--data") if data is not None else None
    with session.engine() as engine:
        try:
            run = asyncio.run(engine.signal(run_id, name, payload, signal_id=signal_id))
            if drive and not run.finished:
                run = asyncio.run(engine.resume(run_id))
        except UnknownWorkflow as exc:
            raise session.explain_unknown_workflow(exc) from None
    _report_run(session, run, f"signal {name!r} sent to", as_json=as_json)


def _parse_json(text: str, option: str) -> Any:
    source = option
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        if not path.is_file():
            raise CommandError(f"{option}: file {str(path)!r} does not exist")
        source, text = f"{option} file {str(path)!r}", path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


@app.command()
def cancel(
    ctx: typer.Context,
    run_id: RunArg,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the log.")] = "cancelled from the command line",
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run: it stops at its next step boundary and never resumes."""
    session = session_of(ctx)
    with session.engine() as engine:
        run = asyncio.run(engine.cancel(run_id, reason))
    _report_run(session, run, "cancelled", as_json=as_json)


def _report_run(session: Session, run: Run, did: str, *, as_json: bool) -> None:
    if as_json:
        render.print_json(render.run_as_json(run))
        return
    line = f"{did} run {render.escape(run.run_id)}: {render.status_text(run.status)}, phase {run.phase or '-'}"
    if run.replayed_steps:
        line += f", {run.replayed_steps} steps served from the log"
    session.console.print(line)
    if run.error and run.status == "failed":
        session.console.print(render.escape(f"error: {run.error.get('type')}: {run.error.get('message')}"))
