"""The journal's fast paths on real stores: snapshots taken from memory, one-trip PostgreSQL appends,
SQLite appends made on the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from phaseledger import ConcurrencyConflict, Context, Engine, Workflow
from phaseledger.domain.run import WorkflowRun, project_run
from phaseledger.store import postgres as postgres_store
from phaseledger.store.backends import base as backend_base
from phaseledger.store.eventstore import Store, StoreURL


class Tally(BaseModel):
    n: int = 0


def tally_workflow(steps: int) -> Workflow[Tally]:
    wf = Workflow("tally", state=Tally, checkpoint_every_n_steps=3)

    @wf.phase(initial=True, to={"work": None, "done": None})
    async def work(ctx: Context[Tally]) -> str:
        for i in range(steps):
            await ctx.step("add", lambda i=i: {"i": i, "text": "quote ' backslash \\ é \u2603"})
        ctx.state.n += 1
        return "work" if ctx.state.n < 3 else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Tally]) -> int:
        return ctx.state.n

    return wf


async def test_snapshots_from_memory_equal_the_folded_log(store_url: str) -> None:
    wf = tally_workflow(steps=7)
    engine = Engine(store_url, workflows=[wf], snapshot_every=5)
    run = await engine.run(wf, run_id="r")
    assert run.status == "completed"
    store = engine.store
    events = store.events("r")
    snapshots = list(store.app.snapshots.get("r"))  # type: ignore[union-attr]
    assert len(snapshots) >= len(events) // 5 - 1
    for snapshot in snapshots:
        folded = project_run(None, events[: snapshot.originator_version])
        assert snapshot.state == WorkflowRun.Snapshot.take(folded).state  # type: ignore[attr-defined]
    reloaded = Store(store_url, snapshot_every=5) if store_url != "memory://" else store
    assert vars(reloaded.load("r")) == vars(project_run(None, events))
    assert [vars(e) for e in reloaded.events("r")] == [vars(e) for e in events]


@pytest.mark.postgres
def test_postgres_append_conflict_writes_nothing_and_keeps_the_connection(postgres_url: str) -> None:
    first, second = Store(postgres_url), Store(postgres_url)
    try:
        run = WorkflowRun._create(WorkflowRun.RunStarted, id="r", workflow="w", workflow_version=1, input={},
                                  parent=None)
        first.save(run)
        mine, theirs = first.load("r"), second.load("r")
        for copy in (mine, theirs):
            copy.trigger_event(WorkflowRun.SignalReceived, signal_id=f"s-{id(copy)}", name="go", payload={"v": "'"})
        first.save(mine)
        with pytest.raises(ConcurrencyConflict):
            second.save(theirs)
        assert [e.originator_version for e in second.events("r")] == [1, 2]
        assert second.load("r").inbox == mine.inbox
        other = WorkflowRun._create(WorkflowRun.RunStarted, id="s", workflow="w", workflow_version=1, input={},
                                    parent=None)
        for i in range(3):
            other.trigger_event(WorkflowRun.SignalReceived, signal_id=str(i), name="n", payload=i)
        last = second.save(other)  # the same pooled connection, after the failed append
        ids = [n.id for n in second.app.recorder.select_notifications(start=0, limit=10)]
        assert ids == sorted(ids) and ids[-1] == last and len(ids) == 6
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_postgres_appends_still_notify_listeners(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        channel = store.app.recorder.channel_name  # type: ignore[attr-defined]
        with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "", autocommit=True) as listener:
            listener.execute(f'LISTEN "{channel}"')
            store.save(WorkflowRun._create(WorkflowRun.RunStarted, id="r", workflow="w", workflow_version=1,
                                           input={}, parent=None))
            received = list(listener.notifies(timeout=5, stop_after=1))
        # psycopg may hand over more than stop_after when one packet carries several (other
        # suites append on the shared server too): what matters is that ours arrived.
        assert received and {n.channel for n in received} == {channel}
    finally:
        store.close()


def _started(run_id: str) -> WorkflowRun:
    return WorkflowRun._create(WorkflowRun.RunStarted, id=run_id, workflow="w", workflow_version=1, input={},
                               parent=None)


async def test_sqlite_appends_on_the_loop_and_waits_in_the_writer_thread_while_the_file_is_locked(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    store = Store(url)
    try:
        run = _started("r")
        await store.append_async(run.collect_events(), run=run)
        appender = store.backend.inline_appender  # type: ignore[attr-defined]
        assert appender is not None and appender._conn is not None  # the first append took the inline path
        # Another connection holds the file's write lock: the append waits for it in the
        # writer thread, and the event loop keeps running meanwhile.
        holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        run.trigger_event(WorkflowRun.SignalReceived, signal_id="s1", name="go", payload=1)
        append = asyncio.create_task(store.append_async(run.collect_events(), run=run))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not append.done() and ticks == 20
        holder.rollback()
        holder.close()
        await asyncio.wait_for(append, 30)
        run.trigger_event(WorkflowRun.SignalReceived, signal_id="s2", name="go", payload=2)
        await store.append_async(run.collect_events(), run=run)  # inline again, once the lock is free
        reread = Store(url)
        try:
            assert [e.originator_version for e in reread.events("r")] == [1, 2, 3]
            ids = [n.id for n in reread.app.recorder.select_notifications(start=0, limit=10)]  # type: ignore[attr-defined]
            assert ids == sorted(ids) and len(ids) == 3
        finally:
            reread.close()
    finally:
        store.close()


async def test_sqlite_inline_append_conflict_writes_nothing_and_keeps_the_connection(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    first, second = Store(url), Store(url)
    try:
        run = _started("r")
        await first.append_async(run.collect_events(), run=run)
        mine, theirs = first.load("r"), second.load("r")
        for copy in (mine, theirs):
            copy.trigger_event(WorkflowRun.SignalReceived, signal_id=f"s-{id(copy)}", name="go", payload={"v": "'"})
        await first.append_async(mine.collect_events(), run=mine)
        with pytest.raises(ConcurrencyConflict):
            await second.append_async(theirs.collect_events(), run=theirs)
        assert [e.originator_version for e in second.events("r")] == [1, 2]
        assert second.load("r").inbox == mine.inbox
        other = _started("s")
        for i in range(3):
            other.trigger_event(WorkflowRun.SignalReceived, signal_id=str(i), name="n", payload=i)
        last = await second.append_async(other.collect_events(), run=other)  # the same connection, after the conflict
        ids = [n.id for n in second.app.recorder.select_notifications(start=0, limit=10)]  # type: ignore[attr-defined]
        assert ids == sorted(ids) and ids[-1] == last and len(ids) == 6
    finally:
        first.close()
        second.close()


class SteppingClock:
    """Stands in for the ``time`` module: ``monotonic()`` advances ``tick`` seconds at each call."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize(("tick", "within"), [(2.0, 1), (1.0, 2), (0.0, None)])
