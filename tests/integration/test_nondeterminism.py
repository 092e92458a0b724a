"""Code that changed under a running run: NonDeterminismError, and the log is left untouched.

Each test runs a workflow, changes its code (same name and version, as a careless deploy
would), resumes with the new code — which must raise, naming the run, the sequence number,
what was recorded and what was asked, without appending anything — and then finishes the
run with the old code, without running its recorded steps again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, NonDeterminismError, Workflow


class S(BaseModel):
    log: list[str] = []


class ProcessDied(BaseException):
    """Stops a handler the way a killed process would: no engine code catches it."""


Body = Callable[[Context[S], Callable[[str], str]], Awaitable[None]]


def build(body: Body, executed: list[str]) -> Workflow[S]:
    """A two-phase workflow whose first phase is ``body``, then waits for a 'go' signal."""
    wf = Workflow("changing", state=S, version=1)

    def work(name: str) -> str:
        executed.append(name)
        return name.upper()

    @wf.phase(initial=True, to="done")
    async def work_phase(ctx: Context[S]) -> None:
        await body(ctx, work)
        await ctx.wait_for_signal("go")

    @wf.phase(final=True)
    async def done(ctx: Context[S]) -> list[str]:
        return ctx.state.log

    return wf


async def old_code(ctx: Context[S], work: Callable[[str], str]) -> None:
    ctx.state.log.append(await ctx.step("fetch", work, "fetch"))
    ctx.state.log.append(await ctx.step("summarise", work, "summarise"))


async def renamed_step(ctx: Context[S], work: Callable[[str], str]) -> None:
    ctx.state.log.append(await ctx.step("fetch", work, "fetch"))
    ctx.state.log.append(await ctx.step("summarize", work, "summarize"))


async def other_kind(ctx: Context[S], work: Callable[[str], str]) -> None:
    ctx.state.log.append(await ctx.step("fetch", work, "fetch"))
    ctx.state.log.append(ctx.now().isoformat())


async def fewer_calls(ctx: Context[S], work: Callable[[str], str]) -> None:
    ctx.state.log.append(await ctx.step("fetch", work, "fetch"))


CHANGES = {
    "renamed": (renamed_step, 1, "step 'summarise'", "step 'summarize'"),
    "other_kind": (other_kind, 1, "step 'summarise'", "clock 'now'"),
    "fewer_calls": (fewer_calls, 1, "step 'summarise'", "signal 'go'"),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_changed_code_raises_leaves_the_log_untouched_and_old_code_finishes(
    durable_store_url: str, change: str
) -> None:
    new_body, seq, recorded, asked = CHANGES[change]
    executed: list[str] = []
    old = build(old_code, executed)
    first = Engine(durable_store_url, workflows=[old])
    waiting = await first.run(old, run_id="r")
    assert waiting.status == "waiting" and executed == ["fetch", "summarise"]
    await first.signal("r", "go")
    before = first.history("r")
    first.close()

    new = Engine(durable_store_url, workflows=[build(new_body, executed)])
    with pytest.raises(NonDeterminismError) as raised:
        await new.resume("r")
    error = raised.value
    assert (error.run_id, error.seq) == ("r", seq)
    assert recorded in error.recorded and asked in error.asked
    assert "'r'" in str(error) and f"sequence {seq}" in str(error) and "register that workflow version" in str(error)
    assert new.history("r") == before  # nothing appended, not even the resume marker
    assert executed == ["fetch", "summarise"]
    new.close()

    again = Engine(durable_store_url, workflows=[build(old_code, executed)])
    done = await again.resume("r")
    assert done.status == "completed" and done.output == ["FETCH", "SUMMARISE"]
    assert executed == ["fetch", "summarise"]  # the recorded steps were served from the log
    again.close()


async def test_a_crashed_run_under_new_code_is_refused_before_any_live_step(durable_store_url: str) -> None:
    """A run that stopped mid-phase (no suspension) is refused during replay, before the
    new code could run a live step, and the old code finishes it."""
    executed: list[str] = []
    stop_after_first = {"on": True}

    async def interrupted(ctx: Context[S], work: Callable[[str], str]) -> None:
        ctx.state.log.append(await ctx.step("fetch", work, "fetch"))
        ctx.state.log.append(await ctx.step("summarise", work, "summarise"))
        if stop_after_first["on"]:
            raise ProcessDied  # nothing more is recorded, as if the process had been killed here

    engine = Engine(durable_store_url, workflows=[build(interrupted, executed)])
    with pytest.raises(ProcessDied):
        await engine.run(engine.registry.get("changing"), run_id="c")
    before = engine.history("c")
    engine.close()

    new = Engine(durable_store_url, workflows=[build(renamed_step, executed)])
    with pytest.raises(NonDeterminismError):
        await new.resume("c")
    assert new.history("c") == before
    new.close()

    stop_after_first["on"] = False
    old = Engine(durable_store_url, workflows=[build(interrupted, executed)])
    assert (await old.resume("c")).status == "waiting"
    assert executed == ["fetch", "summarise"]
    assert [e.type for e in old.history("c")][len(before):] == ["RunResumed", "RunSuspended"]
    old.close()
