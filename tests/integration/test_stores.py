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
