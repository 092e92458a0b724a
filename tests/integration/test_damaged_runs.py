"""One bad row harms one run: a stored event or snapshot that cannot be read.

Rows are damaged straight in the SQLite file and the PostgreSQL tables (see
:mod:`tests.integration.damage`): JSON cut in half, a field removed, a type this release
does not know. The damaged run raises :class:`CorruptEvent`; every other run, the
listings, the reports and the workers carry on; once the row is repaired the run reads,
resumes and completes without anything more to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from phaseledger import Context, CorruptEvent, Engine, RetentionPolicy, Workflow
from phaseledger.projections import Reports
from phaseledger.store.runindex import RunIndex, open_run_index
from tests.integration.damage import CORRUPTIONS, damage, missing_field, write_row
from tests.integration.test_cli import cli


class Count(BaseModel):
    n: int = 0


job = Workflow("job", state=Count)


@job.phase(initial=True, to="wait")
async def work(ctx: Context[Count]) -> None:
    ctx.state.n = await ctx.step("add", lambda n: n + 1, ctx.state.n)


@job.phase(to="done")
async def wait(ctx: Context[Count]) -> None:
    await ctx.wait_for_signal("go")


@job.phase(final=True)
async def done(ctx: Context[Count]) -> int:
    return ctx.state.n


# Versions of a job run: 1 RunStarted, 2 PhaseEntered(work), 3 StepRecorded(add),
# 4 PhaseEntered(wait), 5 RunSuspended; 6 SignalReceived once signalled.
STEP = 3


async def waiting_for_a_worker(engine: Engine, *run_ids: str) -> None:
    """Runs that wait for their signal, which has arrived: runnable."""
    for run_id in run_ids:
        await engine.run(job, run_id=run_id)
        await engine.signal(run_id, "go")


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def status(engine: Engine, run_id: str) -> str:
    return engine.get(run_id).status


@pytest.mark.parametrize("how", list(CORRUPTIONS))
async def test_a_damaged_run_is_isolated_and_resumes_once_repaired(
    durable_store_url: str, how: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(RunIndex, "damaged_recheck_seconds", 0.2)
    engine = Engine(durable_store_url, workflows=[job])
    worker_engine = Engine(durable_store_url, workflows=[job])
    try:
        await waiting_for_a_worker(engine, "h1", "bad", "h2")
        original = damage(engine.store, "bad", STEP, CORRUPTIONS[how])

        # The damaged run says what is wrong, where, and what to do.
        for read in (lambda: engine.get("bad"), lambda: engine.history("bad"), lambda: engine.state_at("bad", 6)):
            with pytest.raises(CorruptEvent) as raised:
                read()
            assert (raised.value.run_id, raised.value.version) == ("bad", STEP)
            assert "'bad'" in str(raised.value) and "version 3" in str(raised.value)
            assert "backup" in str(raised.value)
        with pytest.raises(CorruptEvent):
            await engine.resume("bad")
        with pytest.raises(CorruptEvent):
            await engine.signal("bad", "go")
        assert engine.state_at("bad", STEP - 1).phase == "work"  # what precedes the damage still reads

        # Listings show it damaged and every other run as it is.
        listed = {run.run_id: run for run in engine.runs()}
        assert {run_id: run.status for run_id, run in listed.items()} == {
            "h1": "running", "bad": "damaged", "h2": "running"}  # signalled: due again
        assert listed["bad"].error is not None and listed["bad"].error["type"] == "CorruptEvent"
        assert listed["bad"].error["version"] == STEP and listed["bad"].phase == "work"
        assert [run.run_id for run in engine.runs(status="damaged")] == ["bad"]

        # Reports pass the unreadable row and keep serving the others, incrementally and rebuilt.
        reports = Reports(engine.store)
        with caplog.at_level(logging.WARNING, logger="phaseledger.store"):
            reports.catch_up()
            assert reports.lag() == 0
            assert {row.run_id: row.status for row in reports.runs()} == {
                "h1": "running", "bad": "running", "h2": "running"}
            assert reports.rebuild() > 0 and reports.lag() == 0
        if how != "unknown-topic":  # rows of unknown types are not run events: never read
            assert any("'bad'" in record.getMessage() for record in caplog.records)

        # A worker indexes it as damaged, drives every healthy run and keeps running.
        worker = worker_engine.worker(poll_interval=0.05)
        task = asyncio.ensure_future(worker.run(handle_signals=False))
        await worker.wait_until_started()
        await wait_for(lambda: status(engine, "h1") == status(engine, "h2") == "completed", "the healthy runs")
        index = open_run_index(engine.store)
        await wait_for(lambda: (index.get("bad") or index.rows()[0]).status == "damaged", "the damaged index row")
        assert index.get("bad").runnable_at is None  # type: ignore[union-attr]
        await engine.start(job, run_id="h3")
        await wait_for(lambda: status(engine, "h3") == "waiting", "a run started later")
        await engine.signal("h3", "go")
        await wait_for(lambda: status(engine, "h3") == "completed", "a run signalled later")
        assert worker.running and not task.done()

        # Repaired, the run reads again: the worker picks it up by itself and completes it.
        write_row(engine.store, "bad", STEP, original)
        await wait_for(lambda: status(engine, "bad") == "completed", "the repaired run")
        assert engine.get("bad").output == 1
        assert [run.status for run in engine.runs()] == ["completed"] * 4
        worker.stop()
        stats = await task
        assert stats.completed == 4 and stats.errors == 0
        reports.catch_up()
        if how == "unknown-topic":  # its event was never a run event for the reports: rebuild to see it
            reports.rebuild()
        assert reports.run("bad").status == "completed"  # type: ignore[union-attr]
        reports.close()
    finally:
        worker_engine.close()
        engine.close()


async def test_a_worker_that_claims_a_damaged_run_skips_it_and_no_restart_crashes(durable_store_url: str) -> None:
    engine = Engine(durable_store_url, workflows=[job])
    try:
        await waiting_for_a_worker(engine, "h1", "bad", "h2")
        open_run_index(engine.store).catch_up_fully()  # the index saw "bad" runnable before the damage
        original = damage(engine.store, "bad", 2, missing_field)

        first = await engine.worker(poll_interval=0.05, error_backoff=0).run(until_idle=True, handle_signals=False)
        assert (first.completed, first.damaged, first.errors) == (2, 1, 0)
        assert open_run_index(engine.store).get("bad").status == "damaged"  # type: ignore[union-attr]
        again = await engine.worker(poll_interval=0.05).run(until_idle=True, handle_signals=False)
        assert (again.claimed, again.errors, again.damaged) == (0, 0, 0)  # no crash loop, no retry loop

        report = engine.apply_retention(RetentionPolicy(compact_after=timedelta(0)))
        assert report.damaged == ["bad"] and {c.run_id for c in report.compacted} == {"h1", "h2"}

        write_row(engine.store, "bad", 2, original)
        repaired = await engine.worker(poll_interval=0.05).run(until_idle=True, handle_signals=False)
        assert (repaired.completed, repaired.damaged) == (1, 0)
        assert engine.get("bad").status == "completed"
    finally:
        engine.close()


async def test_an_unreadable_snapshot_is_passed_over_unless_compaction_left_only_it(durable_store_url: str) -> None:
    engine = Engine(durable_store_url, workflows=[job], snapshot_every=2)
    try:
        await waiting_for_a_worker(engine, "snap")  # snapshots at versions 2, 4 and 6
        expected = engine.get("snap")
        damage(engine.store, "snap", 6, snapshot=True)
        assert engine.get("snap") == expected  # folded from the events instead
        assert engine.get("snap", version=5).version == 5
        assert [run.status for run in engine.runs()] == ["running"]
        assert (await engine.resume("snap")).status == "completed"

        compacted = engine.compact("snap")  # keeps the first and the last event, and a snapshot at the last
        damage(engine.store, "snap", compacted.snapshot_version, snapshot=True)
        with pytest.raises(CorruptEvent, match=f"snapshot at version {compacted.snapshot_version}") as raised:
            engine.get("snap")
        assert raised.value.snapshot
        assert [run.status for run in engine.runs()] == ["damaged"]
    finally:
        engine.close()


async def test_report_followers_pass_an_unreadable_row(durable_store_url: str) -> None:
    engine = Engine(durable_store_url, workflows=[job])
    try:
        await waiting_for_a_worker(engine, "h1", "bad")
        damage(engine.store, "bad", STEP)
        engine.reports.follow(interval=0.05)
        engine.reports.wait(timeout=20)  # past the unreadable row
        await engine.resume("h1")
        engine.reports.wait(timeout=20)
        assert engine.reports.run("h1").status == "completed"  # type: ignore[union-attr]
        assert engine.reports._follower is not None and engine.reports._follower.error is None
    finally:
        engine.close()


async def test_the_cli_lists_and_shows_a_damaged_run(durable_store_url: str, tmp_path: Path) -> None:
    engine = Engine(durable_store_url, workflows=[job])
    try:
        await waiting_for_a_worker(engine, "h1", "bad")
        damage(engine.store, "bad", STEP)
    finally:
        engine.close()
    store = ("--store", durable_store_url)
    listed = cli(*store, "runs", cwd=tmp_path).stdout
    assert "bad  job@1     damaged" in listed and "h1   job@1     running" in listed
    shown = cli(*store, "show", "bad", cwd=tmp_path, check=1).stdout
    assert "damaged" in shown and "version 3 cannot be read" in shown and "backup" in shown
    assert "phase" in cli(*store, "show", "bad", "--at", "2", cwd=tmp_path).stdout
    history = cli(*store, "history", "bad", cwd=tmp_path, check=1)
    assert "is damaged" in history.stderr
