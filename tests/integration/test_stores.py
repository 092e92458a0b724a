"""The same end-to-end behaviour on every store: memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

from pydantic import BaseModel

from phaseledger import Context, Engine, RunExists, RunNotFound, Workflow


class Counter(BaseModel):
    n: int = 0
    log: list[str] = []


def make_workflow() -> Workflow[Counter]:
    wf = Workflow("counter", state=Counter, version=1)

    @wf.phase(initial=True, to={"count": None, "done": None})
    async def start(ctx: Context[Counter]) -> str:
        ctx.state.log.append(await ctx.step("hello", lambda: "hello"))
        return "count"

    @wf.phase(to={"count": lambda s: s.n < 3, "done": None})
    async def count(ctx: Context[Counter]) -> str:
        ctx.state.n = await ctx.step("add", lambda n: n + 1, ctx.state.n)
        return "count" if ctx.state.n < 3 else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Counter]) -> dict:
        return {"total": ctx.state.n}

    return wf


async def test_run_completes_and_reloads_in_a_fresh_engine(store_url: str) -> None:
    wf = make_workflow()
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, {"n": 0}, run_id="r-1")
    assert run.status == "completed"
    assert run.output == {"total": 3}
    assert run.state == Counter(n=3, log=["hello"])
    assert run.attempts == {"start": 1, "count": 3, "done": 1}

    fresh = Engine(engine.store if store_url == "memory://" else store_url, workflows=[wf])
    again = fresh.get("r-1")
    assert again.model_dump(exclude={"updated_on"}) == run.model_dump(exclude={"updated_on"})
    types = [e.type for e in fresh.history("r-1")]
    assert types[0] == "RunStarted" and types[-1] == "RunCompleted"
    assert [e.version for e in fresh.history("r-1")] == list(range(1, len(types) + 1))
    assert [r.run_id for r in fresh.runs()] == ["r-1"]


async def test_duplicate_and_unknown_ids(store_url: str) -> None:
    wf = make_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.start(wf, run_id="dup")
    try:
        await engine.start(wf, run_id="dup")
    except RunExists as exc:
        assert "dup" in str(exc)
    else:
        raise AssertionError("RunExists not raised")
    assert len(engine.history("dup")) == 2
    for call in (lambda: engine.get("nope"), lambda: engine.history("nope")):
        try:
            call()
        except RunNotFound as exc:
            assert "nope" in str(exc)
        else:
            raise AssertionError("RunNotFound not raised")


async def test_the_run_index_lists_the_runs_changed_since_a_time(store_url: str) -> None:
    """What an outside scheduler follows (the Temporal wake bridge): rows changed after a time,
    of the workflows asked for, oldest first, at most ``limit``."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from phaseledger.store.runindex import open_run_index

    class Nothing(BaseModel):
        pass

    kept, other = Workflow("kept", state=Nothing), Workflow("other", state=Nothing)
    for wf in (kept, other):

        @wf.phase(initial=True, final=True)
        async def wait(ctx: Context[Nothing]) -> str:
            return str((await ctx.wait_for_signal("go"))["n"])

    engine = Engine(store_url, workflows=[kept, other], max_inline_wait=0)
    try:
        for run_id in ("k-1", "k-2"):
            await engine.run(kept, run_id=run_id)
        await engine.run(other, run_id="o-1")
        index = open_run_index(engine.store)
        index.catch_up()
        await asyncio.sleep(0.01)
        later = datetime.now(UTC)
        assert [r.run_id for r in index.changed_since(later - timedelta(minutes=1), ["kept@1"], 10)] == ["k-1", "k-2"]
        assert [r.run_id for r in index.changed_since(later - timedelta(minutes=1), ["kept@1"], 1)] == ["k-1"]
        assert index.changed_since(later, ["kept@1", "other@1"], 10) == []

        await asyncio.sleep(0.01)  # the clock moves on: the next events are stamped after ``later``
        await engine.signal("k-2", "go", {"n": 2})
        await engine.cancel("o-1")
        index.catch_up()
        changed = {r.run_id: r for r in index.changed_since(later, ["kept@1", "other@1"], 10)}
        assert set(changed) == {"k-2", "o-1"}
        assert changed["k-2"].runnable_at is not None and not changed["k-2"].finished  # due: a signal came
        assert changed["o-1"].status == "cancelled"
    finally:
        engine.close()
