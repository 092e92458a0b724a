"""The dispatchers under one interface, for the shared battery (``test_dispatcher_battery``).

Every dispatcher drives the same workflow through :meth:`phaseledger.Engine.advance`:
in-process (a loop over ``advance``), the native worker (``engine.worker()``), DBOS and
Temporal (Prefect joins when its extra is installed). A :class:`Dispatch` starts runs,
signals them through the dispatcher's own path and waits for their end; ``python -m
tests.integration.battery DISPATCHER STORE RUN_ID [TEMPORAL_ADDRESS QUEUE SYSTEM_URL]``
drives one run in a child process that the battery SIGKILLs in the middle of a phase.

Each real execution of a step appends ``<run id> <step>`` to the file named by
``$BATTERY_EFFECTS`` (outside every store), so the battery counts executions across
processes; with ``$BATTERY_HANG`` set, step ``slow`` appends ``<run id> hanging`` after
its effect and then hangs until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from phaseledger import Context, Engine, Run, Workflow

EFFECTS_ENV = "BATTERY_EFFECTS"
HANG_ENV = "BATTERY_HANG"
LOOPS = 2
"""Visits of phase ``execute``: validation sends the work back once."""
STEPS = {"plan": 1, "work": LOOPS, "slow": LOOPS, "done": 1}
"""How often each step runs in one run when nothing crashes."""


class Job(BaseModel):
    label: str = ""
    rounds: int = 0
    approved: bool = False
    total: int = 0


def effect(run_id: str, name: str) -> None:
    """Record one real execution of a step (O_APPEND: one line per write, across processes)."""
    fd = os.open(os.environ[EFFECTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{run_id} {name}\n".encode())
    finally:
        os.close(fd)


def effects(path: Path) -> dict[str, Counter[str]]:
    """Per run: how often each step really ran."""
    found: dict[str, Counter[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        run_id, name = line.split()
        found.setdefault(run_id, Counter())[name] += 1
    return found


def battery_workflow() -> Workflow[Job]:
    """plan → execute ⇄ validate → approval (a durable timer, then a signal) → finish."""
    wf = Workflow("battery", state=Job)

    def record(run_id: str, name: str, value: int) -> int:
        effect(run_id, name)
        return value

    async def slow(run_id: str) -> int:
        effect(run_id, "slow")
        if os.environ.get(HANG_ENV):
            effect(run_id, "hanging")
            await asyncio.sleep(600)  # the battery kills the process here, in the middle of a phase
        return 1

    @wf.phase(initial=True, to="execute")
    async def plan(ctx: Context[Job]) -> None:
        ctx.state.total = await ctx.step("plan", record, ctx.run_id, "plan", 10)

    @wf.phase(to="validate")
    async def execute(ctx: Context[Job]) -> None:
        ctx.state.total += await ctx.step("work", record, ctx.run_id, "work", 5)
        ctx.state.total += await ctx.step("slow", slow, ctx.run_id)
        ctx.state.rounds += 1

    @wf.phase(to={"execute": lambda s: s.rounds < LOOPS, "approval": None})
    async def validate(ctx: Context[Job]) -> None:
        return None

    @wf.phase(to="finish")
    async def approval(ctx: Context[Job]) -> None:
        await ctx.sleep(0.3)
        ctx.state.approved = bool((await ctx.wait_for_signal("approve", timeout=600))["ok"])

    @wf.phase(final=True)
    async def finish(ctx: Context[Job]) -> str:
        done = await ctx.step("done", record, ctx.run_id, "done", 100)
        return f"{ctx.state.label}:{ctx.state.total + done}:{ctx.state.approved}"

    return wf


def expected_output(label: str) -> str:
    """The output of a run with this label, approved."""
    return f"{label}:{10 + LOOPS * 6 + 100}:True"


@dataclass
class Where:
    """Where a dispatcher's outside pieces live (the Temporal server, a DBOS system database)."""

    store_url: str
    temporal_address: str = ""
    task_queue: str = ""
    dbos_system_url: str = ""


class Dispatch(Protocol):
    """One dispatcher, opened on an engine: start runs, signal them, wait for their end."""

    engine: Engine

    async def start(self, run_id: str, label: str) -> None: ...
    async def approve(self, run_id: str, signal_id: str) -> None: ...
    async def result(self, run_id: str) -> Run: ...


async def _until_finished(engine: Engine, run_id: str, timeout: float) -> Run:
    async def finished() -> Run:
        while not (run := await engine.get_async(run_id)).finished:
            await asyncio.sleep(0.05)
        return run

    return await asyncio.wait_for(finished(), timeout)


@dataclass
class Inline:
    """In-process: a task per run that loops on ``engine.advance`` until the run finishes."""

    engine: Engine
    workflow: Workflow[Job]
    tasks: dict[str, asyncio.Task[Run]] = field(default_factory=dict)

    async def start(self, run_id: str, label: str) -> None:
        await self.engine.start(self.workflow, {"label": label}, run_id=run_id, if_exists="return")
        self.tasks[run_id] = asyncio.ensure_future(self._drive(run_id))

    async def _drive(self, run_id: str) -> Run:
        while not (wait := await self.engine.advance(run_id)).finished:
            await asyncio.sleep(0.05)  # a cheap no-op advance while nothing is due
        return wait.run

    async def approve(self, run_id: str, signal_id: str) -> None:
        await self.engine.signal(run_id, "approve", {"ok": True}, signal_id=signal_id)

    async def result(self, run_id: str) -> Run:
        return await asyncio.wait_for(self.tasks[run_id], TIMEOUT)


