"""The workflow of the shared dispatcher battery (``test_dispatcher_battery``), and its child process.

Every dispatcher of :mod:`phaseledger.testing.dispatchers` drives the same workflow through
:meth:`phaseledger.Engine.advance`. ``python -m tests.integration.battery DISPATCHER STORE
RUN_ID TEMPORAL_ADDRESS QUEUE DBOS_SYSTEM_URL PREFECT_API_URL`` drives one run in a child process that the
battery SIGKILLs in the middle of a phase.

Each real execution of a step appends ``<run id> <step>`` to the file named by
``$BATTERY_EFFECTS`` (outside every store), so the battery counts executions across
processes; with ``$BATTERY_HANG`` set, step ``slow`` appends ``<run id> hanging`` after
its effect and then hangs until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from phaseledger.testing.dispatchers import Dispatch, DispatchSetup, open_dispatch

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


TIMEOUT = 90.0
"""Generous bound of every wait (a loaded machine is slow, never wrong)."""


@contextlib.asynccontextmanager
async def dispatch(kind: str, store_url: str, setup: DispatchSetup) -> AsyncIterator[Dispatch]:
    """Dispatcher ``kind`` on a fresh engine over ``store_url``, with the battery's workflow registered."""
    engine = Engine(store_url, workflows=[battery_workflow()], max_inline_wait=0, lease_seconds=3.0)
    try:
        async with open_dispatch(kind, engine, setup) as dispatcher:
            yield dispatcher
    finally:
        await engine.drives.stop_all()
        engine.close()


async def child(kind: str, store_url: str, setup: DispatchSetup, run_id: str) -> None:
    """Start ``run_id`` on dispatcher ``kind`` and drive it until this process is killed."""
    async with dispatch(kind, store_url, setup) as dispatcher:
        await dispatcher.start(battery_workflow(), {"label": "killed"}, run_id=run_id)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    kind, store_url, run_id, address, queue, system_url, prefect_api = sys.argv[1:8]
    setup = DispatchSetup(dbos_system_url=system_url, temporal_address=address, task_queue=queue,
                          prefect_api_url=prefect_api)
    asyncio.run(child(kind, store_url, setup, run_id))
