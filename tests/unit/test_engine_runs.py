"""Running and resuming on the in-memory store: handlers, steps, errors, replay."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from phaseledger import (
    Context,
    Engine,
    InvalidInput,
    RunFinished,
    SerializationError,
    UnknownWorkflow,
    Workflow,
)
from phaseledger.domain.run import WorkflowRun


class Doc(BaseModel):
    title: str
    words: int


class S(BaseModel):
    topic: str = "t"
    docs: list[Doc] = []
    seen: list[int] = []
    log: list[str] = []


def two_phase(body) -> Workflow[S]:
    wf = Workflow("two", state=S)
    wf.phase("work", initial=True, to={"done": None, "work": None})(body)

    @wf.phase(final=True)
    async def done(ctx: Context[S]) -> int:
        return len(ctx.state.docs)

    return wf


async def test_step_results_come_back_as_the_same_type_live_and_on_replay() -> None:
    calls: list[str] = []

    async def fetch(title: str) -> Doc:
        calls.append(title)
        return Doc(title=title, words=3)

    async def work(ctx: Context[S]) -> str:
        doc = await ctx.step("fetch", fetch, "a")
        assert isinstance(doc, Doc)
        ctx.state.docs.append(doc)
        numbers = await ctx.step("numbers", lambda: [1, {"x": None}])
        assert numbers == [1, {"x": None}]
        return "done"

    wf = two_phase(work)
    engine = Engine("memory://", workflows=[wf])
    await engine.start(wf, run_id="r")
    # drive only the first step, as if the process died right after it was recorded
    run = engine.store.load("r")
    run.trigger_event(
        WorkflowRun.StepRecorded, seq=0, key="0", name="fetch", kind="step", result={"title": "a", "words": 3},
        result_type=f"{Doc.__module__}:Doc", fingerprint=None, usage=None, duration=0.0, error=None, detail=None,
    )
    engine.store.save(run)
    final = await engine.resume("r")
    assert calls == [] and final.status == "completed" and final.output == 1
    assert final.state.docs == [Doc(title="a", words=3)]


async def test_ctx_exposes_run_phase_and_attempt() -> None:
    async def work(ctx: Context[S]) -> str:
        ctx.state.log.append(f"{ctx.run_id}/{ctx.phase}/{ctx.attempt}/{ctx.workflow}")
        return "work" if ctx.attempt < 3 else "done"

    wf = two_phase(work)
    run = await Engine("memory://", workflows=[wf]).run(wf, run_id="id1")
    assert run.state.log == ["id1/work/1/two", "id1/work/2/two", "id1/work/3/two"]
    assert run.attempts == {"work": 3, "done": 1}


async def test_a_forbidden_next_phase_fails_the_run_without_a_phase_change() -> None:
    wf = Workflow("bad", state=S)

    @wf.phase(initial=True, to={"b": lambda s: False, "c": None})
    async def a(ctx: Context[S]) -> str:
        return "b"

    wf.phase("b", final=True)(a)
    wf.phase("c", final=True)(a)
    engine = Engine("memory://", workflows=[wf])
    run = await engine.run(wf)
    assert run.status == "failed" and run.phase == "a"
    assert run.error["type"] == "InvalidTransition" and "guard" in run.error["message"]
    assert [e.type for e in engine.history(run.run_id)] == ["RunStarted", "PhaseEntered", "RunFailed"]


async def test_a_result_that_cannot_be_recorded_raises_before_anything_is_appended() -> None:
    seen: list[str] = []

    async def work(ctx: Context[S]) -> str:
        try:
            await ctx.step("bad", lambda: object())
        except SerializationError as exc:
            seen.append(str(exc))
        try:
            await ctx.step("tuple", lambda: (1, 2))
        except SerializationError as exc:
            seen.append(str(exc))
        return "done"

    wf = two_phase(work)
    engine = Engine("memory://", workflows=[wf])
    run = await engine.run(wf)
    assert run.status == "completed"
    assert "cannot be recorded" in seen[0] and "tuple" in seen[1]
    assert "StepRecorded" not in [e.type for e in engine.history(run.run_id)]


async def test_resume_errors() -> None:
    async def work(ctx: Context[S]) -> str:
        return "done"

    wf = two_phase(work)
    engine = Engine("memory://", workflows=[wf])
    run = await engine.run(wf, run_id="fin")
    with pytest.raises(RunFinished, match="completed"):
        await engine.resume("fin")
    other = Engine(engine.store)
    await engine.start(wf, run_id="pending")
    with pytest.raises(UnknownWorkflow, match="version 1 is not registered"):
        await other.resume("pending")
    with pytest.raises(InvalidInput, match="input of workflow"):
        await engine.start(wf, {"docs": "not a list"})
    assert run.status == "completed"


async def test_many_runs_progress_concurrently_on_one_loop() -> None:
    import asyncio

    async def work(ctx: Context[S]) -> str:
        for i in range(3):
            ctx.state.seen.append(await ctx.step("tick", asyncio.sleep, 0.01, i))
        return "done"

    wf = two_phase(work)
    engine = Engine("memory://", workflows=[wf])
    runs = await asyncio.gather(*(engine.run(wf, run_id=f"c{i}") for i in range(20)))
    assert {r.status for r in runs} == {"completed"}
    assert all(r.state.seen == [0, 1, 2] for r in runs)
