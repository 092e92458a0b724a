"""The PostgreSQL store: appends from the event loop in one prepared call, a LIFO pool, set-up once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresRecorder
from pydantic import BaseModel

from phaseledger import ConcurrencyConflict, Context, Engine, StoreUnavailable, Workflow
from phaseledger.domain.run import WorkflowRun
from phaseledger.store import postgres as postgres_store
from phaseledger.store.eventstore import Store, StoreURL
from phaseledger.store.postgres import append_function
from phaseledger.store.postgres_prepared import BATCH, ONE

pytestmark = pytest.mark.postgres


class Empty(BaseModel):
    pass


def started(run_id: str) -> WorkflowRun:
    return WorkflowRun._create(WorkflowRun.RunStarted, id=run_id, workflow="w", workflow_version=1, input={},
                               parent=None)


def signals(run: WorkflowRun, n: int) -> list[WorkflowRun.Event]:
    for i in range(n):
        run.trigger_event(WorkflowRun.SignalReceived, signal_id=f"{run.version}-{i}", name="go", payload={"q": "'\\"})
    return run.collect_events()  # type: ignore[return-value]


def thread_free(store: Store) -> list[str]:
    """Make the store's synchronous append fail the test if it is called; returns the calls."""
    calls: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> int:
        calls.append(repr(args))
        raise AssertionError("the append took the synchronous path")

    store.backend.write = forbidden  # type: ignore[method-assign,assignment]
    store.append = forbidden  # type: ignore[method-assign]
    return calls


async def test_loop_appends_need_no_thread_and_keep_notification_order(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        run = started("r")
        first = await store.append_async(run.collect_events())  # in a thread, while the loop connects
        assert await store.backend.loop_appender.connected()
        thread_free(store)
        ids = [first]
        for batch in (1, 3, 1):
            ids.append(await store.append_async(signals(run, batch)))
        logged = [n.id for n in store.app.recorder.select_notifications(start=0, limit=100)]
        assert logged == sorted(logged) and len(logged) == 6 and ids == [logged[i] for i in (0, 1, 4, 5)]
        assert store.load("r").inbox == run.inbox
    finally:
        store.close()


@pytest.mark.parametrize("batch", [1, 2], ids=["one-event", "batch"])
async def test_loop_append_conflict_writes_nothing_and_the_connection_stays_usable(postgres_url: str,
                                                                                 batch: int) -> None:
    store, other = Store(postgres_url), Store(postgres_url)
    try:
        await store.append_async(started("r").collect_events())
        mine, theirs = store.load("r"), other.load("r")
        await other.append_async(signals(theirs, 1))
        assert await store.backend.loop_appender.connected()
        thread_free(store)
        with pytest.raises(ConcurrencyConflict):
            await store.append_async(signals(mine, batch))
        assert [e.originator_version for e in store.events("r")] == [1, 2]
        await store.append_async(signals(store.load("r"), 1))  # the same loop connection, after the failure
        assert store.load("r").version == 3
    finally:
        store.close()
        other.close()


def terminate(postgres_url: str, conn: psycopg.AsyncConnection[Any]) -> None:
    """End the server backend of ``conn``, as a server restart or a network cut would."""
    with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "", autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))


