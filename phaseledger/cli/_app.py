"""The command tree of ``phaseledger`` and its entry point.

Every command opens the engine on ``--store`` (or ``$PHASELEDGER_STORE``), does one
thing and closes it. Errors print one line on stderr and exit with status 1 (2 for a
wrong command line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from phaseledger.cli import _render as render
from phaseledger.cli._session import WORKFLOWS_ENV_VAR, CommandError, Session, make_console

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine
    from phaseledger.engine.views import Run

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


def _session(ctx: typer.Context) -> Session:
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


# -- reading ----------------------------------------------------------------------------


@app.command()
def runs(
    ctx: typer.Context,
    status: Annotated[Optional[str], typer.Option(
        "--status", help="Only runs with this status (running, waiting, sleeping, retrying, "
                         "completed, failed, cancelled).", show_default=False)] = None,
    workflow: Annotated[Optional[str], typer.Option(
        "--workflow", help="Only runs of this workflow.", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=1, help="Show at most this many runs (the latest).", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the runs in the store, oldest first."""
    from phaseledger.domain.run import STATUSES

    session = _session(ctx)
    if status is not None and status not in STATUSES:
        raise CommandError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    with session.engine() as engine, session.console.status("reading runs…"):
        found = engine.runs(status=status, workflow=workflow)
    if limit is not None:
        found = found[-limit:]
    if as_json:
        render.print_json([render.run_as_json(run) for run in found])
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
    """Show a run: status, phase, state, output, recorded steps, model usage and last error."""
    session = _session(ctx)
    with session.engine() as engine:
        run = _run_at(engine, run_id, at)
        events = [e for e in engine.history(run_id) if e.version <= run.version]
    if as_json:
        data = render.run_as_json(run)
        data["steps_recorded"] = [e.data for e in events if e.type == "StepRecorded"]
        render.print_json(data)
        return
    _print_run(session, run, events, at=at)


def _run_at(engine: Engine, run_id: str, at: int | None) -> Run:
    current = engine.get(run_id)
    if at is None:
        return current
    if at > current.version:
        raise CommandError(f"run {run_id!r} has {current.version} events; --at must be between 1 and that")
    return engine.state_at(run_id, at)