async def test_a_run_appending_on_the_loop_lets_the_loops_other_tasks_run_once_it_held_the_loop_a_while(
    durable_store_url: str, monkeypatch: pytest.MonkeyPatch, tick: float, within: int | None,
) -> None:
    # The loop's other tasks run once appends have held its thread for YIELD_AFTER (2 here):
    # with a clock that moves 2 per append, between any two steps; 1 per append, within any
    # two; not moving, never. On PostgreSQL a step's append waits for its reply on the loop's
    # thread too, here for as long as it takes (HOLD_LOOP).
    monkeypatch.setattr(backend_base, "YIELD_AFTER", 2.0)
    monkeypatch.setattr(backend_base, "time", SteppingClock(tick))
    monkeypatch.setattr(postgres_store, "HOLD_LOOP", 60.0)
    ticks, seen = 0, []
    wf = Workflow("ticks", state=Tally)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[Tally]) -> str:
        for _ in range(30):
            await ctx.step("look", lambda: seen.append(ticks))  # each step committed before the next
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Tally]) -> None:
        return None

    async def other_task() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    engine = Engine(durable_store_url, workflows=[wf])
    try:
        loop_appender = getattr(engine.store.backend, "loop_appender", None)
        if loop_appender is not None:  # PostgreSQL: the loop's connection, made before the clock matters
            assert await loop_appender.connected()
        ticker = asyncio.create_task(other_task())
        run = await engine.run(wf, run_id="r")
        ticker.cancel()
        assert run.status == "completed" and len(seen) == 30
        if within is None:
            assert len(set(seen)) == 1
        else:
            assert all(seen[i + within] > seen[i] for i in range(len(seen) - within))
            assert within == 1 or len(set(seen)) < len(seen)  # not after each commit
    finally:
        engine.close()