async def test_a_broken_loop_connection_falls_back_to_the_retrying_path(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        run = started("r")
        await store.append_async(run.collect_events())
        assert await store.backend.loop_appender.connected()
        terminate(postgres_url, store.backend.loop_appender._conn)
        await store.append_async(signals(run, 1))  # fails on the loop, then appends in a thread
        assert store.backend.loop_appender._conn is None
        await store.append_async(signals(run, 1))  # in a thread again, while the loop reconnects
        assert await store.backend.loop_appender.connected()
        thread_free(store)
        await store.append_async(signals(run, 1))
        assert [e.originator_version for e in store.events("r")] == [1, 2, 3, 4]
    finally:
        store.close()


async def test_appends_queued_behind_one_that_lost_the_connection_take_the_retrying_path(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    try:
        runs = [started(f"r{i}") for i in range(4)]
        await store.append_async(runs[0].collect_events())
        assert await appender.connected()
        lost = appender._conn
        terminate(postgres_url, lost)
        with store.driving(), store.driving():  # several runs' appends: they queue, waiting through the loop
            await asyncio.gather(*(store.append_async(run.collect_events()) for run in runs[1:]))
        assert lost.closed and appender._conn is None
        assert sorted(store.run_ids()) == ["r0", "r1", "r2", "r3"]
        assert await appender.connected()  # a new connection, which the lost one's appends left alone
        thread_free(store)
        await store.append_async(signals(store.load("r1"), 1))
        assert store.load("r1").version == 2
    finally:
        store.close()


async def test_an_append_queued_on_a_connection_replaced_meanwhile_leaves_the_new_one_alone(
    postgres_url: str,
) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r").collect_events())
        assert await appender.connected()
        old, old_turn = appender._conn, appender._in_use
        calls: list[Any] = []
        stand_in = appender._prepared = lambda *args, **kwargs: calls.append(args)  # the old connection's appends
        await old_turn.acquire()  # an append in progress: the next one queues behind it
        (event,) = [store.app.mapper.to_stored_event(e) for e in signals(store.load("r"), 1)]
        queued = asyncio.ensure_future(appender.append([event]))
        await asyncio.sleep(0)
        appender._close(stand_in)  # the connection was lost meanwhile...
        appender.start()
        assert await appender.connected() and appender._conn is not old  # ...and replaced
        new = appender._conn
        old_turn.release()
        assert await queued is None  # left to the retrying path, not sent on either connection
        assert calls == [] and old.closed and not new.closed and appender._conn is new
        await store.append_async(signals(store.load("r"), 1))
        assert store.load("r").version == 2
    finally:
        store.close()


def test_each_event_loop_gets_its_own_connection_and_a_live_other_loop_is_left_alone(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    run = started("r")

    async def append_connected(events: list[WorkflowRun.Event]) -> Any:
        await store.append_async(events)
        assert await appender.connected()
        return appender._conn

    try:
        first = asyncio.run(append_connected(run.collect_events()))
        second = asyncio.run(append_connected(signals(run, 1)))  # a new loop: the old loop's is closed
        assert first.closed and not second.closed

        holder = asyncio.new_event_loop()
        owned, release = threading.Event(), threading.Event()
        owner: list[Any] = []

        async def hold() -> None:
            owner.append(await append_connected(signals(run, 1)))
            owned.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)

        thread = threading.Thread(target=holder.run_until_complete, args=(hold(),))
        thread.start()
        try:
            assert owned.wait(10)
            assert second.closed and owner[0] is appender._conn
            asyncio.run(store.append_async(signals(run, 1)))  # through the thread path
            assert appender._conn is owner[0] and not owner[0].closed
        finally:
            release.set()
            thread.join(10)
            holder.close()
        assert [e.originator_version for e in store.events("r")] == [1, 2, 3, 4]
    finally:
        store.close()
    assert appender._conn is None


async def test_snapshots_are_stored_after_loop_appends(postgres_url: str) -> None:
    wf = Workflow("snaps", state=Empty, checkpoint_every_n_steps=1)

    @wf.phase(initial=True, final=True)
    async def work(ctx: Context[Empty]) -> int:
        for i in range(12):
            await ctx.step("s", lambda i=i: i)
        return 12

    engine = Engine(postgres_url, workflows=[wf], snapshot_every=5)
    try:
        run = await engine.run(wf, run_id="r")
        assert run.status == "completed" and run.output == 12
        versions = [s.originator_version for s in engine.store.app.snapshots.get("r")]  # type: ignore[union-attr]
        assert versions == [v for v in range(5, len(engine.store.events("r")) + 1, 5)]
    finally:
        engine.close()


def test_the_pool_hands_out_the_most_recently_returned_connection(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        pool = store.app.recorder.datastore.pool  # type: ignore[attr-defined]
        pool.wait()
        with pool.connection() as a, pool.connection() as b:
            pids = {a.info.backend_pid, b.info.backend_pid}
        last = a.info.backend_pid  # returned last (the with statement exits b first)
        for _ in range(5):
            with pool.connection() as again:
                assert again.info.backend_pid == last
        assert len(pids) == 2
    finally:
        store.close()


def test_a_store_made_by_an_earlier_release_gets_the_append_function(postgres_url: str) -> None:
    conninfo = StoreURL.parse(postgres_url).postgres_conninfo or ""
    schema = StoreURL.parse(postgres_url).postgres_schema
    store = Store(postgres_url)
    store.save(started("old"))
    store.close()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP FUNCTION "{schema}".{append_function("phaseledger_events")}')  # as before it existed
    reopened = Store(postgres_url)
    try:
        assert isinstance(reopened.app.recorder, PostgresApplicationRecorder)
        run = reopened.load("old")
        reopened.append(signals(run, 2))
        assert reopened.load("old").version == 3
    finally:
        reopened.close()


async def test_concurrent_first_appends_on_one_loop_make_one_connection(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[psycopg.AsyncConnection[Any]] = []
    connect = psycopg.AsyncConnection.connect

    async def counted(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        conn = await connect(*args, **kwargs)
        made.append(conn)
        return conn

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", counted)
    store = Store(postgres_url)
    try:
        runs = [started(f"r{i}") for i in range(5)]
        await asyncio.gather(*(store.append_async(run.collect_events()) for run in runs))
        assert await store.backend.loop_appender.connected()
        assert made == [store.backend.loop_appender._conn]
        assert sorted(store.run_ids()) == [f"r{i}" for i in range(5)]
    finally:
        store.close()


def test_an_unreachable_server_leaves_appends_to_the_retrying_path(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    appender.conninfo += " port=1"  # nothing listens there: the loop cannot connect
    run = started("r")

    async def main() -> None:
        await store.append_async(run.collect_events())
        assert not await appender.connected()
        assert appender._retry_at > 0 and appender._connecting is None
        await store.append_async(signals(run, 1))  # within the retry delay: no new attempt
        assert appender._connecting is None

    try:
        asyncio.run(main())
        assert [e.originator_version for e in store.events("r")] == [1, 2]
    finally:
        store.close()


def test_processes_opening_a_new_store_at_once_set_it_up_once(postgres_url: str) -> None:
    barrier = threading.Barrier(4)

    def open_and_start(i: int) -> str:
        barrier.wait(10)
        store = Store(postgres_url)
        try:
            store.save(started(f"r{i}"))
            return type(store.app.recorder).__name__
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_and_start, range(4))) == ["OneTripRecorder"] * 4
    store = Store(postgres_url)
    try:
        assert sorted(store.run_ids()) == ["r0", "r1", "r2", "r3"]
    finally:
        store.close()


def test_opening_a_store_that_is_set_up_runs_no_ddl(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(postgres_url).close()

    def no_ddl(self: PostgresRecorder) -> None:
        raise AssertionError("DDL on a store that is set up")

    monkeypatch.setattr(PostgresRecorder, "create_table", no_ddl)
    store = Store(postgres_url)
    try:
        store.save(started("r"))
        assert store.load("r").version == 1
    finally:
        store.close()
    schema = StoreURL.parse(postgres_url).postgres_schema
    with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "", autocommit=True) as conn:
        conn.execute(f'ALTER FUNCTION "{schema}".{append_function("phaseledger_events")} '
                     "RENAME TO phaseledger_events_append_v0")  # the function of an earlier release only
    with pytest.raises(StoreUnavailable, match="DDL on a store that is set up"):
        Store(postgres_url)  # another release's function: set up again (refused here by the spy)


def test_the_pool_keeps_the_connection_that_checked_the_set_up(postgres_url: str) -> None:
    Store(postgres_url).close()  # set up
    store = Store(postgres_url)
    try:
        pool = store.app.recorder.datastore.pool  # type: ignore[attr-defined]
        assert pool.get_stats()["connections_num"] == 1  # the check's, made as the pool makes its own
        assert pool.get_stats()["pool_available"] == 1  # idle in the pool already: no wait for the first read
        store.save(started("r"))
        assert store.load("r").version == 1
        assert pool.get_stats()["connections_num"] == 1
    finally:
        store.close()


@pytest.mark.parametrize(("setting", "shown"), [(None, "5s"), ("7", "7s")])
def test_the_first_connection_has_the_settings_of_the_pools_others(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, setting: str | None, shown: str,
) -> None:
    # The first connection's settings go out in the pipeline of the set-up check, not through
    # eventsourcing's configure callback, which the pool calls for the connections it makes.
    if setting is not None:
        monkeypatch.setenv("POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", setting)
    Store(postgres_url).close()  # set up
    store = Store(postgres_url)
    try:
        pool = store.app.recorder.datastore.pool  # type: ignore[attr-defined]
        with pool.connection() as first, pool.connection() as made_by_pool:
            assert pool.get_stats()["connections_num"] == 2
            for conn in (first, made_by_pool):
                assert conn.autocommit
                row = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
                assert row["idle_in_transaction_session_timeout"] == shown
    finally:
        store.close()


def test_the_pool_starts_its_threads_with_its_first_task(postgres_url: str) -> None:
    Store(postgres_url).close()  # set up
    store = Store(postgres_url)
    pool = store.app.recorder.datastore.pool  # type: ignore[attr-defined]

    def pool_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(f"{pool.name}-") and t.is_alive()]

    try:
        store.save(started("r"))
        assert store.load("r").version == 1
        assert pool_threads() == []  # one connection used by one thread at a time: no thread needed
        with pool.connection() as a, pool.connection() as b:  # two at once: the pool grows, with its threads
            assert a.info.backend_pid != b.info.backend_pid
            assert {t.name.removeprefix(f"{pool.name}-") for t in pool_threads()} >= {"scheduler", "worker-0"}
        assert store.load("r").version == 1
    finally:
        store.close()
    assert pool_threads() == []  # closing the pool stopped them
    unused = Store(postgres_url)
    unused.close()  # a pool whose threads never started closes too


def test_reads_are_prepared_from_their_fifth_run_not_their_first(postgres_url: str) -> None:
    Store(postgres_url).close()  # set up
    store = Store(postgres_url)
    pool = store.app.recorder.datastore.pool  # type: ignore[attr-defined]

    def prepared_reads() -> list[str]:  # on the pool's one connection, the one the reads used
        with pool.connection() as conn:
            rows = conn.execute("SELECT statement FROM pg_prepared_statements", prepare=False).fetchall()
        return [r["statement"] for r in rows if r["statement"].lstrip().upper().startswith("SELECT")]

    try:
        store.save(started("r"))
        store.load("r")
        assert prepared_reads() == []  # a read run once was sent once: no round trip to prepare it first
        for _ in range(5):
            store.load("r")
        assert prepared_reads()  # run again and again: prepared, as eventsourcing asks
        assert pool.get_stats()["connections_num"] == 1
    finally:
        store.close()


async def test_the_loop_connection_is_warmed_up_without_writing_or_notifying(postgres_url: str) -> None:
    store = Store(postgres_url)
    recorder: Any = store.app.recorder
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r").collect_events())
        with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "", autocommit=True) as listener:
            listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(recorder.channel_name)))
            appender.close()
            assert await appender.connected()  # a new connection, warmed up
            assert list(listener.notifies(timeout=0.3)) == []
        assert appender._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert [e.originator_version for e in store.events("r")] == [1]
        thread_free(store)
        await store.append_async(signals(store.load("r"), 1))
        assert [e.originator_version for e in store.events("r")] == [1, 2]
    finally:
        store.close()


