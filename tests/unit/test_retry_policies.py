"""Retries: which policy applies, what each failed attempt records, how failures end a step."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import pytest
from pydantic import BaseModel

from phaseledger import (
    Context,
    Engine,
    PhaseledgerError,
    RetryPolicy,
    RunFinished,
    StepFailed,
    Workflow,
    WorkflowDefinitionError,
)

FAST = {"initial_delay": 0.0, "jitter": False}


class S(BaseModel):
    log: list[str] = []


def always_fails(message: str = "boom") -> None:
    raise ConnectionError(message)


def attempts_of(engine: Engine, run_id: str, name: str) -> list[dict]:
    return [e.data for e in engine.history(run_id) if e.type == "StepAttemptFailed" and e.data["name"] == name]


async def test_step_phase_workflow_and_engine_policies_each_apply_in_that_order() -> None:
    engine = Engine("memory://", retry=RetryPolicy(max_attempts=2, **FAST))
    plain = Workflow("plain", state=S)
    layered = Workflow("layered", state=S, retry=RetryPolicy(max_attempts=3, **FAST))

    async def try_step(ctx: Context[S], name: str, retry: RetryPolicy | None = None) -> None:
        try:
            await ctx.step(name, always_fails, retry=retry)
        except StepFailed as exc:
            ctx.state.log.append(f"{exc.name}:{exc.attempts}")

    @plain.phase(initial=True, to="done")
    async def only(ctx: Context[S]) -> None:
        await try_step(ctx, "engine_default")

    @plain.phase(final=True)
    async def done(ctx: Context[S]) -> list[str]:
        return ctx.state.log

    @layered.phase(initial=True, to="with_phase_policy")
    async def first(ctx: Context[S]) -> None:
        await try_step(ctx, "workflow_default")

    @layered.phase(to="end", retry=RetryPolicy(max_attempts=4, **FAST))
    async def with_phase_policy(ctx: Context[S]) -> None:
        await try_step(ctx, "phase_default")
        await try_step(ctx, "per_step", retry=RetryPolicy(max_attempts=5, **FAST))

    @layered.phase(final=True)
    async def end(ctx: Context[S]) -> list[str]:
        return ctx.state.log

    assert (await engine.run(plain, run_id="p")).output == ["engine_default:2"]
    run = await engine.run(layered, run_id="l")
    assert run.output == ["workflow_default:3", "phase_default:4", "per_step:5"]
    for name, expected in (("workflow_default", 3), ("phase_default", 4), ("per_step", 5)):
        attempts = attempts_of(engine, "l", name)
        assert [a["attempt"] for a in attempts] == list(range(1, expected + 1))
        assert all(a["error_type"] == "ConnectionError" and a["retryable"] for a in attempts)
        assert [a["retry_at"] is None for a in attempts] == [False] * (expected - 1) + [True]


def test_backoff_schedule_caps_and_jitter() -> None:
    policy = RetryPolicy(initial_delay=1.0, backoff=2.0, max_delay=5.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(initial_delay=10.0, backoff=1.0, jitter=True)
    rng = random.Random(7)
    delays = [jittered.delay(1, rng) for _ in range(200)]
    assert all(8.0 <= d <= 10.0 for d in delays) and len(set(delays)) > 100
    for bad in ({"max_attempts": 0}, {"backoff": 0.5}, {"initial_delay": -1}, {"retry_on": ValueError}):
        with pytest.raises(WorkflowDefinitionError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


async def test_attempts_never_start_before_the_recorded_retry_at() -> None:
    starts: list[datetime] = []

    def flaky() -> str:
        starts.append(datetime.now().astimezone())
        if len(starts) < 3:
            raise TimeoutError("slow upstream")
        return "ok"

    wf = Workflow("backoff", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> str:
        return await ctx.step("flaky", flaky, retry=RetryPolicy(initial_delay=0.02, backoff=2.0, jitter=False))

    engine = Engine("memory://")
    assert (await engine.run(wf, run_id="b")).output == "ok"
    failed = attempts_of(engine, "b", "flaky")
    assert [f["attempt"] for f in failed] == [1, 2]
    for attempt, next_start in zip(failed, starts[1:]):
        assert next_start >= datetime.fromisoformat(attempt["retry_at"])
    gaps = [datetime.fromisoformat(f["retry_at"]) - e.timestamp
            for f, e in zip(failed, [e for e in engine.history("b") if e.type == "StepAttemptFailed"])]
    assert gaps[1] > gaps[0]  # the delay grew by the backoff factor


async def test_long_backoff_suspends_the_run_until_retry_at() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("reset")
        return "ok"

    wf = Workflow("suspending", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> str:
        return await ctx.step("flaky", flaky, retry=RetryPolicy(initial_delay=0.2, jitter=False))

    engine = Engine("memory://", max_inline_wait=0.0)
    run = await engine.run(wf, run_id="s")
    assert run.status == "retrying"
    (failure,) = attempts_of(engine, "s", "flaky")
    assert run.suspended is not None and run.suspended["until"].isoformat() == failure["retry_at"]
    early = await engine.resume("s")  # not due yet: nothing happens, nothing is appended
    assert early.status == "retrying" and early.version == run.version and calls == [1]
    await asyncio.sleep(0.25)
    done = await engine.resume("s")
    assert done.status == "completed" and done.output == "ok" and calls == [1, 1]


class Permanent(Exception):
    retryable = False


async def test_non_retryable_errors_fail_fast() -> None:
    policy = RetryPolicy(max_attempts=5, give_up_on=(KeyError,), **FAST)
    errors = {"give_up_on": KeyError("k"), "self_declared": Permanent("no"), "not_retry_on": ValueError("v")}
    wf = Workflow("fast", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> list[str]:
        out = []
        for name, error in errors.items():
            def fail(error: Exception = error) -> None:
                raise error
            try:
                retry = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,), **FAST) if name == "not_retry_on" else policy
                await ctx.step(name, fail, retry=retry)
            except StepFailed as exc:
                out.append(f"{name}:{exc.attempts}:{exc.error_type}")
        return out

    engine = Engine("memory://")
    run = await engine.run(wf, run_id="f")
    assert run.output == ["give_up_on:1:KeyError", "self_declared:1:Permanent", "not_retry_on:1:ValueError"]
    for name in errors:
        (only_attempt,) = attempts_of(engine, "f", name)
        assert only_attempt["retryable"] is False and only_attempt["retry_at"] is None


async def test_step_failed_can_route_to_another_phase() -> None:
    wf = Workflow("route", state=S, retry=RetryPolicy(max_attempts=2, **FAST))

    @wf.phase(initial=True, to=["done", "fallback"])
    async def call_primary(ctx: Context[S]) -> str:
        try:
            await ctx.step("primary", always_fails, "primary is down")
        except StepFailed as exc:
            ctx.state.log.append(f"{exc.error_type}: {exc.message} after {exc.attempts}")
            return "fallback"
        return "done"

    @wf.phase(to="done")
    async def fallback(ctx: Context[S]) -> None:
        ctx.state.log.append(await ctx.step("secondary", lambda: "secondary answered"))

    @wf.phase(final=True)
    async def done(ctx: Context[S]) -> list[str]:
        return ctx.state.log

    run = await Engine("memory://").run(wf, run_id="r")
    assert run.status == "completed"
    assert run.output == ["ConnectionError: primary is down after 2", "secondary answered"]
    assert run.attempts == {"call_primary": 1, "fallback": 1, "done": 1}


async def test_uncaught_step_failure_fails_the_run_and_retry_reenters_the_phase() -> None:
    executed: list[str] = []
    fixed = {"deployed": False}

    def charge() -> str:
        executed.append("charge")
        return "charged"

    def ship() -> str:
        executed.append("ship")
        if not fixed["deployed"]:
            raise ValueError("address service rejected the label")
        return "shipped"

    wf = Workflow("shop", state=S, retry=RetryPolicy(max_attempts=2, **FAST))

    @wf.phase(initial=True, to="deliver")
    async def order(ctx: Context[S]) -> None:
        ctx.state.log.append(await ctx.step("confirm", lambda: "confirmed"))

    @wf.phase(to="done")
    async def deliver(ctx: Context[S]) -> None:
        ctx.state.log.append(await ctx.step("charge", charge))
        ctx.state.log.append(await ctx.step("ship", ship))

    @wf.phase(final=True)
    async def done(ctx: Context[S]) -> list[str]:
        return ctx.state.log

    engine = Engine("memory://")
    failed = await engine.run(wf, run_id="o")
    assert failed.status == "failed" and failed.phase == "deliver"
    error = failed.error or {}
    assert error["type"] == "StepFailed"
    assert "'ship' failed after 2 attempt(s): ValueError: address service rejected the label" in error["message"]
    assert "Traceback" in error["traceback"] or "StepFailed" in error["traceback"]
    assert 0 < len(error["traceback"].splitlines()) <= 12
    assert executed == ["charge", "ship", "ship"]
    with pytest.raises(RunFinished):
        await engine.resume("o")

    fixed["deployed"] = True
    retried = await engine.retry("o")
    assert retried.status == "completed"
    assert retried.output == ["confirmed", "charged", "shipped"]
    assert executed == ["charge", "ship", "ship", "ship"]  # charge was recorded: not run again
    assert retried.attempts["deliver"] == 1  # re-entered in place, not a new phase visit
    with pytest.raises(RunFinished):
        await engine.retry("o")


async def test_retry_refuses_runs_that_did_not_fail() -> None:
    wf = Workflow("waits", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> None:
        await ctx.wait_for_signal("go")

    engine = Engine("memory://")
    await engine.run(wf, run_id="w")
    with pytest.raises(PhaseledgerError, match="not failed"):
        await engine.retry("w")


async def test_a_provider_retry_after_is_honoured_within_max_delay() -> None:
    class RateLimited(Exception):
        def __init__(self, retry_after: float) -> None:
            super().__init__(f"slow down for {retry_after}s")
            self.retry_after = retry_after

    wf = Workflow("polite", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> None:
        await ctx.step("short", lambda: (_ for _ in ()).throw(RateLimited(30.0)),
                       retry=RetryPolicy(initial_delay=0.0, jitter=False))

    engine = Engine("memory://", max_inline_wait=0.0)
    run = await engine.run(wf, run_id="p")
    (failure,) = attempts_of(engine, "p", "short")
    event = next(e for e in engine.history("p") if e.type == "StepAttemptFailed")
    waited = (datetime.fromisoformat(failure["retry_at"]) - event.timestamp).total_seconds()
    assert run.status == "retrying" and 25 < waited <= 30

    capped = Workflow("capped", state=S)

    @capped.phase(initial=True, final=True)
    async def only_capped(ctx: Context[S]) -> None:
        await ctx.step("long", lambda: (_ for _ in ()).throw(RateLimited(3600.0)),
                       retry=RetryPolicy(initial_delay=0.0, max_delay=10.0, jitter=False))

    await engine.run(capped, run_id="c")
    (failure,) = attempts_of(engine, "c", "long")
    event = next(e for e in engine.history("c") if e.type == "StepAttemptFailed")
    assert (datetime.fromisoformat(failure["retry_at"]) - event.timestamp).total_seconds() <= 10
