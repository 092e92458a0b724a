"""``ctx.artifact``: a phase publishes markdown or a table, journaled like any recorded value."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, SerializationError, Workflow


class Doc(BaseModel):
    rows: int = 2
    bad: str = ""
    published: int = 0


def _workflow() -> Workflow[Doc]:
    wf = Workflow("docs", state=Doc)

    @wf.phase(initial=True, to="end")
    async def write(ctx: Context[Doc]) -> None:
        if ctx.state.bad == "type":
            ctx.artifact("x", {"not": "a list"})  # type: ignore[arg-type]
        if ctx.state.bad == "json":
            ctx.artifact("x", [{"when": datetime.now(UTC)}])
        ctx.artifact("summary", "# Done\n\n**two** rows")
        ctx.artifact("rows", [{"i": i} for i in range(ctx.state.rows)])
        await ctx.checkpoint("written")
        ctx.state.published += 1

    @wf.phase(final=True)
    async def end(ctx: Context[Doc]) -> None: ...

    return wf


def _artifacts(engine: Engine, run_id: str) -> list[tuple[str, dict[str, object]]]:
    return [(e.data["name"], e.data["result"]) for e in engine.history(run_id)
            if e.type == "StepRecorded" and e.data["kind"] == "artifact"]


def test_artifacts_are_recorded_once_and_replayed_not_published_again() -> None:
    wf = _workflow()

    async def go() -> Engine:
        engine = Engine("memory://", workflows=[wf])
        await engine.run(wf, {}, run_id="a")
        # A fork at the explicit checkpoint replays the phase visit: the artifacts come from the log.
        await engine.fork("a", at="written", new_run_id="a-fork")
        return engine

    engine = asyncio.run(go())
    try:
        expected = [("summary", {"format": "markdown", "content": "# Done\n\n**two** rows"}),
                    ("rows", {"format": "table", "content": [{"i": 0}, {"i": 1}]})]
        assert _artifacts(engine, "a") == expected
        assert _artifacts(engine, "a-fork") == expected  # the copies only: nothing recorded twice
        assert engine.get("a-fork").status == "completed"
    finally:
        engine.close()


@pytest.mark.parametrize(("bad", "error"), [("type", TypeError), ("json", SerializationError)])
def test_an_artifact_that_is_not_markdown_or_json_rows_is_refused(bad: str, error: type[Exception]) -> None:
    wf = _workflow()

    async def go() -> None:
        engine = Engine("memory://", workflows=[wf])
        try:
            run = await engine.run(wf, {"bad": bad}, run_id="b")
            assert run.status == "failed"
            assert run.error is not None and run.error["type"] == error.__name__
            assert _artifacts(engine, "b") == []
        finally:
            engine.close()

    asyncio.run(go())
