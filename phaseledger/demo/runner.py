"""The demo's orchestration: start, kill for real, resume in a new process, explain.

The parent process never drives the run. It starts a child process that runs the
research workflow, follows the run's events in the SQLite file as the child appends
them, and sends the child SIGKILL part-way through a phase. A second child process then
resumes the run from the log. Everything the parent prints about replay is read from the
log and the :class:`~phaseledger.Run` view, not from the children's say-so.

It uses the public API only: :mod:`phaseledger` for the runs and :mod:`phaseledger.cli`'s
rendering functions to show them as the command does (the ``phaseledger demo`` command
runs this module as a program and imports nothing from it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phaseledger import Engine, PhaseledgerError, Run
from phaseledger.testing.dispatchers import (
    DispatchSetup,
    available,
    open_dispatch,
    prefect_test_server,
    temporal_dev_server,
)

if TYPE_CHECKING:
    from rich.console import Console

    from phaseledger import RecordedEvent, Workflow

ENGINES = ("dbos", "temporal", "prefect")
"""The engines ``--on`` dispatches the demo run on (the default drives it in-process)."""

TOPIC = "durable execution for AI agents"
"""What the demo run researches."""
LATENCY = 0.25
"""Seconds the deterministic local model takes per request (a real provider takes what it takes)."""
KILL_AFTER_CALLS = 4
"""Calls a phase after the first records before the child is killed (two model requests suffice)."""
CHILD_TIMEOUT = 120.0
"""Seconds a child process may take before the demo gives up on it."""


class DemoFailed(PhaseledgerError):
    """The demo could not run (a child process failed, or the model is not usable)."""


def build_workflow(model: str | None) -> Workflow[Any]:
    """The research workflow with pydantic-ai agents (a local deterministic model by default)."""
    from phaseledger.demo.research import build_research

    return build_research(model=model, latency=LATENCY if model is None else 0.0)


def demo_input() -> dict[str, Any]:
    """The input of the demo run."""
    return {"topic": TOPIC}


# -- the child processes ----------------------------------------------------------------


async def _child_start(store_url: str, run_id: str, model: str | None, on: Dispatched | None) -> None:
    workflow = build_workflow(model)
    if on is not None:
        await _dispatched(on, store_url, run_id, workflow)
        return
    async with Engine(store_url, workflows=[workflow]) as engine:
        await engine.run(workflow, demo_input(), run_id=run_id)


async def _child_resume(store_url: str, run_id: str, model: str | None, on: Dispatched | None) -> None:
    workflow = build_workflow(model)
    if on is not None:
        run = await _dispatched(on, store_url, run_id, workflow)
    else:
        async with Engine(store_url, workflows=[workflow]) as engine:
            run = await engine.resume(run_id)
    print(json.dumps({"pid": os.getpid(), "status": run.status, "phase": run.phase}))


@dataclass(frozen=True)
class Dispatched:
    """The engine the demo dispatches its run on (``--on``), and where that engine's pieces live."""

    kind: str
    setup: DispatchSetup


async def _dispatched(on: Dispatched, store_url: str, run_id: str, workflow: Workflow[Any]) -> Run:
    """Start (or, in a new process, pick up again) the run on ``on``'s engine and wait for its end.

    Starting is idempotent on every dispatcher: the resuming process starts the same run id,
    and the engine (DBOS at launch, Temporal by retrying the dead worker's activity) goes on
    from phaseledger's log.
    """
    async with Engine(store_url, workflows=[workflow], max_inline_wait=0) as engine, \
            open_dispatch(on.kind, engine, on.setup) as dispatcher:
        await dispatcher.start(workflow, demo_input(), run_id=run_id)
        return await dispatcher.result(run_id, CHILD_TIMEOUT)


# -- following the log from the parent ----------------------------------------------------


@dataclass
class LogFollower:
    """Reads a run's new events from the store as another process appends them."""

    engine: Engine
    run_id: str
    version: int = 0
    phase: str | None = None
    phases_seen: list[str] = field(default_factory=list)
    visit_calls: list[RecordedEvent] = field(default_factory=list)
    """Calls recorded in the current phase visit: what a resume would serve from the log."""

    def poll(self) -> list[RecordedEvent]:
        """The events appended since the last poll (none before the run exists)."""
        from phaseledger import RunNotFound

        try:
            fresh = [e for e in self.engine.history(self.run_id) if e.version > self.version]
        except RunNotFound:  # the child has not started the run yet
            return []
        for event in fresh:
            self.version = event.version
            if event.type == "PhaseEntered":
                self.phase = str(event.data["phase"])
                self.phases_seen.append(self.phase)
                self.visit_calls = []
            elif event.type == "StepRecorded":
                self.visit_calls.append(event)
        return fresh

    @property
    def kill_point_reached(self) -> bool:
        """Part-way through a phase after the first, with enough recorded to make replay visible.

        That is two model requests (or ``KILL_AFTER_CALLS`` calls of any kind) into the
        phase visit; from the third phase on, one recorded call is enough.
        """
        if len(self.phases_seen) < 2:
            return False
        models = sum(1 for e in self.visit_calls if e.data.get("kind") == "model")
        if len(self.phases_seen) >= 3:
            return bool(self.visit_calls)
        return models >= 2 or len(self.visit_calls) >= KILL_AFTER_CALLS


