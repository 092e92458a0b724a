"""Workflows, an engine and a serving process for the Prefect dispatcher tests.

Steps append their name to the file named by ``$PREFECT_FLOW_EFFECTS`` each time they
really run (outside both stores), so a test counts executions across processes. With
``$PREFECT_FLOW_HANG`` set, step ``slow`` writes its process id to that file, then hangs
until the test kills the process in the middle of the phase.

``python -m tests.integration.prefect_flows DEPLOYMENT`` serves the flow
``phaseledger-run`` as deployment ``DEPLOYMENT`` (the Prefect API is ``$PREFECT_API_URL``);
each flow run it starts runs in a process of its own and drives its run with
:data:`engine` (``tests.integration.prefect_flows:engine``), whose store is
``$PREFECT_FLOW_STORE``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow

EFFECTS_ENV = "PREFECT_FLOW_EFFECTS"
HANG_ENV = "PREFECT_FLOW_HANG"
STORE_ENV = "PREFECT_FLOW_STORE"
ENGINE_REF = "tests.integration.prefect_flows:engine"
PAUSE = 0.5
"""Seconds of the durable timer: beyond max_inline_wait=0, so the flow waits for it."""


def effect(name: str) -> None:
    """Record one real execution of a step."""
    fd = os.open(os.environ[EFFECTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def effects(path: Path) -> list[str]:
    """The steps that ran, in order."""
    return path.read_text().split() if path.exists() else []


class Order(BaseModel):
    total: int = 0
    approved: bool = False


def order_workflow() -> Workflow[Order]:
    """A step, a durable timer and a signal in one phase; a second phase with steps."""
    wf = Workflow("prefect-order", state=Order)

    def price() -> int:
        effect("price")
        return 40

    def ship(total: int) -> int:
        effect("ship")
        return total + 2

    @wf.phase(initial=True, to="deliver")
    async def approve(ctx: Context[Order]) -> None:
        ctx.state.total = await ctx.step("price", price)
        await ctx.sleep(PAUSE)
        ctx.state.approved = (await ctx.wait_for_signal("approve", timeout=120))["ok"]

    @wf.phase(final=True)
    async def deliver(ctx: Context[Order]) -> int:
        return int(await ctx.step("ship", ship, ctx.state.total)) if ctx.state.approved else 0

    return wf


class Job(BaseModel):
    label: str = ""


def crash_workflow() -> Workflow[Job]:
    """Two phases; in a process with ``$PREFECT_FLOW_HANG``, the second hangs in its ``slow`` step."""
    wf = Workflow("prefect-crash", state=Job)

    def step(name: str) -> str:
        effect(name)
        return name

    async def slow() -> str:
        effect("slow")
        if os.environ.get(HANG_ENV):
            effect(f"hanging:{os.getpid()}")
            await asyncio.sleep(600)  # killed here, in the middle of the phase
        return "slow"

    @wf.phase(initial=True, to="second")
    async def first(ctx: Context[Job]) -> None:
        await ctx.step("a", step, "a")

    @wf.phase(final=True)
    async def second(ctx: Context[Job]) -> str:
        done = [await ctx.step("b", step, "b"), await ctx.step("slow", slow), await ctx.step("c", step, "c")]
        return "+".join(done)

    return wf


def failing_workflow() -> Workflow[Job]:
    """One phase that fails for good."""
    wf = Workflow("prefect-failing", state=Job)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[Job]) -> None:
        raise ValueError("no stock")

    return wf


def make_engine() -> Engine:
    """The engine of a flow-run process: the crash workflow over ``$PREFECT_FLOW_STORE``."""
    return Engine(os.environ[STORE_ENV], workflows=[crash_workflow()], max_inline_wait=0)


engine = make_engine
"""What the deployment's flow runs drive (an import path names it; a function builds it there)."""


def serve(deployment: str) -> None:
    from phaseledger.dispatch.prefect import phaseledger_run

    phaseledger_run.serve(name=deployment, print_starting_message=False)


if __name__ == "__main__":
    serve(sys.argv[1])
    sys.exit(0)
