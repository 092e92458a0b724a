"""Commands that drive runs: ``start``, ``resume``, ``retry``, ``signal``, ``resolve``, ``cancel``."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape

from phaseledger.cli import _render as render
from phaseledger.cli._base import JsonOpt, RunArg, WorkflowVersionOpt, app, session_of
from phaseledger.cli._drive import NowDriving, command_line, drive, exit_if_failed
from phaseledger.cli._session import CommandError, Session

StealOpt = Annotated[bool, typer.Option(
    "--steal", help="Take the run over even while another live process drives it (that process stops at its "
                    "next step; the step it was running may run twice).")]

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow
    from phaseledger.engine.engine import Engine
    from phaseledger.engine.views import Run


# -- start --------------------------------------------------------------------------------


@app.command()
def start(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="The workflow's name.", show_default=False)],
    input_: Annotated[Optional[str], typer.Option(
        "--input", metavar="JSON", show_default=False,
        help="The run's input (fields of the workflow's state) as a JSON object, or @file.json.")] = None,
    run_id: Annotated[Optional[str], typer.Option(
        "--run-id", metavar="ID", show_default=False, help="The new run's id (default: a random UUID).")] = None,
    drive_now: Annotated[bool, typer.Option(
        "--drive", help="Drive the run here until it completes, fails or waits, instead of leaving it to a "
                        "worker.")] = False,
    workflow_version: WorkflowVersionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a run of a workflow; a worker drives it, or --drive drives it right away.

    Needs --workflows. The store is created if it does not exist yet.
    """
    session = session_of(ctx)
    definition = session.workflow(workflow, workflow_version)
    data = _run_input(input_)
    run_id = run_id or str(uuid.uuid4())
    with session.engine(must_exist=False) as engine:
        run = _start(session, engine, definition, data, run_id, drive_now=drive_now)
    _print_run(session, run, "started", as_json=as_json)
    if not drive_now and not as_json:
        session.console.print(
            f"a worker drives it ({escape(command_line(session, 'worker'))}), "
            f"or drive it now: {escape(command_line(session, 'resume', run_id))}")
    exit_if_failed(session, [run])


def _run_input(text: str | None) -> dict[str, Any] | None:
    """The ``--input`` JSON: an object (the fields of the state), or None when not given."""
    if text is None:
        return None
    data = _parse_json(text, "--input")
    if not isinstance(data, dict):
        raise CommandError(f"--input must be a JSON object of the state's fields, not {type(data).__name__}")
    return data


def _start(session: Session, engine: Engine, workflow: Workflow[Any], data: dict[str, Any] | None, run_id: str,
           *, drive_now: bool) -> Run:
    """Start the run (and drive it with ``drive_now``); an existing id is an error naming ``resume``."""
    from phaseledger.domain.errors import RunExists

    try:
        if drive_now:
            return drive(session, engine.run(workflow, data, run_id=run_id), run_id)
        return asyncio.run(engine.start(workflow, data, run_id=run_id))
    except RunExists:
        raise CommandError(
            f"run {run_id!r} already exists: pick another --run-id, or continue it with "
            f"{command_line(session, 'resume', run_id)}") from None


# -- resume -------------------------------------------------------------------------------


