"""Cancellation on every store: RunCancelled, stop at the next journal boundary, never resume."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, RunFinished, RunNotFound, Workflow


class Steps(BaseModel):
    done: list[str] = []


def gated_workflow(gate: asyncio.Event, ran: list[str]) -> Workflow[Steps]:
    """Step ``a`` blocks on ``gate``; ``ran`` lists the step functions that really ran."""
    wf = Workflow("gated", state=Steps)

    async def a() -> str:
        ran.append("a")
        await gate.wait()
        return "a"

    def b() -> str:
        ran.append("b")
        return "b"

    @wf.phase(initial=True, to="end")
    async def work(ctx: Context[Steps]) -> None:
        ctx.state.done.append(await ctx.step("a", a))
        ctx.state.done.append(await ctx.step("b", b))

    @wf.phase(final=True)
    async def end(ctx: Context[Steps]) -> list[str]:
        return ctx.state.done

    return wf


async def test_a_run_in_the_middle_of_a_step_stops_at_the_next_boundary(store_url: str) -> None:
    gate, ran = asyncio.Event(), []
    wf = gated_workflow(gate, ran)
    engine = Engine(store_url, workflows=[wf])
    driving = asyncio.ensure_future(engine.run(wf, run_id="mid"))
    while ran != ["a"]:
        await asyncio.sleep(0.005)
    cancelled = await engine.cancel("mid", "changed my mind")
    assert cancelled.status == "cancelled"
    gate.set()  # step a finishes; its result is not recorded and b never runs
    final = await driving
    assert final.status == "cancelled" and final.error["message"] == "changed my mind"
    assert ran == ["a"]
    history = engine.history("mid")
    assert history[-1].type == "RunCancelled" and history[-1].data["reason"] == "changed my mind"
    assert not [e for e in history if e.type == "StepRecorded"]


async def test_a_cancelled_run_never_resumes(store_url: str) -> None:
    gate, ran = asyncio.Event(), []
    gate.set()
    wf = gated_workflow(gate, ran)
    engine = Engine(store_url, workflows=[wf])
    await engine.start(wf, run_id="c")
    run = await engine.cancel("c")
    assert run.status == "cancelled" and run.finished
    before = len(engine.history("c"))
    with pytest.raises(RunFinished, match="cancelled"):
        await engine.resume("c")
    with pytest.raises(RunFinished, match="cancelled"):
        await engine.retry("c")
    with pytest.raises(RunFinished, match="cancelled"):
        await engine.cancel("c")
    with pytest.raises(RunFinished, match="cancelled"):
        await engine.signal("c", "go", {})
    stats = await engine.worker(poll_interval=0.01).run(until_idle=True)
    assert stats.claimed == 0
    assert ran == [] and len(engine.history("c")) == before
    with pytest.raises(RunNotFound):
        await engine.cancel("nope")


async def test_cancelling_finished_runs_raises_run_finished(store_url: str) -> None:
    gate, ran = asyncio.Event(), []
    gate.set()
    wf = gated_workflow(gate, ran)
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, run_id="done")
    assert run.status == "completed"
    with pytest.raises(RunFinished, match="completed"):
        await engine.cancel("done")
    assert engine.history("done")[-1].type == "RunCompleted"


async def test_cancelling_a_waiting_or_sleeping_run(store_url: str) -> None:
    class Idle(BaseModel):
        pass

    wf = Workflow("idle", state=Idle)

    @wf.phase(initial=True, to="nap")
    async def wait(ctx: Context[Idle]) -> None:
        await ctx.wait_for_signal("go")

    @wf.phase(to="end")
    async def nap(ctx: Context[Idle]) -> None:
        await ctx.sleep(3600)

    @wf.phase(final=True)
    async def end(ctx: Context[Idle]) -> None:
        return None

    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    assert (await engine.run(wf, run_id="w")).status == "waiting"
    await engine.start(wf, run_id="s")
    await engine.signal("s", "go", {})
    assert (await engine.resume("s")).status == "sleeping"
    for run_id in ("w", "s"):
        assert (await engine.cancel(run_id, "shutdown")).status == "cancelled"
        assert engine.get(run_id).suspended is None
    with pytest.raises(RunFinished):
        await engine.signal("w", "go", {})
