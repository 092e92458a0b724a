"""Workflows and a worker process for the Temporal dispatcher tests.

Every step appends its name to the file named by ``$PL_CALLS`` (how often each step ran,
across processes). ``python -m tests.integration.temporal_flows ADDRESS STORE QUEUE``
runs a Temporal worker for them; with ``$PL_HANG`` set, step ``slow`` writes that file and
then hangs, so that the test can SIGKILL the process in the middle of a phase.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow

PAUSE = 1.0  # seconds of a durable timer: beyond max_inline_wait=0, so it becomes a Temporal timer


class Order(BaseModel):
    total: int = 0
    approved: bool = False


def _call(name: str, value: int) -> int:
    with open(os.environ["PL_CALLS"], "a") as calls:
        calls.write(name + "\n")
    return value


def _slow() -> int:
    hang = os.environ.get("PL_HANG")
    _call("slow", 0)
    if hang:
        Path(hang).write_text("in step slow")
        time.sleep(300)  # the test kills the process here
    return 5


def order_workflow() -> Workflow[Order]:
    """Steps, a durable timer and a signal wait in one phase; a second phase with a hanging step."""
    wf = Workflow("temporal-order", state=Order)

    @wf.phase(initial=True, to="ship")
    async def approve(ctx: Context[Order]) -> None:
        ctx.state.total = await ctx.step("price", _call, "price", 40)
        await ctx.sleep(PAUSE)
        ctx.state.approved = (await ctx.wait_for_signal("approve", timeout=3600))["ok"]

    @wf.phase(final=True)
    async def ship(ctx: Context[Order]) -> int:
        fee = await ctx.step("fee", _call, "fee", 2)
        slow = await ctx.step("slow", _slow)
        return ctx.state.total + fee + slow + await ctx.step("label", _call, "label", 0)

    return wf


def counts(path: Path) -> dict[str, int]:
    """How many times each step ran, from the calls file."""
    found: dict[str, int] = {}
    for name in path.read_text().split() if path.exists() else []:
        found[name] = found.get(name, 0) + 1
    return found


async def _serve(address: str, store: str, queue: str) -> None:
    from temporalio.client import Client

    from phaseledger.dispatch.temporal import phaseledger_worker

    engine = Engine(store, workflows=[order_workflow()], max_inline_wait=0)
    client = await Client.connect(address)
    # a short sticky timeout: the workflow task that was cached on a killed worker moves on quickly
    async with phaseledger_worker(client, engine, queue, heartbeat_every=0.3,
                                  sticky_queue_schedule_to_start_timeout=timedelta(seconds=1)):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve(*sys.argv[1:4]))
