"""The one translation point of database errors, the backoff, and the outage log lines."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3

import psycopg
import psycopg_pool
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, PersistenceError, ProgrammingError

from phaseledger import ConcurrencyConflict, RunNotFound, StoreUnavailable
from phaseledger.engine.engine import _backoff
from phaseledger.store.eventstore import Store, StoreURL
from phaseledger.store.faults import Backoff, Outage, guarded, jittered, store_errors, translate

URL = StoreURL.parse("postgresql://app:s3cret@db.internal:5432/runs?schema=prod")


def wrapped(outer: type[PersistenceError], inner: Exception) -> PersistenceError:
    """``inner`` as eventsourcing raises it: ``raise Outer(str(inner)) from inner``."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer(str(exc)) from exc
    except PersistenceError as exc:
        return exc


@pytest.mark.parametrize(("error", "transient", "reason"), [
    (wrapped(OperationalError, psycopg.OperationalError("server closed the connection unexpectedly")), True,
     "OperationalError: server closed the connection unexpectedly"),
    (psycopg_pool.PoolTimeout("couldn't get a connection after 1.00 sec"), True, "PoolTimeout: couldn't get"),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True, "AdminShutdown"),
    (wrapped(OperationalError, sqlite3.OperationalError("database is locked")), True, "database is locked"),
    (sqlite3.OperationalError("disk I/O error"), True, "disk I/O error"),
    (wrapped(OperationalError, sqlite3.OperationalError("no such table: stored_events")), False, "no such table"),
    (wrapped(ProgrammingError, psycopg.ProgrammingError('relation "x" does not exist')), False, "ProgrammingError"),
    (psycopg_pool.PoolClosed("the pool is closed"), False, "PoolClosed"),
])
def test_every_database_error_becomes_store_unavailable(error: Exception, transient: bool, reason: str) -> None:
    translated = translate(error, URL, "load run 'r1'")
    assert isinstance(translated, StoreUnavailable)
    assert translated.transient is transient
    assert translated.store == "postgresql://app:***@db.internal:5432/runs?schema=prod"
    assert translated.operation == "load run 'r1'"
    message = str(translated)
    assert message.startswith("cannot load run 'r1' (postgresql://app:***@db.internal:5432/runs?schema=prod): ")
    assert reason in message and "s3cret" not in message
    assert ("retry this with backoff" in message) is transient


def test_an_integrity_error_is_a_conflict_where_the_operation_says_so() -> None:
    error = wrapped(IntegrityError, psycopg.errors.UniqueViolation("duplicate key"))
    conflict = translate(error, URL, "append events of run 'r1'", conflict=lambda: ConcurrencyConflict("r1", 7))
    assert isinstance(conflict, ConcurrencyConflict) and conflict.version == 7
    other = translate(error, URL, "write the run index")
    assert isinstance(other, StoreUnavailable) and not other.transient


def test_other_errors_pass_through_unchanged() -> None:
    assert translate(ValueError("a bug"), URL, "load run 'r1'") is None
    assert translate(RunNotFound("r1"), URL, "load run 'r1'") is None
    with pytest.raises(KeyError), store_errors(URL, "read"):
        raise KeyError("a bug")
    with pytest.raises(RunNotFound), store_errors(URL, "read"):
        raise RunNotFound("r1")
    opening = translate(ValueError("bad port"), URL, "open store", any_error=True)
    assert isinstance(opening, StoreUnavailable) and "retry" not in str(opening)


def test_guarded_methods_name_their_arguments_only_when_they_fail() -> None:
    class Reader:
        store = Store("memory://")
        calls = 0

        @guarded("read run {run_id!r} at {version}")
        def read(self, run_id: str, version: int = 3) -> str:
            self.calls += 1
            if run_id == "down":
                raise wrapped(OperationalError, psycopg.OperationalError("connection refused"))
            return run_id

    reader = Reader()
    assert reader.read("r1") == "r1"
    with pytest.raises(StoreUnavailable, match=r"cannot read run 'down' at 3 \(memory://\)") as raised:
        reader.read("down")
    assert isinstance(raised.value.__cause__, OperationalError)


def test_backoff_grows_to_its_cap_with_jitter_and_starts_again_after_reset() -> None:
    backoff = Backoff(initial=0.5, cap=4.0)
    waits = [backoff.next() for _ in range(8)]
    for wait, base in zip(waits, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0], strict=True):
        assert base / 2 <= wait <= base
    backoff.reset()
    assert backoff.next() <= 0.5


