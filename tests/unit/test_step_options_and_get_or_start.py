"""ctx.step keeps its options apart from the function's arguments; starting a run can be idempotent."""

from __future__ import annotations

import functools

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, RunExists, Workflow


class Box(BaseModel):
    value: str = ""


def fetch(url: str, retry: bool = False) -> str:
    return f"{url} retry={retry}"


def plain(url: str) -> str:
    return url


def _workflow(call) -> Workflow[Box]:  # type: ignore[no-untyped-def]
    wf = Workflow("fetcher", state=Box)

    @wf.phase(initial=True, final=True)
    async def go(ctx: Context[Box]) -> str:
        ctx.state.value = await call(ctx)
        return ctx.state.value

    return wf


@pytest.mark.parametrize("option", ["retry", "breaker"])
async def test_an_option_the_function_also_takes_is_refused_not_swallowed(option: str) -> None:
    def takes_both(url: str, retry: bool = False, breaker: str = "") -> str:
        return url

    wf = _workflow(lambda ctx: ctx.step("fetch", takes_both, "u", **{option: True if option == "retry" else "b"}))
    async with Engine("memory://", workflows=[wf]) as engine:
        run = await engine.run(wf, run_id="r")
    assert run.status == "failed"
    assert run.error is not None and run.error["type"] == "TypeError"
    assert f"takes a parameter named {option!r}" in run.error["message"] and "functools.partial" in run.error["message"]


async def test_a_retry_that_is_not_a_policy_is_refused() -> None:
    wf = _workflow(lambda ctx: ctx.step("fetch", plain, "u", retry=True))
    async with Engine("memory://", workflows=[wf]) as engine:
        run = await engine.run(wf, run_id="r")
    assert run.status == "failed" and "takes a RetryPolicy" in run.error["message"]  # type: ignore[index]


async def test_the_function_gets_its_own_keyword_through_partial_and_the_option_still_applies() -> None:
    wf = _workflow(lambda ctx: ctx.step("fetch", functools.partial(fetch, retry=True), "u",
                                        retry=RetryPolicy(max_attempts=2)))
    async with Engine("memory://", workflows=[wf]) as engine:
        run = await engine.run(wf, run_id="r")
    assert run.output == "u retry=True"


async def test_start_and_run_with_if_exists_return_are_idempotent() -> None:
    calls: list[str] = []

    def work(topic: str) -> str:
        calls.append(topic)
        return topic.upper()

    wf = _workflow(lambda ctx: ctx.step("work", work, "topic"))
    async with Engine("memory://", workflows=[wf]) as engine:
        first = await engine.run(wf, {"value": "x"}, run_id="r", if_exists="return")
        again = await engine.run(wf, {"value": "x"}, run_id="r", if_exists="return")
        assert first.status == again.status == "completed" and again.output == "TOPIC"
        assert calls == ["topic"]  # the second call returned the finished run
        assert (await engine.start(wf, {"value": "x"}, run_id="r", if_exists="return")).version == first.version
        with pytest.raises(RunExists, match="another workflow or input"):
            await engine.start(wf, {"value": "y"}, run_id="r", if_exists="return")
        with pytest.raises(RunExists, match="if_exists='return'"):
            await engine.start(wf, {"value": "x"}, run_id="r")


async def test_run_with_if_exists_return_resumes_an_unfinished_run() -> None:
    calls: list[str] = []

    def work(topic: str) -> str:
        calls.append(topic)
        return topic

    wf = _workflow(lambda ctx: ctx.step("work", work, "t"))
    async with Engine("memory://", workflows=[wf]) as engine:
        await engine.start(wf, run_id="r")  # recorded, never driven (a script that died)
        run = await engine.run(wf, run_id="r", if_exists="return")
    assert run.status == "completed" and calls == ["t"]


class Approval(BaseModel):
    approved: bool


async def test_a_workflow_that_declares_signals_takes_only_those_and_says_what_a_payload_needs() -> None:
    from phaseledger import InvalidInput

    wf = Workflow("approve", state=Box, signals={"approve": Approval})

    @wf.phase(initial=True, final=True)
    async def wait(ctx: Context[Box]) -> bool:
        return (await ctx.wait_for_signal("approve")).approved

    async with Engine("memory://", workflows=[wf]) as engine:
        await engine.run(wf, run_id="r")
        before = len(engine.history("r"))
        with pytest.raises(InvalidInput, match="declares no signal 'approvee'; its signals are 'approve'"):
            await engine.signal("r", "approvee", {"approved": True})
        with pytest.raises(InvalidInput, match=r"payload of signal 'approve' is missing: it must be a Approval \(approved\)"):
            await engine.signal("r", "approve")
        assert len(engine.history("r")) == before
        await engine.signal("r", "approve", {"approved": True})
        assert (await engine.resume("r")).output is True


async def test_awaitable_queries_read_the_store_off_the_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    wf = _workflow(lambda ctx: ctx.step("work", plain, "u"))
    async with Engine(f"sqlite:///{tmp_path}/runs.db", workflows=[wf]) as engine:
        await engine.run(wf, run_id="r")
        threads: list[str] = []
        load = engine.store.load

        def spying_load(*args, **kwargs):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return load(*args, **kwargs)

        engine.store.load = spying_load  # type: ignore[method-assign]
        assert (await engine.get_async("r")).output == engine.get("r").output == "u"
        assert [e.type for e in await engine.history_async("r")] == [e.type for e in engine.history("r")]
        assert [r.run_id for r in await engine.runs_async(status="completed")] == ["r"]
        assert (await engine.state_at_async("r", 2)).version == 2
        assert threads[0] != threading.main_thread().name  # get_async read in a worker thread
