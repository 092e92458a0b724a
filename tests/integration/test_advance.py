"""engine.advance: drive a run until it must wait, and say what it waits for (the dispatcher seam).

A dispatcher calls ``advance`` again when what the run waits for has happened; these tests
play that dispatcher, waiting out the returned times themselves.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, RunWait, Workflow

PAUSE = 0.2  # seconds a timer or a retry waits: beyond max_inline_wait=0, so the run suspends


class Order(BaseModel):
    approved: bool = False
    total: int = 0


def order_workflow(calls: list[str]) -> Workflow[Order]:
    wf = Workflow("advance-order", state=Order)

    def price() -> int:
        calls.append("price")
        return 40

    def carrier() -> int:
        calls.append("carrier")
        if calls.count("carrier") == 1:
            raise ConnectionError("reset")
        return 2

    @wf.phase(initial=True, to="ship")
    async def approve(ctx: Context[Order]) -> None:
        ctx.state.total = await ctx.step("price", price)
        await ctx.sleep(PAUSE)
        ctx.state.approved = (await ctx.wait_for_signal("approve", timeout=3600))["ok"]

    @wf.phase(final=True)
    async def ship(ctx: Context[Order]) -> int:
        retry = RetryPolicy(max_attempts=3, initial_delay=PAUSE, jitter=False)
        return ctx.state.total + await ctx.step("carrier", carrier, retry=retry)

    return wf


async def until_due(wait: RunWait) -> None:
    """What a dispatcher's timer does: wait until the run is due again."""
    assert wait.until is not None
    await asyncio.sleep(max(0.0, (wait.until - datetime.now(UTC)).total_seconds()) + 0.05)


async def test_advance_names_each_wait_and_drives_the_run_only_when_it_is_due(store_url: str) -> None:
    calls: list[str] = []
    wf = order_workflow(calls)
    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    try:
        run = await engine.start(wf, run_id="order-1")
        started = datetime.now(UTC)

        asleep = await engine.advance(run.run_id)
        assert isinstance(asleep, RunWait) and not asleep.finished
        assert (asleep.reason, asleep.signal, asleep.run.status) == ("sleep", None, "sleeping")
        assert asleep.until is not None and asleep.until >= started + timedelta(seconds=PAUSE)
        assert calls == ["price"]

        early = await engine.advance(run.run_id)  # not due yet: nothing runs, nothing is appended
        assert early.run.version == asleep.run.version and early.reason == "sleep"

        await until_due(asleep)
        waiting = await engine.advance(run.run_id)
        assert (waiting.reason, waiting.signal, waiting.run.status) == ("signal", "approve", "waiting")
        assert waiting.until is not None and waiting.until > datetime.now(UTC) + timedelta(seconds=3000)

        await engine.signal(run.run_id, "approve", {"ok": True})
        retrying = await engine.advance(run.run_id)
        assert (retrying.reason, retrying.signal, retrying.run.status) == ("retry", None, "retrying")
        assert calls == ["price", "carrier"]

        await until_due(retrying)
        done = await engine.advance(run.run_id)
        assert done.finished and done.reason is None and done.until is None
        assert (done.run.status, done.run.output) == ("completed", 42)
        assert calls == ["price", "carrier", "carrier"]  # no recorded step ran again
    finally:
        engine.close()


async def test_a_finished_run_is_returned_untouched(store_url: str) -> None:
    wf = Workflow("advance-done", state=Order)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[Order]) -> int:
        return 7

    engine = Engine(store_url, workflows=[wf])
    try:
        run = await engine.start(wf, run_id="order-2")
        done = await engine.advance(run.run_id)
        assert done.finished and done.run.output == 7
        again = await engine.advance(run.run_id)
        assert again.finished and again.run.version == done.run.version
        cancelled_wf_run = await engine.start(wf, run_id="order-3")
        await engine.cancel(cancelled_wf_run.run_id)
        cancelled: Any = await engine.advance(cancelled_wf_run.run_id)
        assert cancelled.finished and cancelled.run.status == "cancelled"
    finally:
        engine.close()
