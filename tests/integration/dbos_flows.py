"""Workflows and a child process for the DBOS dispatcher tests (run as ``python -m``).

Steps append their name to the file named by ``$DBOS_FLOW_EFFECTS`` each time they really
run (outside both stores), so a test counts executions across processes. The child
process ``python -m tests.integration.dbos_flows MODE STORE_URL SYSTEM_URL SCHEMA RUN_ID``
starts (``start``) or recovers (``recover``) the run on DBOS and prints its outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow

EFFECTS_ENV = "DBOS_FLOW_EFFECTS"
HANG_ENV = "DBOS_FLOW_HANG"
"""Set in the first child: the ``slow`` step announces itself, then hangs until killed."""


def effect(name: str) -> None:
    """Record one real execution of a step."""
    fd = os.open(os.environ[EFFECTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def effects(path: str) -> list[str]:
    """The steps that ran, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


class Order(BaseModel):
    total: int = 0
    approved: bool = False


def order_workflow() -> Workflow[Order]:
    """A step, a durable timer, a signal, then a second phase."""
    wf = Workflow("dbos-order", state=Order)

    def price() -> int:
        effect("price")
        return 40

    def ship(total: int) -> int:
        effect("ship")
        return total + 2

    @wf.phase(initial=True, to="deliver")
    async def approve(ctx: Context[Order]) -> None:
        ctx.state.total = await ctx.step("price", price)
        await ctx.sleep(0.3)
        ctx.state.approved = (await ctx.wait_for_signal("approve", timeout=120))["ok"]

    @wf.phase(final=True)
    async def deliver(ctx: Context[Order]) -> int:
        return int(await ctx.step("ship", ship, ctx.state.total)) if ctx.state.approved else 0

    return wf


class Job(BaseModel):
    label: str = ""


def crash_workflow() -> Workflow[Job]:
    """Two phases; the second hangs in its ``slow`` step in the first process."""
    wf = Workflow("dbos-crash", state=Job)

    def step(name: str) -> str:
        effect(name)
        return name

    async def slow() -> str:
        effect("slow")
        if os.environ.get(HANG_ENV):
            effect("hanging")
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


def queued_workflow(log: list[tuple[str, str]]) -> Workflow[Job]:
    """A run that records when it begins and ends, around a durable timer."""
    wf = Workflow("dbos-queued", state=Job)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[Job]) -> str:
        await ctx.step("begin", lambda: log.append((ctx.state.label, "begin")))
        await ctx.sleep(0.3)
        await ctx.step("end", lambda: log.append((ctx.state.label, "end")))
        return ctx.state.label

    return wf


def dbos_config(system_url: str, schema: str | None) -> dict[str, Any]:
    """The DBOS configuration of the tests (quick polling, quiet logs)."""
    config: dict[str, Any] = {
        "name": "phaseledger-dispatch-tests",
        "system_database_url": system_url,
        "log_level": "WARNING",
        "notification_listener_polling_interval_sec": 0.05,
    }
    if schema:
        config["dbos_system_schema"] = schema
    return config


async def child(mode: str, store_url: str, system_url: str, schema: str, run_id: str) -> dict[str, Any]:
    from dbos import DBOS

    from phaseledger.dispatch.dbos import PhaseledgerDBOS

    wf = crash_workflow()
    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    DBOS(config=dbos_config(system_url, schema or None))  # type: ignore[arg-type]
    dispatcher = PhaseledgerDBOS(engine)
    DBOS.launch()  # in "recover" mode, DBOS recovers the pending workflow here
    try:
        if mode == "start":
            await dispatcher.start(wf, {"label": "x"}, run_id=run_id)
        run = await dispatcher.result(run_id)
        return {"status": run.status, "output": run.output}
    finally:
        DBOS.destroy()
        engine.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(child(*sys.argv[1:6]))), flush=True)
