"""``Reports.runs_page`` and ``failure_counts`` on every store: the queries the runs list and
the reports page are served by (filters, newest first, paging, counts)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from phaseledger.projections import ProjectionError, Reports


class N(BaseModel):
    n: int = 0


def _workflows() -> tuple[Workflow[N], Workflow[N]]:
    ok = Workflow("ok", state=N)

    @ok.phase(initial=True, to="end")
    async def start(ctx: Context[N]) -> None:
        await ctx.step("s", lambda: 1)

    @ok.phase(final=True)
    async def end(ctx: Context[N]) -> None: ...

    bad = Workflow("bad", state=N)

    def boom() -> None:
        raise KeyError("missing")

    @bad.phase(initial=True, final=True)
    async def only(ctx: Context[N]) -> None:
        await ctx.step("boom", boom)

    return ok, bad


def test_runs_page_filters_orders_and_pages(store_url: str) -> None:
    ok, bad = _workflows()

    async def make() -> Engine:
        engine = Engine(store_url, workflows=[ok, bad])
        for i in range(7):
            await engine.run(ok, {"n": i}, run_id=f"ok_{i}")
        await engine.run(bad, {}, run_id="bad-1")
        await engine.start(ok, {}, run_id="Pending-1")
        return engine

    engine = asyncio.run(make())
    try:
        reports = engine.reports
        reports.catch_up()
        page = reports.runs_page(limit=3)
        assert page.total == 9 and [r.run_id for r in page.runs] == ["Pending-1", "bad-1", "ok_6"]
        assert [r.run_id for r in reports.runs_page(limit=3, offset=6).runs] == ["ok_2", "ok_1", "ok_0"]
        assert reports.runs_page(limit=3, offset=9).runs == []
        assert [r.run_id for r in reports.runs_page(status="failed").runs] == ["bad-1"]
        assert reports.runs_page(workflow="ok").total == 8
        assert reports.runs_page(phase="end").total == 7
        assert [r.run_id for r in reports.runs_page(run_id_contains="pending").runs] == ["Pending-1"]
        assert reports.runs_page(run_id_contains="_").total == 7  # "_" is literal, not a wildcard
        assert reports.runs_page(run_id_contains="%").total == 0
        now = datetime.now(UTC)
        assert reports.runs_page(since=now - timedelta(hours=1), until=now + timedelta(hours=1)).total == 9
        assert reports.runs_page(until=now - timedelta(hours=1)).total == 0
        assert reports.runs_page(since=(now + timedelta(hours=1)).replace(tzinfo=None)).total == 0  # naive: UTC
        assert reports.workflows() == ["bad", "ok"]
        counts = reports.failure_counts()
        assert [(c.workflow, c.phase, c.kind, c.error_type, c.count) for c in counts] == [
            ("bad", "only", "attempt", "KeyError", 1), ("bad", "only", "run", "StepFailed", 1)]
        assert reports.failure_counts(workflow="ok") == []
        with pytest.raises(ProjectionError):
            reports.runs_page(limit=0)
    finally:
        engine.close()


def test_runs_page_on_a_store_with_no_runs(store_url: str) -> None:
    with Reports(store_url) as reports:
        reports.catch_up()
        page = reports.runs_page()
        assert (page.total, page.runs, page.offset, page.limit) == (0, [], 0, 50)