@dataclass
class Resumed:
    """What resuming one run did (``run`` is None when it could not be resumed)."""

    run_id: str
    before: Run
    run: Run | None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The row ``resume --json`` prints for this run."""
        after = self.run or self.before
        return {
            "run_id": self.run_id, "before": self.before.status, "status": after.status, "phase": after.phase,
            "replayed": after.replayed_steps - self.before.replayed_steps,
            "executed": after.steps - self.before.steps,
            "tokens_saved": after.usage.tokens_saved - self.before.usage.tokens_saved,
            "error": self.error,
        }


@app.command()
def resume(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[str]], typer.Argument(
        metavar="RUN", help="Run ids to resume.", show_default=False)] = None,
    all_runs: Annotated[bool, typer.Option(
        "--all", help="Resume every unfinished run that is due: crashed or never driven, woken by its signal or "
                      "timer, or due for a retry. Runs still waiting, and runs a live process drives, are left "
                      "alone.")] = False,
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
    now = NowDriving()
    with session.engine() as engine:
        targets, not_due = (run_ids, 0) if run_ids else _due(engine)
        results = drive(session, _resume_many(session, engine, targets, strict=not all_runs, steal=steal, now=now),
                        now)
    _report_resumed(session, results, not_due=not_due, as_json=as_json)
    exit_if_failed(session, [r.run for r in results if r.run is not None],
                   errors=any(r.error for r in results))


def _due(engine: Engine) -> tuple[list[str], int]:
    """The unfinished runs that are due now, not damaged and that no other live process drives, and how
    many other unfinished runs are not due (still waiting for a signal, a timer or a retry)."""
    from phaseledger.domain.schedule import is_due
    from phaseledger.domain.status import DAMAGED

    due, not_due = [], 0
    for run in engine.runs():
        if run.finished or run.status == DAMAGED or (run.driving is not None and run.driving.live):
            continue
        if is_due(engine.store.load(run.run_id)):
            due.append(run.run_id)
        else:
            not_due += 1
    return due, not_due


async def _resume_many(session: Session, engine: Engine, run_ids: list[str], *, strict: bool, steal: bool,
                       now: NowDriving) -> list[Resumed]:
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
            now.run_id = run_id
            before = await engine.get_async(run_id)
            try:
                results.append(Resumed(run_id, before, await engine.resume(run_id, steal=steal)))
            except UnknownWorkflow as exc:
                if strict:
                    raise session.explain_unknown_workflow(exc) from None
                results.append(Resumed(run_id, before, None, str(session.explain_unknown_workflow(exc))))
            except PhaseledgerError as exc:
                if strict:
                    raise
                results.append(Resumed(run_id, before, None, str(exc)))
            progress.advance(task)
    return results


def _report_resumed(session: Session, results: list[Resumed], *, not_due: int, as_json: bool) -> None:
    if as_json:
        render.print_json([r.as_json() for r in results])
        return
    console = session.console
    if not results:
        waiting = f" ({not_due} unfinished waiting for a signal, a timer or a retry time)" if not_due else ""
        console.print(f"no runs are due to resume{waiting}")
        return
    grid = render.table(console, ["run", "was", "now", "phase", "replayed", "executed", "tokens saved"])
    for r in results:
        row = r.as_json()
        grid.add_row(escape(r.run_id), row["before"], render.status_text(row["status"]), row["phase"] or "-",
                     str(row["replayed"]), str(row["executed"]), str(row["tokens_saved"]))
    render.emit(console, grid)
    for r in results:
        if r.error:
            render.print_error(f"{r.run_id}: {r.error}")


# -- retry, signal, cancel ------------------------------------------------------------------


@app.command()
def retry(ctx: typer.Context, run_id: RunArg, steal: StealOpt = False, as_json: JsonOpt = False) -> None:
    """Re-enter the failed phase of a failed run, keeping the steps it recorded.

    Needs --workflows. Exits with status 3 when the run fails again.
    """
    from phaseledger.domain.errors import UnknownWorkflow

    session = session_of(ctx)
    with session.engine() as engine:
        try:
            run = drive(session, engine.retry(run_id, steal=steal), run_id)
        except UnknownWorkflow as exc:
            raise session.explain_unknown_workflow(exc) from None
    _print_run(session, run, "retried", as_json=as_json)
    exit_if_failed(session, [run])


@app.command()
def signal(
    ctx: typer.Context,
    run_id: RunArg,
    name: Annotated[str, typer.Argument(metavar="SIGNAL", help="The signal's name.", show_default=False)],
    data: Annotated[Optional[str], typer.Option(
        "--data", metavar="JSON", show_default=False,
        help="The payload as JSON, or @file.json to read it from a file.")] = None,
    signal_id: Annotated[Optional[str], typer.Option(
        "--id", metavar="ID", show_default=False, help="A signal id: sending twice with one id delivers once.")] = None,
    drive_now: Annotated[bool, typer.Option(
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
            if data is None:
                _refuse_missing_payload(engine, run_id, name)
            repeated = signal_id is not None and engine.signal_received(run_id, signal_id)
            run = drive(session, _send(engine, run_id, name, payload, signal_id, drive_now=drive_now), run_id)
        except UnknownWorkflow as exc:
            raise session.explain_unknown_workflow(exc) from None
    what = (f"signal {name!r} (id {signal_id!r}) was already delivered, not sent again, to" if repeated
            else f"signal {name!r} sent to")
    _print_run(session, run, what, as_json=as_json)
    exit_if_failed(session, [run])


async def _send(engine: Engine, run_id: str, name: str, payload: Any, signal_id: str | None, *,
                drive_now: bool) -> Run:
    """Append the signal, then (``drive_now``) drive the run."""
    run = await engine.signal(run_id, name, payload, signal_id=signal_id)
    if drive_now and not run.finished:
        run = await engine.resume(run_id)
    return run


@app.command()
def resolve(
    ctx: typer.Context,
    run_id: RunArg,
    happened: Annotated[Optional[bool], typer.Option(
        "--happened/--not-happened", show_default=False,
        help="The effect happened (its result is --result), or it did not (the step runs again, same key).")] = None,
    result: Annotated[Optional[str], typer.Option(
        "--result", metavar="JSON", show_default=False,
        help="With --happened: the step's result as JSON, or @file.json.")] = None,
    key: Annotated[Optional[str], typer.Option(
        "--key", metavar="KEY", show_default=False,
        help="The step's key (see `in-doubt`); by default the one the run waits for.")] = None,
    drive_now: Annotated[bool, typer.Option(
        "--resume", help="Drive the run right away instead of leaving it to a worker (needs --workflows).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Decide a step in doubt whose policy is ``ask``: send the decision the suspended run awaits."""
    if happened is None:
        raise CommandError("say what happened: --happened [--result JSON] or --not-happened")
    if result is not None and not happened:
        raise CommandError("--result goes with --happened only")
    value = _parse_json(result, "--result") if result is not None else None
    session = session_of(ctx)
    with session.engine() as engine:
        run = drive(session, _resolve(engine, run_id, happened, value, key, drive_now=drive_now), run_id)
    what = "decided (it happened) for" if happened else "decided (it did not happen: it runs again) for"
    _print_run(session, run, f"effect in doubt {what}", as_json=as_json)
    exit_if_failed(session, [run])


