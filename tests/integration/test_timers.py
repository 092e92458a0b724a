"""Durable timers on every store: ``ctx.sleep`` records its wake time, survives a crash, never wakes early."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from tests.integration import worker_fleet

ROOT = Path(__file__).resolve().parents[2]


class Nap(BaseModel):
    woke_at: str | None = None
    before: str | None = None


def nap_workflow(seconds: float) -> Workflow[Nap]:
    wf = Workflow("nap", state=Nap)

    @wf.phase(initial=True, to="up")
    async def doze(ctx: Context[Nap]) -> None:
        ctx.state.before = await ctx.step("before", lambda: "ran")
        await ctx.sleep(seconds)
        ctx.state.woke_at = ctx.now().isoformat()

    @wf.phase(final=True)
    async def up(ctx: Context[Nap]) -> str | None:
        return ctx.state.woke_at

    return wf


def wake_at_of(engine: Engine, run_id: str) -> datetime:
    (timer,) = [e for e in engine.history(run_id) if e.type == "TimerStarted"]
    return datetime.fromisoformat(timer.data["wake_at"])


async def test_a_long_sleep_suspends_until_its_wake_time(store_url: str) -> None:
    wf = nap_workflow(0.3)
    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    run = await engine.run(wf, run_id="s")
    wake_at = wake_at_of(engine, "s")
    assert run.status == "sleeping" and run.suspended == {"reason": "sleep", "until": wake_at, "signal": None}
    early = await engine.resume("s")  # not due: nothing happens, nothing is appended
    assert early.status == "sleeping" and early.version == run.version
    await asyncio.sleep(max(0.0, (wake_at - datetime.now(wake_at.tzinfo)).total_seconds()) + 0.01)
    done = await engine.resume("s")
    assert done.status == "completed"
    assert datetime.fromisoformat(done.output) >= wake_at
    assert [e.data["name"] for e in engine.history("s") if e.type == "StepRecorded"] == ["before", "sleep", "now"]


async def test_a_short_sleep_waits_inline_and_never_wakes_early(store_url: str) -> None:
    wf = nap_workflow(0.05)
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, run_id="inline")
    assert run.status == "completed"
    assert datetime.fromisoformat(run.output) >= wake_at_of(engine, "inline")
    assert "RunSuspended" not in [e.type for e in engine.history("inline")]


async def test_zero_and_negative_sleeps_return_at_once(store_url: str) -> None:
    for seconds in (0.0, -5.0):
        wf = nap_workflow(seconds)
        engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
        run = await engine.run(wf)
        assert run.status == "completed"
        engine.close()


async def test_a_crash_during_a_sleep_changes_nothing(durable_store_url: str) -> None:
    """A process sleeping inline is SIGKILLed; the resumed run keeps the recorded wake time."""
    code = (
        "import asyncio, sys\n"
        "from phaseledger import Engine\n"
        "from tests.integration.worker_fleet import napper\n"
        "asyncio.run(Engine(sys.argv[1], workflows=[napper]).run(napper, run_id='nap'))\n"
    )
    env = {**os.environ, "FLEET_NAP": "1.0", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code, durable_store_url], cwd=ROOT, env=env)
    engine = Engine(durable_store_url, workflows=[worker_fleet.napper])
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if engine.store.exists("nap") and any(e.type == "TimerStarted" for e in engine.history("nap")):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the child never started its timer")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wake_at = wake_at_of(engine, "nap")
    assert engine.get("nap").status == "running"  # it was sleeping inline when it died
    assert wake_at - datetime.now(wake_at.tzinfo) > timedelta(seconds=0.3)
    done = await engine.resume("nap")
    assert done.status == "completed"
    assert datetime.fromisoformat(done.output) >= wake_at
    assert wake_at_of(engine, "nap") == wake_at  # one timer, its wake time unchanged
    engine.close()


async def test_a_worker_wakes_sleeping_runs_when_due(store_url: str) -> None:
    wf = nap_workflow(0.4)
    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    for i in range(3):
        await engine.start(wf, run_id=f"w{i}")
    stats = await engine.worker(poll_interval=0.02).run(until_idle=True)
    assert stats.suspended == 3 and [engine.get(f"w{i}").status for i in range(3)] == ["sleeping"] * 3

    worker = engine.worker(poll_interval=0.02)
    background = asyncio.ensure_future(worker.run(handle_signals=False))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(engine.get(f"w{i}").status != "completed" for i in range(3)):
        await asyncio.sleep(0.05)
    worker.stop()
    stats = await background
    assert stats.completed == 3
    for i in range(3):
        assert datetime.fromisoformat(engine.get(f"w{i}").output) >= wake_at_of(engine, f"w{i}")
    engine.close()
