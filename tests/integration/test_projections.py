"""The report read models on every store: memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, Workflow, WorkflowRun
from phaseledger.engine.journal import current_journal
from phaseledger.projections import ProjectionOutdated, Reports, ddl
from phaseledger.projections.schema import SCHEMA_VERSION

FLAKY: dict[str, int] = {}


class Job(BaseModel):
    topic: str = "x"
    fail_run: bool = False
    flaky: int = 0
    """How many attempts of the 'fetch' step fail before one succeeds."""
    wait: bool = False
    notes: list[str] = []


async def model_call(ctx: Context[Any], name: str, usage: dict[str, Any]) -> Any:
    """A model request journaled the way the pydantic-ai integration records it (kind 'model')."""
    journal = current_journal()
    return await journal.call(journal.next_key(), "model", name, lambda: {"text": "ok"},
                              outcome=lambda _: (usage, None))


def make_workflow() -> Workflow[Job]:
    wf = Workflow("report-test", state=Job, version=1,
                  retry=RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False))

    @wf.phase(initial=True, to={"work": None})
    async def plan(ctx: Context[Job]) -> str:
        await model_call(ctx, "chat", {"requests": 1, "input_tokens": 100, "output_tokens": 20,
                                       "model": "gpt-test", "cost": 0.5})
        await model_call(ctx, "chat", {"requests": 2, "input_tokens": 7})  # no model, no cost
        return "work"

    @wf.phase(to={"work": None, "done": None})
    async def work(ctx: Context[Job]) -> str:
        def fetch() -> str:
            FLAKY[ctx.run_id] = FLAKY.get(ctx.run_id, 0) + 1
            if FLAKY[ctx.run_id] <= ctx.state.flaky:
                raise ConnectionError(f"attempt {FLAKY[ctx.run_id]} timed out")
            return "page"

        ctx.state.notes.append(await ctx.step("fetch", fetch))
        if ctx.state.fail_run:
            raise ValueError("the plan is wrong")
        if ctx.state.wait and ctx.attempt == 1:
            ctx.state.notes.append(await ctx.wait_for_signal("approve"))
        await model_call(ctx, "summarise", {"requests": 1, "input_tokens": 10, "output_tokens": 5,
                                            "model": "claude-test", "cost": 0.25})
        return "work" if ctx.attempt < 2 else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Job]) -> dict[str, int]:
        return {"notes": len(ctx.state.notes)}

    return wf


async def fill(engine: Engine, wf: Workflow[Job]) -> None:
    """Runs that complete, retry, fail, wait, get signalled, get cancelled, and a fork."""
    await engine.run(wf, {}, run_id="ok")
    await engine.run(wf, {"flaky": 2}, run_id="flaky")
    await engine.run(wf, {"fail_run": True}, run_id="bad")
    await engine.run(wf, {"wait": True}, run_id="signalled")
    await engine.signal("signalled", "approve", "yes")
    await engine.resume("signalled")
    await engine.run(wf, {"wait": True}, run_id="waiting")
    await engine.start(wf, {}, run_id="cancelled")
    await engine.cancel("cancelled", "not needed")
    fork = WorkflowRun._create(WorkflowRun.RunStarted, id="fork", workflow=wf.name, workflow_version=1,
                               input={}, parent={"run_id": "ok", "version": 3})
    engine.store.save(fork)


@pytest.fixture
async def engine(store_url: str):
    FLAKY.clear()
    wf = make_workflow()
    engine = Engine(store_url, workflows=[wf])
    await fill(engine, wf)
    yield engine
    engine.close()


async def test_run_summaries_match_the_runs(engine: Engine) -> None:
    reports = engine.reports
    assert reports.lag() > 0 and reports.position() is None
    applied = reports.catch_up()
    assert applied == reports.position() or reports.store.url.backend == "postgresql"  # ids may have gaps
    assert reports.lag() == 0
    summaries = {s.run_id: s for s in reports.runs()}
    assert set(summaries) == {"ok", "flaky", "bad", "signalled", "waiting", "cancelled", "fork"}
    for run_id, summary in summaries.items():
        run = engine.get(run_id)
        assert (summary.status, summary.phase, summary.version, summary.steps) == (
            run.status, run.phase, run.version, run.steps), run_id
        assert (summary.model_requests, summary.input_tokens, summary.output_tokens, summary.cost) == (
            run.usage.requests, run.usage.input_tokens, run.usage.output_tokens, run.usage.cost), run_id
        assert summary.phase_visits == sum(run.attempts.values()), run_id
        assert summary.started_at == run.created_on and summary.updated_at == run.updated_on
        assert summary.finished_at == run.finished_on
        end = summary.finished_at or summary.updated_at
        assert summary.duration_seconds == pytest.approx((end - summary.started_at).total_seconds())

    ok = summaries["ok"]
    assert (ok.status, ok.phase, ok.phase_attempt, ok.workflow, ok.workflow_version) == (
        "completed", "done", 1, "report-test", 1)
    assert ok.cost == pytest.approx(1.0) and ok.model_requests == 5
    assert (ok.last_error_type, ok.parent_run_id) == (None, None)
    flaky = summaries["flaky"]
    assert flaky.status == "completed" and flaky.step_failures == 2
    assert (flaky.last_error_type, flaky.last_error_message) == ("ConnectionError", "attempt 2 timed out")
    bad = summaries["bad"]
    assert (bad.status, bad.last_error_type, bad.last_error_message) == ("failed", "ValueError", "the plan is wrong")
    waiting = summaries["waiting"]
    assert (waiting.status, waiting.waiting_for, waiting.finished_at) == ("waiting", "approve", None)
    assert summaries["signalled"].status == "completed" and summaries["signalled"].signals == 1
    assert summaries["cancelled"].status == "cancelled"
    fork = summaries["fork"]
    assert (fork.parent_run_id, fork.parent_version, fork.phase, fork.phase_visits) == ("ok", 3, None, 0)

    assert [s.run_id for s in reports.runs(status="failed")] == ["bad"]
    assert [s.run_id for s in reports.runs(parent_run_id="ok")] == ["fork"]
    assert reports.runs(workflow="nope") == []
    assert len(reports.runs(limit=2)) == 2
    assert reports.run("ok") == ok and reports.run("nope") is None


async def test_phase_timeline(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    visits = reports.timeline("ok")
    assert [(v.visit, v.phase, v.attempt, v.from_phase, v.outcome, v.next_phase) for v in visits] == [
        (1, "plan", 1, None, "transition", "work"),
        (2, "work", 1, "plan", "transition", "work"),
        (3, "work", 2, "work", "transition", "done"),
        (4, "done", 1, "work", "completed", None),
    ]
    assert [v.steps for v in visits] == [2, 2, 2, 0]
    for before, after in itertools.pairwise(visits):
        assert before.left_at == after.entered_at
        assert before.duration_seconds == pytest.approx((before.left_at - before.entered_at).total_seconds())
    assert visits[-1].left_at == reports.run("ok").finished_at

    flaky = reports.timeline("flaky")
    assert flaky[1].failed_attempts == 2 and flaky[1].steps == 2
    bad = reports.timeline("bad")
    assert (bad[-1].phase, bad[-1].outcome) == ("work", "failed")
    waiting = reports.timeline("waiting")
    assert (waiting[-1].phase, waiting[-1].left_at, waiting[-1].outcome, waiting[-1].duration_seconds) == (
        "work", None, None, None)
    assert reports.timeline("nope") == []


async def test_retry_of_a_failed_run_reopens_its_phase_visit(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    assert reports.timeline("bad")[-1].outcome == "failed"
    await engine.retry("bad")  # fails again: the handler always raises
    reports.catch_up()
    visits = reports.timeline("bad")
    assert len(visits) == 2 and visits[-1].outcome == "failed"
    assert len(reports.failures(run_id="bad", kind="run")) == 2
    assert reports.run("bad").status == "failed"


async def test_token_usage_by_workflow_model_and_day(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    usage = {(u.workflow, u.model): u for u in reports.token_usage()}
    # completed runs: ok, flaky, signalled each 2 plan calls + 2 work visits; bad and waiting: plan calls only
    assert set(usage) == {("report-test", "gpt-test"), ("report-test", "unknown"), ("report-test", "claude-test")}
    gpt, unknown, claude = usage[("report-test", "gpt-test")], usage[("report-test", "unknown")], \
        usage[("report-test", "claude-test")]
    assert (gpt.calls, gpt.requests, gpt.input_tokens, gpt.output_tokens) == (5, 5, 500, 100)
    assert gpt.cost == pytest.approx(2.5)
    assert (unknown.calls, unknown.requests, unknown.input_tokens, unknown.output_tokens, unknown.cost) == (
        5, 10, 35, 0, None)
    assert (claude.calls, claude.input_tokens) == (6, 60) and claude.cost == pytest.approx(1.5)
    day = gpt.day
    assert reports.token_usage(since=day, until=day) == reports.token_usage()
    assert reports.token_usage(since=day + timedelta(days=1)) == []
    assert [u.model for u in reports.token_usage(model="gpt-test")] == ["gpt-test"]
    totals = {w.workflow: w for w in reports.summary().workflows}["report-test"]
    assert totals.input_tokens == sum(u.input_tokens for u in usage.values())
    assert totals.model_requests == sum(u.requests for u in usage.values())


async def test_failures(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    attempts = reports.failures(kind="attempt")
    assert [(f.run_id, f.step_name, f.attempt, f.retryable, f.error_type, f.phase) for f in attempts] == [
        ("flaky", "fetch", 1, True, "ConnectionError", "work"),
        ("flaky", "fetch", 2, True, "ConnectionError", "work"),
    ]
    runs = reports.failures(kind="run")
    assert [(f.run_id, f.error_type, f.message, f.phase, f.step_name) for f in runs] == [
        ("bad", "ValueError", "the plan is wrong", "work", None)
    ]
    assert len(reports.failures()) == 3 and len(reports.failures(limit=1)) == 1
    assert reports.failures(run_id="ok") == []


async def test_summary_report(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    summary = reports.summary()
    assert summary.runs_by_status == {"cancelled": 1, "completed": 3, "failed": 1, "running": 1, "waiting": 1}
    assert summary.lag == 0 and summary.position == reports.position()
    phases = {p.phase: p for p in summary.phases}
    assert phases["plan"].visits == 6 and phases["plan"].finished_visits == 6  # cancelling closes a visit
    assert phases["work"].max_seconds is not None and phases["work"].mean_seconds is not None
    (totals,) = summary.workflows
    assert totals.runs == 7 and totals.cost == pytest.approx(4.0)
    assert set(reports.status().rows.values()) != {0}


async def test_follow_keeps_up_and_rebuild_equals_incremental(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up(page_size=3)
    follower = reports.follow(interval=0.05)
    assert reports.follow() is follower and reports.following
    wf = engine.registry.get("report-test")
    await engine.run(wf, {}, run_id="later")
    await engine.signal("waiting", "approve", "ok")
    await engine.resume("waiting")
    reports.wait(timeout=20)
    assert reports.run("later").status == "completed" and reports.run("waiting").status == "completed"
    incremental = reports.dump()
    progress: list[tuple[int, int]] = []
    applied = reports.rebuild(lambda done, total: progress.append((done, total)), page_size=7)
    assert reports.following  # the follower was paused and restarted
    assert progress[0] == (0, applied) and progress[-1] == (applied, applied)
    assert reports.status().generation == 2
    assert reports.dump() == incremental
    reports.stop()
    assert not reports.following


async def test_a_batch_overlapping_another_processors_work_applies_the_rest_once(engine: Engine) -> None:
    from eventsourcing.persistence import Tracking

    from phaseledger.projections.projection import ReportProjection, read_log

    reports = engine.reports
    page = read_log(engine.store, None, 1_000)
    items = [(engine.store.read_notification(n), Tracking(reports.application_name, n.id)) for n in page]
    projection = ReportProjection(reports.view)
    reports.catch_up(max_events=len(items) // 3)  # another processor got a third of the way
    projection.process_events(items)  # a batch from the start: its first two thirds are left out
    projection.process_events(items[-5:])  # wholly applied already: nothing happens
    assert reports.lag() == 0 and reports.position() == page[-1].id
    incremental = reports.dump()
    reports.rebuild()
    assert reports.dump() == incremental


async def test_a_follower_behind_the_log_applies_it_in_batches(engine: Engine,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from phaseledger.projections.view import ReportView

    batches: list[int] = []
    apply = ReportView.apply

    def counting(self: ReportView, items: Any, **kwargs: Any) -> int:
        batches.append(len(items))
        return apply(self, items, **kwargs)

    monkeypatch.setattr(ReportView, "apply", counting)
    reports = engine.reports
    behind = reports.lag()
    reports.follow(interval=0.05)
    reports.wait(timeout=20)
    reports.stop()
    assert sum(batches) == behind and max(batches) > 1  # not one transaction per event
    incremental = reports.dump()
    reports.rebuild()
    assert reports.dump() == incremental


async def test_a_second_reports_object_shares_the_tables(durable_store_url: str) -> None:
    # Only stores outside the process: a memory store's tables live in its Reports object.
    FLAKY.clear()
    wf = make_workflow()
    engine = Engine(durable_store_url, workflows=[wf])
    await fill(engine, wf)
    engine.reports.catch_up(max_events=5)
    with Reports(durable_store_url) as other:
        assert other.position() == engine.reports.position()
        other.catch_up()
    assert engine.reports.lag() == 0 and engine.reports.dump() == Reports(engine.store).dump()
    engine.close()


async def test_outdated_tables_ask_for_a_rebuild(engine: Engine) -> None:
    reports = engine.reports
    reports.catch_up()
    with reports.view.datastore.transaction(commit=True) as curs:
        curs.execute(reports.view.dialect.sql("UPDATE {meta} SET schema_version = 0"))
    assert reports.status().outdated
    for call in (reports.runs, reports.summary, reports.catch_up):
        with pytest.raises(ProjectionOutdated, match="rebuild"):
            call()
    reports.rebuild()
    status = reports.status()
    assert not status.outdated and status.schema_version == SCHEMA_VERSION and status.lag == 0
    assert len(reports.runs()) == 7


def test_ddl_names_every_table() -> None:
    for dialect in ("sqlite", "postgresql"):
        text = ddl(dialect)
        for table in ("report_runs", "report_phases", "report_token_usage", "report_failures", "report_meta"):
            assert f"CREATE TABLE IF NOT EXISTS {table} (" in text
    assert "TIMESTAMPTZ" in ddl("postgresql") and "TIMESTAMPTZ" not in ddl("sqlite")


def test_the_docs_list_every_column() -> None:
    from pathlib import Path

    from phaseledger.projections.schema import READ_MODELS

    text = (Path(__file__).resolve().parents[2] / "docs" / "projections.md").read_text()
    for table in READ_MODELS:
        block = text[text.index(f"CREATE TABLE IF NOT EXISTS {table.name} ("):]
        block = block[: block.index("PRIMARY KEY")]
        for column in table.column_names:
            assert f" {column} " in block.replace("\n", " ").replace(",", " "), (table.name, column)