def _print_run(session: Session, run: Run, events: list[Any], *, at: int | None) -> None:
    console = session.console
    title = f"run {run.run_id}" + (f" at version {at}" if at else "")
    console.print(f"[bold]{render.escape(title)}[/]" if console.is_terminal else title)
    rows = [
        ("workflow", f"{run.workflow} v{run.workflow_version}"),
        ("status", render.status_text(run.status)),
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
    if run.suspended:
        waits = [f"signal {run.suspended['signal']!r}" if run.suspended.get("signal") else "",
                 f"until {run.suspended['until']}" if run.suspended.get("until") else ""]
        rows.append(("waiting for", " or ".join(w for w in waits if w) or run.suspended.get("reason", "")))
    for line in render.usage_lines(run):
        label, _, value = line.partition(": ")
        rows.append((label, value))
    if run.error:
        where = f" (in phase {run.error['phase']})" if run.error.get("phase") else ""
        rows.append(("last error", render.escape(f"{run.error.get('type')}: {run.error.get('message')}{where}")))
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
        console.print(render.escape(run.error["traceback"]), soft_wrap=True)
    steps, cut = render.steps_table(console, events)
    if steps.row_count:
        console.print(f"recorded steps{f' (the last {steps.row_count}; {cut} earlier)' if cut else ''}:")
        render.emit(console, steps)


@app.command()
def history(ctx: typer.Context, run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Show a run's event log as a timeline (every event, in order)."""
    session = _session(ctx)
    with session.engine() as engine:
        events = engine.history(run_id)
    if as_json:
        render.print_json([e.model_dump(mode="json") for e in events])
        return
    render.emit(session.console, render.history_table(session.console, events, title=f"history of run {run_id}"))


# -- acting -----------------------------------------------------------------------------


@app.command()
def resume(
    ctx: typer.Context,
    run_ids: Annotated[Optional[list[str]], typer.Argument(
        help="Run ids to resume.", show_default=False)] = None,
    all_runs: Annotated[bool, typer.Option(
        "--all", help="Resume every unfinished run that is due (crashed, woken or retry due).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Continue runs from their logs: recorded steps are replayed, the rest runs live.

    Needs --workflows: the code of the runs' workflows.
    """
    session = _session(ctx)
    if not run_ids and not all_runs:
        raise CommandError("name the runs to resume, or pass --all")
    if run_ids and all_runs:
        raise CommandError("pass run ids or --all, not both")
    with session.engine() as engine:
        targets = run_ids or _unfinished(engine)
        results = asyncio.run(_resume_many(session, engine, targets, strict=not all_runs))
    _report_resumed(session, results, as_json=as_json)
    if any(r["error"] for r in results):
        raise typer.Exit(1)


def _unfinished(engine: Engine) -> list[str]:
    return [run.run_id for run in engine.runs() if not run.finished]


async def _resume_many(session: Session, engine: Engine, run_ids: list[str], *, strict: bool) -> list[dict[str, Any]]:
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
                after = await engine.resume(run_id)
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
            _err(f"{r['run_id']}: {r['error']}")


@app.command()
def retry(ctx: typer.Context, run_id: RunArg, as_json: JsonOpt = False) -> None:
    """Re-enter the failed phase of a failed run, keeping the steps it recorded.

    Needs --workflows.
    """
    from phaseledger.domain.errors import UnknownWorkflow

    session = _session(ctx)
    with session.engine() as engine:
        try:
            run = asyncio.run(engine.retry(run_id))
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

    session = _session(ctx)
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
    session = _session(ctx)
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


# -- workers, diagrams, comparisons, the demo ----------------------------------------------


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Runs driven at once.")] = 10,
    lease: Annotated[float, typer.Option(
        "--lease", min=1.0, metavar="SECONDS", help="How long a claim on a run lasts unless renewed.")] = 30.0,
    poll: Annotated[float, typer.Option(
        "--poll", min=0.01, metavar="SECONDS", help="How often to look for runnable runs when idle.")] = 0.5,
    until_idle: Annotated[bool, typer.Option(
        "--until-idle", help="Exit once no run is runnable now (for cron jobs and tests).")] = False,
    worker_id: Annotated[Optional[str], typer.Option(
        "--id", show_default=False, help="This worker's id in leases and logs (default: host:pid:random).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every claim and drive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Drive every runnable run of the store: new, crashed, woken by a signal or timer, retry due.

    Stops gracefully on Ctrl-C or SIGTERM (runs reach their next step boundary and are
    released); a second signal stops at once. Any number of workers can share a PostgreSQL
    store; a SQLite store takes one. Needs --workflows.
    """
    import logging

    from phaseledger.engine.worker import run_worker

    session = _session(ctx)
    workflows = session.workflows()
    if not workflows:
        raise CommandError("a worker needs the workflows it may drive: pass --workflows MODULE")
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not as_json:
        names = ", ".join(sorted({f"{w.name}@{w.version}" for w in workflows}))
        mode = "until idle" if until_idle else "until Ctrl-C or SIGTERM"
        session.console.print(f"worker on {_redacted(session.store_url)} for {names} ({concurrency} at once, {mode})")
    stats = asyncio.run(run_worker(
        session.store_url, workflows, concurrency=concurrency, lease_seconds=lease, poll_interval=poll,
        until_idle=until_idle, worker_id=worker_id,
    ))
    data = dataclasses.asdict(stats)
    if as_json:
        render.print_json(data)
    else:
        session.console.print("worker stopped: " + ", ".join(f"{k} {v}" for k, v in data.items()))


def _redacted(url: str) -> str:
    from phaseledger.engine.store import StoreURL

    return StoreURL.parse(url).redacted


@app.command()
def diff(
    ctx: typer.Context,
    run_a: Annotated[str, typer.Argument(help="A run id.", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="Another run of the same workflow (a fork, a rerun).",
                                         show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Compare two runs of one workflow: where their paths and calls part ways, state, output, tokens."""
    session = _session(ctx)
    with session.engine() as engine:
        comparison = engine.compare(run_a, run_b)
    if as_json:
        data = comparison.model_dump(mode="json")
        data["identical"] = comparison.identical
        render.print_json(data)
        return
    render.print_comparison(session.console, comparison)


@app.command()
def diagram(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="The workflow's name.", show_default=False)],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="mermaid (text, needs nothing installed), svg or png (need Graphviz).")] = "mermaid",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", show_default=False,
        help="Write to this file (default for svg/png: WORKFLOW.FORMAT; Mermaid prints).")] = None,
    version: Annotated[Optional[int], typer.Option(
        "--version", min=1, show_default=False, help="The workflow version (default: the latest).")] = None,
) -> None:
    """Draw a workflow's state machine (phases and guarded transitions).

    Needs --workflows.
    """
    from phaseledger.cli import _diagram

    session = _session(ctx)
    fmt = fmt.lower()
    if fmt not in _diagram.FORMATS:
        raise CommandError(f"unknown diagram format {fmt!r}: use {', '.join(_diagram.FORMATS)}")
    definition = session.workflow(workflow, version)
    if fmt == "mermaid":
        text = _diagram.mermaid(definition)
        if output is None:
            print(text, end="")
        else:
            output.write_text(text)
            session.console.print(f"wrote {output}")
        return
    data = _diagram.image(definition, fmt)
    target = output or Path(f"{definition.name}.{fmt}")
    target.write_bytes(data)
    session.console.print(f"wrote {target} ({len(data)} bytes)")


@app.command()
def demo(
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="MODEL", show_default=False,
        help="A pydantic-ai model name (e.g. openai:gpt-4o) to use a real provider; its API key must be set. "
             "Default: a deterministic local model, offline.")] = None,
    db: Annotated[Path, typer.Option("--db", help="The SQLite file to use (recreated).")] = Path("demo.db"),
) -> None:
    """Run the research workflow, kill its process part-way, and resume it from the log."""
    from phaseledger.demo.runner import run_demo

    run_demo(db=db, model=model, console=make_console())


def _mount_subsystem_commands() -> None:
    """Mount the commands that live next to their subsystems (projections and reports)."""
    from phaseledger.projections import cli as projections_cli

    app.add_typer(projections_cli.projections_app, name="projections")
    app.command("report")(projections_cli.report)


_mount_subsystem_commands()


# -- entry point --------------------------------------------------------------------------


def _err(message: str) -> None:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; errors print one line on stderr (a traceback with ``--debug``)."""
    from phaseledger.domain.errors import PhaseledgerError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("PHASELEDGER_DEBUG", "") not in ("", "0")
    try:
        app(args=args, prog_name="phaseledger")  # usage errors exit 2 with click's message
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)
    except PhaseledgerError as exc:
        if debug:
            raise
        _err(str(exc))
        sys.exit(1)
    except Exception as exc:  # an unexpected failure: still one line, the traceback on request
        if debug:
            raise
        _err(f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)
