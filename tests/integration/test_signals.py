"""Signals on every store: typed payloads, durable waits, early signals, timeouts, errors."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from phaseledger import (
    Context,
    Engine,
    InvalidInput,
    RunFinished,
    RunNotFound,
    SerializationError,
    SignalTimeout,
    Workflow,
)


class Approval(BaseModel):
    approved: bool
    comment: str = ""


class Review(BaseModel):
    seen: list[str] = []
    approved: bool | None = None
    comment: str = ""
    timed_out: bool = False
    executed: int = 0


def review_workflow(*, timeout: float | None = None, catch_timeout: bool = True) -> Workflow[Review]:
    wf = Workflow("review", state=Review, signals={"approve": Approval, "note": None})

    @wf.phase(initial=True, to="decide")
    async def plan(ctx: Context[Review]) -> None:
        ctx.state.seen.append(await ctx.step("plan", lambda: "planned"))

    @wf.phase(to={"execute": None, "stopped": None})
    async def decide(ctx: Context[Review]) -> str:
        try:
            decision = await ctx.wait_for_signal("approve", timeout=timeout)
        except SignalTimeout:
            if not catch_timeout:
                raise
            ctx.state.timed_out = True
            return "stopped"
        assert isinstance(decision, Approval)  # the declared model, live and on replay
        ctx.state.approved, ctx.state.comment = decision.approved, decision.comment
        note = await ctx.wait_for_signal("note")  # undeclared: plain JSON
        ctx.state.seen.append(note["text"])
        return "execute" if decision.approved else "stopped"

    @wf.phase(to="stopped")
    async def execute(ctx: Context[Review]) -> None:
        ctx.state.executed = await ctx.step("execute", lambda: 1)

    @wf.phase(final=True)
    async def stopped(ctx: Context[Review]) -> dict:
        return {"approved": ctx.state.approved, "executed": ctx.state.executed}

    return wf


def reopen(engine: Engine, store_url: str, wf: Workflow[Review]) -> Engine:
    """A new engine on the same store: nothing of the old one is kept in memory."""
    return Engine(engine.store if store_url == "memory://" else store_url, workflows=[wf])


async def test_wait_suspends_durably_and_a_signal_wakes_the_run(store_url: str) -> None:
    wf = review_workflow()
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, run_id="r")
    assert run.status == "waiting" and run.phase == "decide"
    assert run.suspended == {"reason": "signal", "until": None, "signal": "approve"}
    assert (await engine.resume("r")).version == run.version  # not due: nothing appended

    fresh = reopen(engine, store_url, wf)
    await fresh.signal("r", "approve", Approval(approved=True, comment="ship it"))
    assert fresh.get("r").status == "running"  # woken; a worker or resume drives it
    waiting = await fresh.resume("r")
    assert waiting.status == "waiting" and waiting.suspended["signal"] == "note"
    await fresh.signal("r", "note", {"text": "careful"})
    done = await reopen(fresh, store_url, wf).resume("r")
    assert done.status == "completed"
    assert done.output == {"approved": True, "executed": 1}
    assert done.state.comment == "ship it" and done.state.seen == ["planned", "careful"]
    steps = [e.data["name"] for e in fresh.history("r") if e.type == "StepRecorded"]
    assert steps == ["plan", "approve", "note", "execute"]  # plan ran once across three resumes


async def test_early_signals_are_kept_until_the_run_waits_for_them(store_url: str) -> None:
    wf = review_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.start(wf, run_id="early")
    await engine.signal("early", "note", {"text": "first"})
    await engine.signal("early", "approve", {"approved": False, "comment": "no"})
    run = await engine.resume("early")
    assert run.status == "completed"
    assert run.output == {"approved": False, "executed": 0}
    assert run.state.seen == ["planned", "first"]
    assert engine.get("early").suspended is None
    kinds = [e.type for e in engine.history("early")]
    assert "RunSuspended" not in kinds  # never had to wait


async def test_a_timeout_raises_signal_timeout_in_the_handler(store_url: str) -> None:
    wf = review_workflow(timeout=0.05)
    engine = Engine(store_url, workflows=[wf], max_inline_wait=0)
    run = await engine.run(wf, run_id="t")
    assert run.status == "waiting" and run.suspended["until"] is not None
    await asyncio.sleep(0.1)
    done = await engine.resume("t")
    assert done.status == "completed" and done.state.timed_out
    recorded = [e for e in engine.history("t") if e.type == "StepRecorded" and e.data["kind"] == "signal"]
    assert recorded[0].data["error"]["type"] == "SignalTimeout"
    # A signal after the timeout is refused: the run finished.
    with pytest.raises(RunFinished):
        await engine.signal("t", "approve", {"approved": True})


async def test_an_uncaught_timeout_fails_the_run(store_url: str) -> None:
    wf = review_workflow(timeout=0, catch_timeout=False)
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, run_id="u")
    assert run.status == "failed"
    assert run.error["type"] == "SignalTimeout" and "'approve'" in run.error["message"]


async def test_signal_errors_append_nothing(store_url: str) -> None:
    wf = review_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.run(wf, run_id="e")
    before = len(engine.history("e"))
    with pytest.raises(InvalidInput, match=r"approve.*Approval"):
        await engine.signal("e", "approve", {"approved": "maybe"})
    with pytest.raises(InvalidInput):
        await engine.signal("e", "approve", {"comment": "no decision"})
    with pytest.raises(SerializationError):
        await engine.signal("e", "note", {"when": object()})
    with pytest.raises(RunNotFound):
        await engine.signal("missing", "approve", {"approved": True})
    assert len(engine.history("e")) == before
    assert engine.get("e").status == "waiting"


async def test_signals_to_finished_runs_raise_run_finished(store_url: str) -> None:
    wf = review_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.start(wf, run_id="f")
    await engine.signal("f", "approve", {"approved": True})
    await engine.signal("f", "note", {"text": "x"})
    assert (await engine.resume("f")).status == "completed"
    with pytest.raises(RunFinished, match="completed"):
        await engine.signal("f", "approve", {"approved": True})
    await engine.start(wf, run_id="c")
    await engine.cancel("c", "not needed")
    with pytest.raises(RunFinished, match="cancelled"):
        await engine.signal("c", "approve", {"approved": True})


async def test_signal_ids_make_sending_idempotent(store_url: str) -> None:
    wf = review_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.run(wf, run_id="i")
    for _ in range(3):  # a client retrying the same request
        await engine.signal("i", "approve", {"approved": True}, signal_id="req-1")
    run = await engine.resume("i")
    assert run.status == "waiting" and run.suspended["signal"] == "note"
    # Sent again after the run consumed it and moved on: still not appended twice.
    await engine.signal("i", "approve", {"approved": True}, signal_id="req-1")
    received = [e for e in engine.history("i") if e.type == "SignalReceived"]
    assert [e.data["signal_id"] for e in received] == ["req-1"]


def gated_wait_workflow(gate: asyncio.Event) -> Workflow[Review]:
    wf = Workflow("gated-wait", state=Review, signals={"approve": Approval})

    async def slow() -> str:
        await gate.wait()
        return "planned"

    @wf.phase(initial=True, to="done")
    async def plan(ctx: Context[Review]) -> None:
        ctx.state.seen.append(await ctx.step("plan", slow))
        ctx.state.approved = (await ctx.wait_for_signal("approve")).approved

    @wf.phase(final=True)
    async def done(ctx: Context[Review]) -> bool | None:
        return ctx.state.approved

    return wf


@pytest.mark.parametrize("batch", [1, 10])
async def test_a_signal_sent_while_the_run_is_driven_is_rebased_not_lost(store_url: str, batch: int) -> None:
    """The driver's next commit conflicts with the signal: it rebases over it and goes on.

    With batched commits the driver even suspends for the signal it has not seen yet; the
    rebased run is then waiting with the signal in its inbox, which makes it due at once.
    """
    gate = asyncio.Event()
    wf = gated_wait_workflow(gate)
    engine = Engine(store_url, workflows=[wf], checkpoint_every_n_steps=batch)
    driving = asyncio.ensure_future(engine.run(wf, run_id="race"))
    while not engine.store.exists("race") or "race" not in engine.control.active:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)  # the step is in flight
    await engine.signal("race", "approve", {"approved": True})
    gate.set()
    run = await driving
    if batch == 1:
        assert run.status == "completed" and run.output is True
    else:
        assert run.status == "waiting" and run.suspended["signal"] == "approve"
        stats = await engine.worker(poll_interval=0.01).run(until_idle=True)  # runnable: the signal is in
        assert stats.completed == 1
    final = engine.get("race")
    assert final.status == "completed" and final.output is True
    history = engine.history("race")
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert [e.data["name"] for e in history if e.type == "StepRecorded"] == ["plan", "approve"]
