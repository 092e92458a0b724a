"""Only runs are runs: the store's other streams (its identity, written by the first resume
token) never reach the run index, workers, listings, reports or retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, InvalidInput, RetentionPolicy, RunNotFound, Workflow
from phaseledger.history.tokens import STORE_IDENTITY_ID
from phaseledger.store.runindex import open_run_index

KEY = "only-runs-are-runs-token-key-0123456789"


class Note(BaseModel):
    text: str = ""


quick = Workflow("quick", state=Note)


@quick.phase(initial=True, final=True)
async def write(ctx: Context[Note]) -> str:
    ctx.state.text = await ctx.step("write", lambda: "written")
    return ctx.state.text


async def test_the_store_identity_is_never_taken_for_a_run(store_url: str) -> None:
    engine = Engine(store_url, workflows=[quick], token_key=KEY)
    try:
        await engine.run(quick, run_id="done")
        await engine.start(quick, run_id="new")
        engine.resume_token("done")  # writes the store's identity stream
        identity = engine.store.app.recorder.select_events(STORE_IDENTITY_ID)
        assert len(identity) == 1

        for _ in range(2):  # a worker, then a restarted one
            stats = await engine.worker(poll_interval=0.05).run(until_idle=True, handle_signals=False)
            assert stats.errors == 0
        assert engine.get("new").status == "completed"
        index = open_run_index(engine.store)
        index.catch_up_fully()
        assert [row.run_id for row in index.rows()] == ["done", "new"]
        assert index.rebuild() > 0 and [row.run_id for row in index.rows()] == ["done", "new"]

        assert [run.run_id for run in engine.runs()] == ["done", "new"]
        with pytest.raises(InvalidInput, match="reserved"):
            engine.get(STORE_IDENTITY_ID)
        with pytest.raises(RunNotFound):
            engine.store.load(STORE_IDENTITY_ID)

        reports = engine.reports
        reports.catch_up()
        assert sorted(row.run_id for row in reports.runs()) == ["done", "new"]
        reports.rebuild()
        assert sorted(row.run_id for row in reports.runs()) == ["done", "new"] and reports.lag() == 0
        reports.follow(interval=0.05)
        await engine.run(quick, run_id="later")
        reports.wait(timeout=20)
        assert sorted(row.run_id for row in reports.runs()) == ["done", "later", "new"]
        reports.stop()

        report = engine.apply_retention(RetentionPolicy(compact_after=timedelta(0), delete_after=timedelta(0)))
        touched = set(report.deleted) | {c.run_id for c in report.compacted}
        assert touched <= {"done", "new", "later"} and not report.damaged
        assert engine.store.app.recorder.select_events(STORE_IDENTITY_ID) == identity  # left alone
    finally:
        engine.close()