async def _resolve(engine: Engine, run_id: str, happened: bool, result: Any, key: str | None, *,
                   drive_now: bool) -> Run:
    run = await engine.resolve(run_id, happened=happened, result=result, key=key)
    if drive_now and not run.finished:
        run = await engine.resume(run_id)
    return run


def _refuse_missing_payload(engine: Engine, run_id: str, name: str) -> None:
    """Refuse a signal sent without ``--data`` when the workflow declares a payload model for it."""
    run = engine.get(run_id)
    workflow = engine.registry.workflows.get((run.workflow, run.workflow_version))
    model = workflow.signals.get(name) if workflow is not None else None
    if model is None:
        return
    fields = ", ".join(
        f"{field}" + ("" if info.is_required() else " (optional)") for field, info in model.model_fields.items()
    )
    raise CommandError(
        f"signal {name!r} of workflow {run.workflow!r} carries a {model.__name__} payload "
        f"({fields or 'no fields'}): pass it with --data JSON or --data @file.json")


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
    reason: Annotated[str, typer.Option(
        "--reason", metavar="TEXT", help="Why; kept in the log.")] = "cancelled from the command line",
    as_json: JsonOpt = False,
) -> None:
    """Cancel a run: it stops at its next step boundary and never resumes."""
    session = session_of(ctx)
    with session.engine() as engine:
        run = asyncio.run(engine.cancel(run_id, reason))
    _print_run(session, run, "cancelled", as_json=as_json)


def _print_run(session: Session, run: Run, did: str, *, as_json: bool) -> None:
    """The run as JSON, or one line saying what was done and where the run stands."""
    if as_json:
        render.print_json(render.run_as_json(run))
        return
    _report_run(session, run, did)


def _report_run(session: Session, run: Run, did: str) -> None:
    line = f"{did} run {escape(run.run_id)}: {render.status_text(run.status)}, phase {run.phase or '-'}"
    if run.replayed_steps:
        line += f", {run.replayed_steps} steps served from the log"
    session.console.print(line)
