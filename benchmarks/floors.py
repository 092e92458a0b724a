"""The floors every figure is divided by: what the hardware and the drivers cost at the least.

- SQLite: one-row INSERT + COMMIT with Python's ``sqlite3`` on a WAL file, with the
  ``synchronous`` setting phaseledger's own store connections use.
- PostgreSQL: one-row INSERT in autocommit mode with psycopg 3 on the same database
  (and, printed beside a step, the store's one-event append alone, from an event loop).
- In memory: a plain loop of function calls.

The row has the shape of phaseledger's stored events (id, version, topic, state) with a
state of ``FLOOR_STATE_BYTES``, about the size of a recorded step.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from benchmarks._harness import now, postgres_conninfo

FLOOR_STATE_BYTES = 300
_TOPIC = "phaseledger.domain.run:WorkflowRun.StepRecorded"


def store_sqlite_synchronous(store_url: str) -> int:
    """The ``PRAGMA synchronous`` value of phaseledger's store connections on this file."""
    from phaseledger.store.eventstore import Store

    store = Store(store_url)
    try:
        with store.app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute("PRAGMA synchronous")
            return int(cursor.fetchone()[0])
    finally:
        store.close()


def sqlite_commit_floor(path: Path, n: int, synchronous: int) -> float:
    """Seconds per one-row INSERT + COMMIT on a fresh WAL file at ``path``."""
    return sqlite_commit_floor_times(path, n, synchronous)[0]


def busy(seconds: float) -> None:
    """Spend ``seconds`` of CPU on this thread (a stand-in for work between two commits)."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass


def sqlite_commit_floor_times(path: Path, n: int, synchronous: int, work: float = 0.0) -> tuple[float, float]:
    """``(wall, CPU)`` seconds per one-row INSERT + COMMIT on a fresh WAL file at ``path``.

    The CPU is this process's (``time.process_time``) over the same loop: what the driver
    and SQLite spend per commit besides waiting for the disk. With ``work`` (seconds), each
    commit follows that much CPU spent on this thread (:func:`busy`), included in both.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={int(synchronous)}")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS floor (id TEXT, version INTEGER, topic TEXT, state BLOB, "
            "PRIMARY KEY (id, version))"
        )
        state = b"x" * FLOOR_STATE_BYTES
        run_id = path.stem
        start, cpu = now(), time.process_time()
        for version in range(1, n + 1):
            if work:
                busy(work)
            conn.execute("INSERT INTO floor VALUES (?,?,?,?)", (run_id, version, _TOPIC, state))
        return (now() - start) / n, (time.process_time() - cpu) / n
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def postgres_commit_floor(store_url: str, schema: str, n: int, work: float = 0.0) -> float:
    """Seconds per one-row INSERT in autocommit mode (one round trip, one commit); with ``work``
    (seconds), each after that much CPU spent on this thread (:func:`busy`), included."""
    import psycopg
    from psycopg import sql

    table = sql.Identifier(schema, "floor")
    with psycopg.connect(postgres_conninfo(store_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id text, version bigint, topic text, state bytea, "
                "PRIMARY KEY (id, version))"
            ).format(table)
        )
        conn.execute(sql.SQL("TRUNCATE {}").format(table))
        insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(table)
        state = b"x" * FLOOR_STATE_BYTES
        with conn.cursor() as cursor:
            start = now()
            for version in range(1, n + 1):
                if work:
                    busy(work)
                cursor.execute(insert, ("floor", version, _TOPIC, state), prepare=True)
            return (now() - start) / n


def postgres_append_floor(store_url: str, n: int) -> float:
    """Seconds per one-event append by the store's loop appender, from an event loop.

    The floor of a journaled step on PostgreSQL with the guarantees of its append (the
    table lock that keeps notification ids in commit order, the NOTIFY, the INSERT, in one
    transaction): the call a step's append makes, through the same asynchronous
    connection (:class:`~phaseledger.store.postgres.LoopAppender`), and nothing else: no
    engine, no event built or encoded. Rows go to a stream of their own in the store.
    """
    import asyncio
    import uuid

    from eventsourcing.persistence import StoredEvent

    from phaseledger.store.eventstore import Store

    stream, state = f"floor-{uuid.uuid4()}", b"x" * FLOOR_STATE_BYTES

    async def appends() -> float:
        store = Store(store_url)
        try:
            appender = store.backend.loop_appender  # type: ignore[attr-defined]  # a PostgreSQL store's
            if not await appender.connected():
                raise RuntimeError("the store's loop appender could not connect")
            start = now()
            for version in range(1, n + 1):
                if await appender.append([StoredEvent(stream, version, _TOPIC, state)], alone=True) is None:
                    raise RuntimeError("the store's loop appender lost its connection")
            return (now() - start) / n
        finally:
            store.close()

    return asyncio.run(appends())


def _noop(i: int) -> int:
    return i + 1


def call_floor(n: int) -> float:
    """Seconds per plain in-memory function call (the floor of the ``memory://`` store)."""
    fn = _noop
    start = now()
    for i in range(n):
        fn(i)
    return (now() - start) / n