async def test_a_table_lock_held_elsewhere_does_not_hold_up_the_loop_connection(postgres_url: str) -> None:
    store = Store(postgres_url)
    recorder: Any = store.app.recorder
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r").collect_events())
        appender.close()
        with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "") as other:
            other.execute(psycopg.sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(
                psycopg.sql.Identifier(recorder.datastore.schema), psycopg.sql.Identifier(recorder.events_table_name)))
            assert await asyncio.wait_for(appender.connected(), 5)  # the warm-up gave up on the lock
            other.rollback()
        assert appender._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        thread_free(store)
        await store.append_async(signals(store.load("r"), 1))
        assert [e.originator_version for e in store.events("r")] == [1, 2]
    finally:
        store.close()


async def next_row_of_a_started_run(store: Store) -> StoredEvent:
    """Start run ``r`` (its loop's connection made meanwhile) and give the row of its next event, unappended."""
    await store.append_async(started("r").collect_events())
    assert await store.backend.loop_appender.connected()
    (event,) = [store.app.mapper.to_stored_event(e) for e in signals(store.load("r"), 1)]
    return event


@contextlib.contextmanager
def table_lock_held(store: Store, postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The store's table lock, held as another writer would by another connection, in a
    transaction left open until the block ends (or the connection's ``rollback()``)."""
    recorder: Any = store.app.recorder
    with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "") as holder:
        holder.execute(psycopg.sql.SQL("LOCK TABLE {}.{} IN EXCLUSIVE MODE").format(
            psycopg.sql.Identifier(recorder.datastore.schema), psycopg.sql.Identifier(recorder.events_table_name)))
        yield holder


async def test_appends_go_through_the_statements_prepared_on_the_loop_connection(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r-é✓").collect_events())
        assert await appender.connected()
        cursor = await appender._conn.execute("SELECT name, statement FROM pg_prepared_statements ORDER BY name")
        prepared = dict(await cursor.fetchall())
        assert "ARRAY[$1::text], ARRAY[$2::bigint], ARRAY[$3::text], ARRAY[$4::bytea], $5::text)" in prepared[ONE.decode()]
        assert "($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::text)" in prepared[BATCH.decode()]
        thread_free(store)
        run = store.load("r-é✓")
        ids = [await store.append_async(signals(run, n)) for n in (1, 3, 1)]
        logged = {n.originator_version: n.id for n in store.app.recorder.select_notifications(start=0, limit=10)}
        assert ids == [logged[2], logged[5], logged[6]] and sorted(logged.values()) == list(logged.values())
        assert store.load("r-é✓").inbox == run.inbox  # the id and the states read back as they were written
    finally:
        store.close()


async def test_a_batch_carries_any_bytes_and_any_text_as_they_are(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    rows = [StoredEvent("s-ü", 1, "topic:ö", bytes(range(256))), StoredEvent("s-ü", 2, "topic:€", b""),
            StoredEvent("s-ü", 3, "t", b"\x00" * 3 + b"'\\")]
    try:
        assert await appender.connected()
        thread_free(store)
        ids = await appender.append(rows)
        assert ids is not None and len(ids) == 3 and ids == sorted(ids)
        assert list(store.app.recorder.select_events("s-ü")) == rows
    finally:
        store.close()


async def test_a_steps_append_past_the_lock_timeout_raises_psycopgs_error_and_leaves_it_to_the_retrying_path(
    postgres_url: str,
) -> None:
    store = Store(postgres_url)
    store.app.recorder.lock_timeout = "100ms"  # type: ignore[attr-defined]  # read when the loop connects
    appender = store.backend.loop_appender
    try:
        event = await next_row_of_a_started_run(store)
        with table_lock_held(store, postgres_url) as holder:
            with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
                await appender._prepared([event])  # as psycopg's cursor raises it
            assert appender._conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert await appender.append([event]) is None  # an OperationalError: the loop's connection goes
            assert appender._conn is None
            holder.rollback()
        await store.append_async(signals(store.load("r"), 1))  # the retrying path, in a thread
        assert [e.originator_version for e in store.events("r")] == [1, 2]
    finally:
        store.close()


async def test_an_append_of_a_run_driven_alone_holds_the_loop_only_until_its_hold_runs_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A run driven alone waits for its append's reply on the loop's thread, for HOLD_LOOP at
    # most: an append held up by the table lock then waits through the loop, whose other
    # tasks run meanwhile.
    monkeypatch.setattr(postgres_store, "HOLD_LOOP", 0.05)
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    ticks = 0

    async def other_task() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(other_task())
    try:
        event = await next_row_of_a_started_run(store)
        with table_lock_held(store, postgres_url) as holder:
            waiting = asyncio.ensure_future(appender.append([event], alone=True))
            await asyncio.sleep(0)  # the append starts, and holds the loop for 50 ms
            held_at, started_at = ticks, time.monotonic()
            await asyncio.sleep(0.3)
            assert not waiting.done() and ticks > held_at + 100  # waiting through the loop
            holder.rollback()
        ids = await waiting
        assert ids is not None and time.monotonic() - started_at >= 0.3
        assert [e.originator_version for e in store.events("r")] == [1, 2]
        (event,) = [store.app.mapper.to_stored_event(e) for e in signals(store.load("r"), 1)]
        before = ticks
        assert await appender.append([event], alone=True) is not None
        assert ticks == before  # its reply came within the hold: the loop did not turn
    finally:
        ticker.cancel()
        store.close()


async def test_an_append_of_a_run_driven_alone_waits_on_a_socket_numbered_past_selects_limit(
    postgres_url: str,
) -> None:
    # select() takes no file descriptor from 1024 on; a service with many open files or
    # connections hands its store such sockets.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1500:
        if hard != resource.RLIM_INFINITY and hard < 1500:
            pytest.skip(f"this process may open {hard} files, fewer than the test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1500, hard))
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r").collect_events())
        assert await appender.connected()
        assert appender._conn.pgconn.socket >= 1024
        for _ in range(3):
            (event,) = [store.app.mapper.to_stored_event(e) for e in signals(store.load("r"), 1)]
            assert await appender.append([event], alone=True) is not None
        assert store.load("r").version == 4
    finally:
        store.close()
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_steps_append_cancelled_midway_closes_the_loop_connection(postgres_url: str) -> None:
    store = Store(postgres_url)
    appender = store.backend.loop_appender
    try:
        await store.append_async(started("r").collect_events())
        assert await appender.connected()
        with table_lock_held(store, postgres_url) as holder:
            waiting = asyncio.ensure_future(store.append_async(signals(store.load("r"), 1)))
            await asyncio.sleep(0.2)  # sent, and waiting for the table lock
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert appender._conn is None  # its state is unknown: not used again
            holder.rollback()
        await store.append_async(started("s").collect_events())  # in a thread, while the loop reconnects
        assert await appender.connected()
        await store.append_async(signals(store.load("s"), 1))
        assert store.load("s").version == 2
    finally:
        store.close()


async def test_concurrent_appends_on_one_loop_queue_on_its_connection(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        await store.append_async(started("warm").collect_events())
        assert await store.backend.loop_appender.connected()
        thread_free(store)
        runs = [started(f"r{i}") for i in range(12)]
        await asyncio.gather(*(store.append_async(run.collect_events()) for run in runs))
        # Single events and batches at once, on the one connection.
        await asyncio.gather(*(store.append_async(signals(run, 1 + i % 3)) for i, run in enumerate(runs)))
        for i, run in enumerate(runs):
            assert store.load(run.id).version == 2 + i % 3
        logged = [n.id for n in store.app.recorder.select_notifications(start=0, limit=100)]
        assert logged == sorted(logged) and len(logged) == 1 + 12 + sum(1 + i % 3 for i in range(12))
    finally:
        store.close()