def test_retry_jitter_leaves_the_random_modules_sequence_alone() -> None:
    # A program (or a property test) that seeded ``random`` gets the same draws whatever
    # retries phaseledger makes in the background meanwhile.
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    backoff = Backoff()
    waits = [backoff.next() for _ in range(5)] + [jittered(1.0) for _ in range(5)]
    asyncio.run(_backoff(1))
    assert [random.random() for _ in range(3)] == expected
    assert len(set(waits)) > 1  # still jittered


def test_an_outage_is_one_warning_and_one_info_however_many_attempts_fail(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "worker w1", settle=60.0)
    error = StoreUnavailable("cannot claim runs (postgresql://h/db): OperationalError: connection refused")
    outage.ok()
    for _ in range(20):
        outage.failed(error)
    assert outage.out and outage.failures == 20
    outage.ok()
    outage.ok()
    outage.failed(error)  # a stale connection used just after the outage: the same outage
    outage.ok()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith("worker w1: store unavailable, retrying with backoff until it is back: cannot claim")
    assert "store available again after" in lines[1][1] and "(20 failed attempt(s))" in lines[1][1]
    assert outage.outages == 1 and not outage.out


def test_a_new_outage_after_the_settling_time_is_announced_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "follower", settle=0.0)
    for _ in range(2):
        outage.failed(StoreUnavailable("down"))
        outage.ok()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO] * 2
    assert outage.outages == 2


def test_the_private_members_the_store_relies_on_are_still_there() -> None:
    """phaseledger.store._internals uses private members of psycopg_pool and eventsourcing
    (there is no public way to do what it does): fail loudly if an upgrade moves one."""
    import inspect

    import psycopg_pool
    from eventsourcing.popo import POPOApplicationRecorder
    from eventsourcing.postgres import ConnectionPool, PostgresTrackingRecorder
    from eventsourcing.sqlite import SQLiteTrackingRecorder
    from psycopg_pool.base import AttemptWithBackoff

    from phaseledger.store import _internals

    # the LIFO, outage-aware pool
    for name in _internals.LIFO_POOL_OVERRIDES:
        assert callable(getattr(psycopg_pool.ConnectionPool, name, None)), name
    assert list(inspect.signature(psycopg_pool.ConnectionPool._connect).parameters)[:2] == ["self", "timeout"]
    assert list(inspect.signature(psycopg_pool.ConnectionPool._add_connection).parameters)[:3] == [
        "self", "attempt", "growing"]
    assert list(inspect.signature(psycopg_pool.ConnectionPool._get_ready_connection).parameters)[:2] == [
        "self", "timeout"]
    assert callable(getattr(AttemptWithBackoff, "update_delay", None))
    assert hasattr(AttemptWithBackoff, "INITIAL_DELAY")
    pool = ConnectionPool("", open=False)
    assert hasattr(pool, "_pool") and hasattr(pool._pool, "rotate")  # the deque of idle connections
    assert isinstance(pool._nconns, int)  # the connections the pool counts (min_size when it opens)
    assert pool._closed is True  # until it opens; the threads a pool defers do not start once it closed
    configured = ConnectionPool("", open=False, configure=print)
    assert configured._configure is print  # the callback connect_first(configure=False) leaves out
    assert _internals._ReconnectBackoff is not None
    assert _internals.Schedule is not None and _internals.ShrinkPool is not None
    assert list(inspect.signature(_internals.Schedule).parameters) == ["pool", "task", "delay"]
    # tracking rows written and read in the caller's transaction
    for recorder in (SQLiteTrackingRecorder, PostgresTrackingRecorder):
        assert list(inspect.signature(recorder._insert_tracking).parameters)[1:] in (["c", "tracking"],
                                                                                     ["curs", "tracking"])
        assert len(inspect.signature(recorder._max_tracking_id).parameters) == 3
    # deleting rows of a memory:// store
    memory = POPOApplicationRecorder()
    assert hasattr(memory, "_database_lock") and isinstance(memory._stored_events_index, dict)
    # a projection runner's events handed over in batches
    from queue import Queue

    from eventsourcing.projection import BaseProjectionRunner

    loop = inspect.getattr_static(BaseProjectionRunner, _internals.PROCESS_LOOP)
    assert isinstance(loop, staticmethod)
    assert list(inspect.signature(loop).parameters) == ["subscription", "projection", "is_stopping", "runner"]
    assert "_thread_error" in inspect.getsource(BaseProjectionRunner.run_forever)
    with memory.subscribe(gt=None) as subscription:
        assert isinstance(subscription._notifications_index, int) and isinstance(subscription._notifications, list)
        assert isinstance(subscription._notifications_queue, Queue)
