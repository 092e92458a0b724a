"""A resume on a SQLite store, driven alone in its process, takes its lease and loads its run
on the event loop's own thread when the file's write lock is free, and in a thread otherwise;
lease rows commit without a sync of their own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from phaseledger import Engine, RunBusy, Store
from phaseledger.store import eventstore
from phaseledger.store.leasebook import DriverId, SQLiteLeaseBook
from phaseledger.store.sqlite_appender import lease_writes
from tests.integration.test_snapshots import one_long_visit

FULL, NORMAL = 2, 1


@contextmanager
def calls_off_the_loop(store: Store) -> Iterator[list[str]]:
    """The names of the functions the store hands to a thread (``store.call``) meanwhile."""
    names: list[str] = []
    original = store.backend.call

    async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        names.append(getattr(fn, "__name__", repr(fn)))
        return await original(fn, *args, **kwargs)

    store.backend.call = call  # type: ignore[method-assign]
    try:
        yield names
    finally:
        del store.backend.call


def synchronous(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def test_lease_writes_commit_unsynced_then_put_the_connection_back_as_it_was(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    assert synchronous(conn) == FULL
    with lease_writes(conn.cursor(), conn.close):
        assert synchronous(conn) == NORMAL
    assert synchronous(conn) == FULL
    with pytest.raises(ZeroDivisionError), lease_writes(conn.cursor(), conn.close):
        1 / 0  # noqa: B018
    assert synchronous(conn) == FULL
    conn.close()


def test_a_connection_whose_setting_does_not_come_back_is_closed() -> None:
    closed: list[bool] = []
    statements: list[str] = []

    class Cursor:  # a connection whose setting fails to come back
        def execute(self, statement: str) -> None:
            statements.append(statement)
            if statement == f"PRAGMA synchronous = {FULL}":
                raise sqlite3.OperationalError("disk I/O error")

        def fetchone(self) -> tuple[int]:
            return (FULL,)

    with pytest.raises(sqlite3.OperationalError), lease_writes(Cursor(), lambda: closed.append(True)):
        pass
    assert statements == ["PRAGMA synchronous", "PRAGMA synchronous = NORMAL", f"PRAGMA synchronous = {FULL}"]
    assert closed == [True]


async def test_a_resume_takes_its_lease_and_loads_on_the_loop_then_events_sync_as_before(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    wf = one_long_visit(steps=12)
    first = Engine(url, workflows=[wf], snapshot_every=5)
    assert (await first.run(wf, run_id="r")).status == "waiting"  # the first lease makes the lease table
    with calls_off_the_loop(first.store) as names:
        assert (await first.run(wf, run_id="other")).status == "waiting"
    assert "_acquire_now" not in names  # a start takes its lease on the loop too
    first.close()

    engine = Engine(url, workflows=[wf], snapshot_every=5)
    try:
        await engine.signal("r", "go")
        with calls_off_the_loop(engine.store) as names:
            done = await engine.resume("r")
        assert done.status == "completed" and done.output == 12
        assert "take_then_load" not in names and "restore_journal" not in names
        appender: Any = engine.store.backend.inline_appender  # type: ignore[attr-defined]
        assert synchronous(appender._conn) == FULL  # the run's events sync on the connection its lease used
        with engine.store.backend.datastore().get_connection(commit=True) as conn:  # the lease's release used it
            cursor = conn.cursor()
            cursor.execute("PRAGMA synchronous")
            assert int(cursor.fetchone()[0]) == FULL
    finally:
        engine.close()


async def test_a_resume_waits_for_the_lease_in_a_thread_while_another_writer_holds_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    wf = one_long_visit(steps=3)
    engine = Engine(url, workflows=[wf])
    try:
        assert (await engine.run(wf, run_id="r")).status == "waiting"
        await engine.signal("r", "go")
        holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        with calls_off_the_loop(engine.store) as names:
            resume = asyncio.create_task(engine.resume("r"))
            ticks = 0
            for _ in range(20):  # the loop keeps running while the resume waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert not resume.done() and ticks == 20
            holder.rollback()
            holder.close()
            done = await asyncio.wait_for(resume, 30)
        assert done.status == "completed" and done.output == 3
        assert "take_then_load" in names
    finally:
        engine.close()


async def test_a_long_visits_journal_is_read_in_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    wf = one_long_visit(steps=30)
    engine = Engine(url, workflows=[wf], snapshot_every=10)
    try:
        assert (await engine.run(wf, run_id="r")).status == "waiting"
        whole = engine.store.load("r")
        for limit, in_thread in ((1000, False), (5, True)):
            monkeypatch.setattr(eventstore, "JOURNAL_ROWS_ON_LOOP", limit)
            with calls_off_the_loop(engine.store) as names:
                loaded = await engine.store.load_on_loop("r")
            assert ("restore_journal" in names) is in_thread
            assert loaded.journal_elided is None and loaded.journal == whole.journal and len(loaded.journal) == 30
        await engine.signal("r", "go")
        assert (await engine.resume("r")).output == 30
    finally:
        engine.close()


def test_a_lease_on_the_loop_is_refused_while_another_writer_holds_the_file(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    try:
        book = store.lease_book()
        assert isinstance(book, SQLiteLeaseBook)
        me, other = DriverId.here(), DriverId.here()
        assert not book.acquire_on_loop("r", me, 30)  # no lease table yet: the thread's acquire makes it
        book.acquire("r", other, 30)
        with pytest.raises(RunBusy):
            book.acquire_on_loop("r", me, 30)  # held by a live driver
        book.release(other.owner, "r", 0)
        holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        assert not book.acquire_on_loop("r", me, 30)
        assert book.get("r") is None  # nothing written
        holder.rollback()
        holder.close()
        assert book.acquire_on_loop("r", me, 30)
        lease = book.get("r")
        assert lease is not None and lease.owner == me.owner
    finally:
        store.close()
