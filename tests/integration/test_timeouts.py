"""Step timeouts (per attempt and in total), phase and run deadlines: typed, routable, and kept
across resumes because they count from recorded times."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from pydantic import BaseModel

from phaseledger import (
    Context,
    DeadlineExceeded,
    Engine,
    RetryPolicy,
    StepTimeout,
    Workflow,
    WorkflowDefinitionError,
)


class Job(BaseModel):
    result: str = ""
    late: bool = False


def one_phase(handler, **workflow_options) -> Workflow[Job]:  # type: ignore[no-untyped-def]
    wf = Workflow("job", state=Job, **workflow_options)
    wf.phase(initial=True, final=True)(handler)
    return wf


async def test_an_attempt_past_its_timeout_fails_with_step_timeout_and_the_policy_retries_it(store_url: str) -> None:
    calls = Counter[str]()

    async def slow() -> str:
        calls["slow"] += 1
        await asyncio.sleep(5 if calls["slow"] == 1 else 0)
        return "ok"

    async def handler(ctx: Context[Job]) -> str:
        return await ctx.step("slow", slow, attempt_timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_delay=0))

    wf = one_phase(handler)
    async with Engine(store_url, workflows=[wf]) as engine:
        run = await engine.run(wf, run_id="r")
        assert run.output == "ok" and calls["slow"] == 2
        failed = [e.data for e in engine.history("r") if e.type == "StepAttemptFailed"]
        assert [f["error_type"] for f in failed] == ["StepTimeout"] and failed[0]["started_at"] is not None


async def test_a_blocking_function_times_out_in_its_thread_and_the_policy_can_give_up() -> None:
    def blocking() -> str:
        time.sleep(1.0)
        return "late"

    async def handler(ctx: Context[Job]) -> str:
        try:
            return await ctx.step("block", blocking, attempt_timeout=0.1,
                                  retry=RetryPolicy(max_attempts=5, give_up_on=(StepTimeout,)))
        except Exception as exc:  # StepFailed, carrying the StepTimeout
            return f"{type(exc).__name__}: {exc}"

    wf = one_phase(handler)
    async with Engine("memory://", workflows=[wf]) as engine:
        run = await engine.run(wf)
    assert run.output.startswith("StepFailed") and "StepTimeout" in run.output


async def test_total_timeout_stops_retrying_and_a_resume_keeps_the_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = f"sqlite:///{tmp_path}/runs.db"
    calls = Counter[str]()

    def flaky() -> str:
        calls["flaky"] += 1
        raise ConnectionError("down")

    async def handler(ctx: Context[Job]) -> str:
        return await ctx.step("flaky", flaky, total_timeout=1.0,
                              retry=RetryPolicy(max_attempts=100, initial_delay=0.4, backoff=1.0, jitter=False))

    wf = one_phase(handler)
    async with Engine(store, workflows=[wf], max_inline_wait=0.0) as engine:
        run = await engine.run(wf, run_id="r")  # attempt 1 fails; the retry suspends the run
        assert run.status == "retrying" and calls["flaky"] == 1
    await asyncio.sleep(1.1)  # the process is gone; the step's total budget runs out meanwhile
    async with Engine(store, workflows=[wf]) as engine:
        run = await engine.resume("r")
    assert run.status == "failed" and calls["flaky"] == 1  # the budget counts from the first attempt: spent
    assert "StepTimeout" in run.error["message"]  # type: ignore[index]


async def test_a_phase_deadline_is_typed_routable_and_counts_from_the_recorded_entry(store_url: str) -> None:
    wf = Workflow("deadline", state=Job, signals={"go": None})

    @wf.phase(initial=True, to={"escalate": lambda s: s.late, "done": None}, timeout=0.5)
    async def work(ctx: Context[Job]) -> None:
        try:
            ctx.state.result = await ctx.step("first", lambda: "first")
            await ctx.wait_for_signal("go")
            ctx.state.result = await ctx.step("second", lambda: "second")
        except DeadlineExceeded as exc:
            assert exc.scope == "phase" and exc.name == "work"
            ctx.state.late = True

    @wf.phase(final=True)
    async def escalate(ctx: Context[Job]) -> str:
        return f"escalated after {ctx.state.result}"

    @wf.phase(final=True)
    async def done(ctx: Context[Job]) -> str:
        return ctx.state.result

    async with Engine(store_url, workflows=[wf], max_inline_wait=0.0) as engine:
        waiting = await engine.run(wf, run_id="r")
        assert waiting.status == "waiting"
        await asyncio.sleep(0.6)  # the deadline passes while nothing drives the run
        await engine.signal("r", "go")
        run = await engine.resume("r")  # a new driver: the deadline still counts from the entry
        assert run.output == "escalated after first"
        await engine.run(wf, run_id="fast")
        await engine.signal("fast", "go")
        assert (await engine.resume("fast")).output == "second"


async def test_a_run_deadline_bounds_a_step_in_flight(store_url: str) -> None:
    async def forever() -> str:
        await asyncio.sleep(30)
        return "never"

    async def handler(ctx: Context[Job]) -> str:
        return await ctx.step("forever", forever, retry=RetryPolicy(max_attempts=10))

    wf = one_phase(handler, timeout=0.3)
    async with Engine(store_url, workflows=[wf]) as engine:
        run = await engine.run(wf, run_id="r")
    assert run.status == "failed" and run.error["type"] == "DeadlineExceeded"  # type: ignore[index]
    assert "run deadline of 'job'" in run.error["message"]  # type: ignore[index]


def test_timeouts_are_checked_when_declared() -> None:
    with pytest.raises(WorkflowDefinitionError, match="timeout must be a number of seconds > 0"):
        Workflow("bad", state=Job, timeout=0)
    wf = Workflow("bad-phase", state=Job)
    with pytest.raises(WorkflowDefinitionError, match="phase 'p': timeout"):
        wf.phase("p", initial=True, final=True, timeout=-1)


@pytest.mark.postgres
async def test_a_step_longer_than_the_lease_keeps_its_worker_lease(postgres_url: str) -> None:
    """Two workers with 0.6 s leases; a 2 s step: the heartbeat keeps the lease, nothing runs twice."""
    calls = Counter[str]()

    async def long_step() -> str:
        calls["long"] += 1
        await asyncio.sleep(2.0)
        return "done"

    async def handler(ctx: Context[Job]) -> str:
        return await ctx.step("long", long_step)

    wf = one_phase(handler)
    async with Engine(postgres_url, workflows=[wf]) as first, Engine(postgres_url, workflows=[wf]) as second:
        workers = [engine.worker(lease_seconds=0.6, poll_interval=0.05) for engine in (first, second)]
        tasks = [asyncio.ensure_future(w.run(handle_signals=False)) for w in workers]
        await first.start(wf, run_id="r")
        deadline = time.monotonic() + 20
        while first.get("r").status != "completed":
            assert time.monotonic() < deadline, "the run did not complete"
            await asyncio.sleep(0.05)
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
    assert calls["long"] == 1
    assert sum(w.stats.completed for w in workers) == 1 and sum(w.stats.lost for w in workers) == 0