@dataclass
class Child:
    """A child process of the demo, with its stderr kept in a file for error reports."""

    role: str
    process: subprocess.Popen[str]
    stderr_path: Path

    @classmethod
    def spawn(cls, role: str, store_url: str, run_id: str, model: str | None, on: Dispatched | None) -> Child:
        """Start ``python -m phaseledger.demo child-ROLE ...``."""
        args = [sys.executable, "-m", "phaseledger.demo", f"child-{role}", "--store", store_url, "--run-id", run_id]
        if model:
            args += ["--model", model]
        if on is not None:
            args += ["--on", on.kind, "--dbos-system-db", on.setup.dbos_system_url,
                     "--temporal-address", on.setup.temporal_address, "--prefect-api", on.setup.prefect_api_url]
        handle, name = tempfile.mkstemp(prefix=f"phaseledger-demo-{role}-", suffix=".log")
        with os.fdopen(handle, "w") as stderr:
            process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        return cls(role, process, Path(name))

    def failure(self) -> DemoFailed:
        """The error to raise when the child exited badly (its last stderr line says why)."""
        lines = [line for line in self.stderr_path.read_text().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {self.process.returncode}"
        return DemoFailed(f"the {self.role} process failed: {last}")

    def close(self) -> None:
        """Kill the child if it still runs and remove its stderr file."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self.stderr_path.unlink(missing_ok=True)


# -- the demo ---------------------------------------------------------------------------


class Demo:
    """One demo run: the console to explain on, the SQLite file, and the model to use."""

    def __init__(self, console: Console, db: Path, model: str | None, on: str | None = None) -> None:
        self.console = console
        self.db = db
        self.model = model
        self.on = on
        self.store_url = f"sqlite:///{db}"
        self.run_id = "research-demo"
        self.dispatched: Dispatched | None = None

    def say(self, text: str = "", style: str = "") -> None:
        """Print a line (styled on a terminal)."""
        self.console.print(f"[{style}]{text}[/]" if style and self.console.is_terminal else text, highlight=False)

    def heading(self, text: str) -> None:
        """Print a section heading."""
        self.console.print()
        if self.console.is_terminal:
            self.console.rule(f"[bold]{text}", align="left")
        else:
            self.console.print(f"== {text}")

    def run(self) -> None:
        """Run the whole demo; raise :class:`DemoFailed` when a step of it fails."""
        from rich.markup import escape

        self._check_model()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)
        workflow = build_workflow(self.model)
        model_name = self.model or "a deterministic local model (pydantic-ai FunctionModel, offline)"
        self.heading("phaseledger demo")
        self.say(f"workflow  {workflow.name} v{workflow.version}: {' -> '.join(workflow.phases)}")
        self.say(f"agents    {escape(model_name)}")
        self.say(f"store     {self.store_url} (a fresh SQLite file)")

        with contextlib.ExitStack() as stack:
            if self.on is not None:
                self.dispatched = self._dispatch_on(self.on, stack)
            engine = stack.enter_context(contextlib.closing(Engine(self.store_url, workflows=[workflow])))
            killed_at = self._first_attempt(engine)
            self._resume(engine, killed_at)
            self._finish(engine, workflow)

    def _dispatch_on(self, kind: str, stack: contextlib.ExitStack) -> Dispatched:
        """Where the run goes on ``kind``: DBOS keeps its system database next to the demo's;
        Temporal's development server, or a temporary Prefect API server, runs while the demo does."""
        if kind not in ENGINES:
            raise DemoFailed(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
        why = available(kind)
        if why:
            raise DemoFailed(why)
        dbos_db = self.db.with_name(f"{self.db.stem}-dbos.sqlite")
        dbos_db.unlink(missing_ok=True)
        address = prefect_api = ""
        if kind == "temporal":
            temporal_db = self.db.with_name(f"{self.db.stem}-temporal.db")
            temporal_db.unlink(missing_ok=True)
            address = stack.enter_context(temporal_dev_server(temporal_db))
            self.say(f"temporal  a development server at {address} (temporal server start-dev)")
        elif kind == "prefect":
            self.say("prefect   starting a temporary Prefect API server (about ten seconds)...")
            prefect_api = stack.enter_context(prefect_test_server())
            self.say(f"prefect   API at {prefect_api}: each run is a flow run named by its run id")
        else:
            self.say(f"dbos      system database sqlite:///{dbos_db}")
        return Dispatched(kind, DispatchSetup(dbos_system_url=f"sqlite:///{dbos_db}", temporal_address=address,
                                              task_queue="phaseledger-demo", prefect_api_url=prefect_api))

    def _check_model(self) -> None:
        if self.model is None:
            return
        try:
            from pydantic_ai.models import infer_model

            infer_model(self.model)
        except Exception as exc:  # pydantic-ai raises UserError for unknown models and missing keys
            raise DemoFailed(f"cannot use model {self.model!r}: {exc}") from None

    def _follow(self, child: Child, follower: LogFollower, *, kill: bool) -> bool:
        """Print the run's events as the child appends them; SIGKILL it at the kill point.

        Returns True when the child was killed.
        """
        deadline = time.monotonic() + CHILD_TIMEOUT
        tag = f"pid {child.process.pid}"
        while True:
            exited = child.process.poll() is not None
            for event in follower.poll():
                self._print_event(tag, event)
            if kill and follower.kill_point_reached and not exited:
                os.kill(child.process.pid, signal.SIGKILL)
                child.process.wait()
                return True
            if exited:
                return False
            if time.monotonic() > deadline:
                raise DemoFailed(f"the {child.role} process took more than {CHILD_TIMEOUT:.0f}s; it was stopped")
            time.sleep(0.01)

    def _print_event(self, tag: str, event: RecordedEvent) -> None:
        from rich.markup import escape

        from phaseledger.cli import event_summary

        if event.type in ("StepRecorded", "PhaseEntered", "RunCompleted", "RunFailed", "RunResumed", "RunStarted"):
            style = "bold" if event.type == "PhaseEntered" else "dim" if event.type == "StepRecorded" else ""
            line = escape(f"  [{tag}] #{event.version:<3} {event_summary(event)}")
            self.say(line, style)

    def _first_attempt(self, engine: Engine) -> LogFollower:
        self.heading("1. a process starts the run")
        child = Child.spawn("start", self.store_url, self.run_id, self.model, self.dispatched)
        try:
            follower = LogFollower(engine, self.run_id)
            killed = self._follow(child, follower, kill=True)
            if not killed:
                if child.process.returncode != 0:
                    raise child.failure()
                raise DemoFailed("the run finished before the demo could kill its process; nothing to resume")
        finally:
            child.close()
        self.say(
            f"  process {child.process.pid} was killed with SIGKILL (exit status {child.process.returncode}) "
            f"in phase {follower.phase!r}",
            "bold red",
        )
        return follower

    def _resume(self, engine: Engine, killed: LogFollower) -> None:
        from rich.markup import escape

        from phaseledger.cli import call_name, token_counts

        self.heading("2. what the log holds")
        at_kill = engine.get(self.run_id)
        earlier = killed.phases_seen[:-1]
        self.say(f"  {at_kill.version} events; the run is still {at_kill.status!r} in phase {at_kill.phase!r}: "
                 "no process is driving it any more")
        self.say(f"  phases done: {', '.join(dict.fromkeys(earlier))} (their results are in the state recorded "
                 f"when {killed.phase!r} was entered)")
        self.say(f"  recorded so far in {killed.phase!r}: {len(killed.visit_calls)} calls")

        self.heading("3. a new process resumes the run from the log")
        child = Child.spawn("resume", self.store_url, self.run_id, self.model, self.dispatched)
        follower = LogFollower(engine, self.run_id, version=killed.version, phase=killed.phase,
                               phases_seen=list(killed.phases_seen), visit_calls=list(killed.visit_calls))
        try:
            self._follow(child, follower, kill=False)
            if child.process.returncode != 0:
                raise child.failure()
            child_pid = child.process.pid
        finally:
            child.close()
        final = engine.get(self.run_id)
        after_kill = [e for e in engine.history(self.run_id) if e.version > killed.version]
        live_after = sum(1 for e in after_kill if e.type == "StepRecorded")
        live_models = sum(1 for e in after_kill if e.type == "StepRecorded" and e.data.get("kind") == "model")

        self.heading("4. replayed, not executed again")
        self.say(f"  process {child_pid} served these {len(killed.visit_calls)} calls of phase {killed.phase!r} "
                 "from the log instead of running them:")
        for event in killed.visit_calls:
            d = event.data
            used = f"  {token_counts(d.get('usage'))} tokens" if d.get("usage") else ""
            kind, name = str(d.get("kind")), str(d.get("name"))
            self.say(f"    {kind:<6} {escape(call_name(kind, name))}{used}", "green")
        if earlier:
            self.say(f"  phases {', '.join(dict.fromkeys(earlier))} did not run again at all")
        self.say(f"  then it executed {live_after} new calls live ({live_models} model requests) and the run "
                 f"ended {final.status!r}" + (f" in {final.phase!r}" if final.phase else ""))
        usage = final.usage
        self.say(f"  model requests replayed from the log: {usage.replayed_requests}   "
                 f"tokens not paid again: {usage.tokens_saved} "
                 f"({usage.saved_input_tokens} in + {usage.saved_output_tokens} out)", "bold green")
        self.say(f"  whole run: {usage.requests} model requests paid, {usage.total_tokens} tokens, "
                 f"{final.steps} calls recorded, {final.replayed_steps} served from the log")
        self.say("  (a call in flight when the process died had no result in the log, so it ran again: "
                 "at-least-once, with a stable ctx.idempotency_key)", "dim")

    def _finish(self, engine: Engine, workflow: Workflow[Any]) -> None:
        from phaseledger.cli import print_history

        self.heading("5. the run's history (its event log)")
        print_history(self.console, engine.history(self.run_id))
        self.heading(f"6. the state machine of {workflow.name!r} (Mermaid)")
        self.console.print(workflow.diagram(), highlight=False, markup=False)
        self._draw(workflow)
        self.heading("explore")
        store = f"--store {self.store_url}"
        self.say(f"  phaseledger {store} show {self.run_id}")
        self.say(f"  phaseledger {store} history {self.run_id} --json")
        self.say(f"  phaseledger -w phaseledger.demo.research diagram {workflow.name} --format svg")

    def _draw(self, workflow: Workflow[Any]) -> None:
        """Also draw the machine as SVG next to the database when Graphviz is installed."""
        from phaseledger.cli import draw_diagram, graphviz_missing

        if graphviz_missing() is not None:
            self.say("  (paste it into any Mermaid viewer; with Graphviz installed the demo also writes an SVG)")
            return
        target = self.db.with_name(f"{self.db.stem}-{workflow.name}.svg")
        target.write_bytes(draw_diagram(workflow, "svg"))
        self.say(f"  drawn as {target}")


def run_demo(*, db: Path = Path("demo.db"), model: str | None = None, on: str | None = None,
             console: Console | None = None) -> None:
    """Run the demo on the SQLite file ``db`` (recreated); ``model`` is a pydantic-ai model name;
    ``on`` an engine to dispatch the run on (``dbos``, ``temporal`` or ``prefect``; default: in-process)."""
    from phaseledger.cli import make_console

    Demo(console or make_console(), db, model, on).run()


def main(argv: list[str] | None = None) -> None:
    """``python -m phaseledger.demo [--model NAME] [--db FILE]`` (and the child roles)."""
    parser = argparse.ArgumentParser(prog="python -m phaseledger.demo", description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="demo", choices=["demo", "child-start", "child-resume"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="a pydantic-ai model name (default: local and offline)")
    parser.add_argument("--db", default="demo.db", help="the SQLite file to use (recreated)")
    parser.add_argument("--on", choices=ENGINES, default=None,
                        help="dispatch the run on this engine (default: drive it in-process)")
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--dbos-system-db", default="", help=argparse.SUPPRESS)
    parser.add_argument("--temporal-address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefect-api", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    on = None
    if args.on and args.role != "demo":
        on = Dispatched(args.on, DispatchSetup(dbos_system_url=args.dbos_system_db, task_queue="phaseledger-demo",
                                               temporal_address=args.temporal_address,
                                               prefect_api_url=args.prefect_api))
    if args.role == "child-start":
        asyncio.run(_child_start(args.store, args.run_id, args.model, on))
    elif args.role == "child-resume":
        asyncio.run(_child_resume(args.store, args.run_id, args.model, on))
    else:
        _run_as_a_program(db=Path(args.db), model=args.model, on=args.on)


def _run_as_a_program(*, db: Path, model: str | None, on: str | None) -> None:
    """Run the demo; an error prints one ``error:`` line (its traceback with ``$PHASELEDGER_DEBUG``),
    Ctrl-C one line, each with the exit status the ``phaseledger`` command gives them."""
    from phaseledger.cli import print_error

    try:
        run_demo(db=db, model=model, on=on)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except PhaseledgerError as exc:
        if os.environ.get("PHASELEDGER_DEBUG", "") not in ("", "0"):
            raise
        print_error(str(exc))
        sys.exit(1)