async def test_sqlite_appends_of_runs_driven_together_share_commits_in_the_writer_thread(tmp_path) -> None:
    wf = Workflow("pair", state=Tally)
    both_started = asyncio.Event()
    started: set[str] = set()

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[Tally]) -> str:
        started.add(ctx.run_id)
        if len(started) == 4:
            both_started.set()
        await both_started.wait()
        for _ in range(10):
            await ctx.step("add", lambda: 1)
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Tally]) -> None:
        return None

    engine = Engine(f"sqlite:///{tmp_path}/runs.db", workflows=[wf])
    backend: Any = engine.store.backend
    counts = {"inline": 0, "grouped": 0}
    inline, grouped = backend.inline_appender.append, backend.committer.append

    def counted_inline(stored: Any) -> Any:
        counts["inline"] += 1
        return inline(stored)

    async def counted_grouped(stored: Any) -> Any:
        counts["grouped"] += 1
        return await grouped(stored)

    backend.inline_appender.append = counted_inline
    backend.committer.append = counted_grouped
    try:
        runs = await asyncio.gather(*(engine.run(wf, run_id=r) for r in "abcd"))
        assert [r.status for r in runs] == ["completed"] * 4
        # The steps of each, committed while the others were driven too (the last may find it alone),
        # in fewer transactions than appends: runs share commits.
        assert counts["grouped"] >= 30 and backend.committer.batches < counts["grouped"]
        for run_id in "abcd":
            events = engine.store.events(run_id)
            assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
        counts.update(inline=0, grouped=0)
        started.clear()
        both_started.set()
        assert (await engine.run(wf, run_id="e")).status == "completed"
        assert counts["grouped"] == 0 and counts["inline"] >= 10  # driven alone: on the loop's thread
    finally:
        engine.close()


async def test_a_conflict_in_a_shared_commit_fails_that_append_alone(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    store, other = Store(url), Store(url)
    try:
        runs = [_started(run_id) for run_id in ("a", "b", "c")]
        for run in runs:
            store.save(run)
        stale = other.load("b")
        for run in (*runs, stale):
            run.trigger_event(WorkflowRun.SignalReceived, signal_id=f"s-{id(run)}", name="go", payload=1)
        other.save(stale)  # b's version 2 is taken: the shared commit's append of b conflicts
        committer: Any = store.backend.committer  # type: ignore[attr-defined]
        busy = threading.Event()
        store.backend._writer.submit(busy.wait, 10)  # type: ignore[attr-defined]  # hold the writer thread
        appends = [asyncio.ensure_future(committer.append([store.app.mapper.to_stored_event(e)
                                                           for e in run.collect_events()])) for run in runs]
        await asyncio.sleep(0.05)  # all three queued while the thread is busy: one transaction takes them
        busy.set()
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        assert isinstance(outcomes[1], sqlite3.IntegrityError)
        assert all(isinstance(o, list) and len(o) == 1 for o in (outcomes[0], outcomes[2]))
        assert committer.batches == 1
        assert [e.originator_version for e in store.events("a")] == [1, 2]
        assert [e.originator_version for e in store.events("c")] == [1, 2]
        assert store.load("b").inbox == stale.inbox  # the other writer's event, not ours
    finally:
        store.close()
        other.close()
