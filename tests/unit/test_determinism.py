"""ctx.now(), ctx.uuid() and ctx.random() are recorded; idempotency keys are stable per step."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, PhaseledgerError, RetryPolicy, Workflow, idempotency_key


class Seen(BaseModel):
    values: list[str] = []


class ProcessDied(BaseException):
    """Stops a handler the way a killed process would: no engine code catches it."""


async def test_clock_uuid_and_random_values_replay_as_recorded() -> None:
    wf = Workflow("values", state=Seen)
    taken: list[list[str]] = []

    @wf.phase(initial=True, to="done")
    async def draw(ctx: Context[Seen]) -> None:
        values = [ctx.now().isoformat(), str(ctx.uuid()), repr(ctx.random())]
        taken.append(values)
        ctx.state.values = values
        await ctx.wait_for_signal("go")  # suspends: the phase is replayed on resume

    @wf.phase(final=True)
    async def done(ctx: Context[Seen]) -> list[str]:
        return ctx.state.values

    engine = Engine("memory://")
    await engine.run(wf, run_id="v")
    await engine.signal("v", "go")
    run = await engine.resume("v")
    assert len(taken) == 2 and taken[0] == taken[1]  # the replayed phase saw the recorded values
    assert run.output == taken[0]
    recorded = [(e.data["kind"], e.data["name"]) for e in engine.history("v") if e.type == "StepRecorded"]
    assert recorded[:3] == [("clock", "now"), ("random", "uuid"), ("random", "random")]


async def test_idempotency_key_is_stable_across_attempts_and_re_executions() -> None:
    keys: list[str] = []
    die = {"on": True}

    def pay() -> str:
        keys.append(idempotency_key())
        if len(keys) == 1:
            raise ConnectionError("payment gateway reset")  # retried: same key
        if die["on"]:
            raise ProcessDied  # died in flight: the result was never recorded
        return "paid"

    wf = Workflow("pay", state=Seen)

    @wf.phase(initial=True, final=True)
    async def checkout(ctx: Context[Seen]) -> str:
        await ctx.step("reserve", lambda: "reserved")
        return await ctx.step("pay", pay, retry=RetryPolicy(initial_delay=0.0, jitter=False))

    engine = Engine("memory://")
    with pytest.raises(ProcessDied):
        await engine.run(wf, run_id="p")
    die["on"] = False
    fresh = Engine(engine.store, workflows=[wf])
    assert (await fresh.resume("p")).output == "paid"
    assert len(keys) == 3 and len(set(keys)) == 1
    assert keys[0] == "p:2.1"  # run id, the version that entered the phase, the call's key
    with pytest.raises(PhaseledgerError, match="only available inside a step"):
        idempotency_key()