@dataclass
class Fleet:
    """The native worker: ``engine.worker()`` picks new, woken and interrupted runs from the store."""

    engine: Engine
    workflow: Workflow[Job]

    async def start(self, run_id: str, label: str) -> None:
        await self.engine.start(self.workflow, {"label": label}, run_id=run_id, if_exists="return")

    async def approve(self, run_id: str, signal_id: str) -> None:
        await self.engine.signal(run_id, "approve", {"ok": True}, signal_id=signal_id)

    async def result(self, run_id: str) -> Run:
        return await _until_finished(self.engine, run_id, TIMEOUT)


@dataclass
class OnDBOS:
    """DBOS: a DBOS workflow per run; signals are DBOS messages."""

    engine: Engine
    workflow: Workflow[Job]
    dispatcher: Any

    async def start(self, run_id: str, label: str) -> None:
        await self.dispatcher.start(self.workflow, {"label": label}, run_id=run_id)

    async def approve(self, run_id: str, signal_id: str) -> None:
        await self.dispatcher.send_signal(run_id, "approve", {"ok": True}, signal_id=signal_id)

    async def result(self, run_id: str) -> Run:
        return await asyncio.wait_for(self.dispatcher.result(run_id), TIMEOUT)


@dataclass
class OnTemporal:
    """Temporal: a Temporal workflow per run, id = run id; signals are Temporal signals."""

    engine: Engine
    workflow: Workflow[Job]
    client: Any
    task_queue: str

    async def start(self, run_id: str, label: str) -> None:
        from phaseledger.dispatch.temporal import start_run

        await start_run(self.client, self.engine, self.workflow, {"label": label}, run_id=run_id,
                        task_queue=self.task_queue, heartbeat_timeout=2.0, retry_initial=0.2, retry_maximum=1.0)

    async def approve(self, run_id: str, signal_id: str) -> None:
        from phaseledger.dispatch.temporal import signal_run

        await signal_run(self.client, run_id, "approve", {"ok": True}, signal_id=signal_id)

    async def result(self, run_id: str) -> Run:
        await asyncio.wait_for(self.client.get_workflow_handle(run_id).result(), TIMEOUT)
        return await self.engine.get_async(run_id)


TIMEOUT = 90.0
"""Generous bound of every wait (a loaded machine is slow, never wrong)."""


@contextlib.asynccontextmanager
async def dispatch(kind: str, where: Where) -> AsyncIterator[Dispatch]:
    """Open dispatcher ``kind`` on a fresh engine over ``where.store_url``."""
    wf = battery_workflow()
    engine = Engine(where.store_url, workflows=[wf], max_inline_wait=0, lease_seconds=3.0)
    try:
        if kind == "inline":
            inline = Inline(engine, wf)
            try:
                yield inline
            finally:
                for task in inline.tasks.values():
                    task.cancel()
                await asyncio.gather(*inline.tasks.values(), return_exceptions=True)
        elif kind == "fleet":
            worker = engine.worker(concurrency=10, lease_seconds=3.0, poll_interval=0.1)
            running = asyncio.ensure_future(worker.run(handle_signals=False))
            try:
                yield Fleet(engine, wf)
            finally:
                worker.stop(now=True)
                await asyncio.gather(running, return_exceptions=True)
        elif kind == "dbos":
            async with _dbos(engine, wf, where) as on_dbos:
                yield on_dbos
        elif kind == "temporal":
            async with _temporal(engine, wf, where) as on_temporal:
                yield on_temporal
        else:
            raise ValueError(f"unknown dispatcher {kind!r}")
    finally:
        await engine.drives.stop_all()
        engine.close()


@contextlib.asynccontextmanager
async def _dbos(engine: Engine, wf: Workflow[Job], where: Where) -> AsyncIterator[OnDBOS]:
    from dbos import DBOS

    from phaseledger.dispatch.dbos import PhaseledgerDBOS
    from tests.integration.dbos_flows import dbos_config

    DBOS(config=dbos_config(where.dbos_system_url, None))  # type: ignore[arg-type]
    dispatcher = PhaseledgerDBOS(engine)
    DBOS.launch()  # recovers the workflows a killed process left pending
    try:
        yield OnDBOS(engine, wf, dispatcher)
    finally:
        DBOS.destroy()
        dispatcher.close()


@contextlib.asynccontextmanager
async def _temporal(engine: Engine, wf: Workflow[Job], where: Where) -> AsyncIterator[OnTemporal]:
    from datetime import timedelta

    from temporalio.client import Client

    from phaseledger.dispatch.temporal import phaseledger_worker

    client = await Client.connect(where.temporal_address)
    async with phaseledger_worker(client, engine, where.task_queue, heartbeat_every=0.3,
                                  sticky_queue_schedule_to_start_timeout=timedelta(seconds=1)):
        yield OnTemporal(engine, wf, client, where.task_queue)


def new_queue() -> str:
    """A task queue of one test."""
    return f"battery-{uuid.uuid4().hex[:8]}"


async def child(kind: str, where: Where, run_id: str) -> None:
    """Start ``run_id`` on dispatcher ``kind`` and drive it until this process is killed."""
    async with dispatch(kind, where) as dispatcher:
        await dispatcher.start(run_id, "killed")
        await asyncio.sleep(3600)


if __name__ == "__main__":
    kind, store_url, run_id, *rest = sys.argv[1:]
    address, queue, system_url = (rest + ["", "", ""])[:3]
    print(json.dumps({"pid": os.getpid()}), flush=True)
    asyncio.run(child(kind, Where(store_url, address, queue, system_url), run_id))
