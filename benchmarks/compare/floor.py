"""The floor of phaseledger's recovery and of its first read: the statements alone.

What a resume of a killed run must send to its store, whatever the code around it, sent
on one new connection with nothing else: no engine, no pool, no threads, no decoding, no
replay. The same statements, in the same order, with the same tables, as phaseledger's own
recovery of the comparison's run (see :mod:`benchmarks.compare.peer`):

1. open a connection, and the set-up check a store makes when it opens (whether its tables
   are there; on PostgreSQL, this release's append function too);
2. take the run's lease from its dead holder: one attempt that finds it held, then the
   take-over (two statements, each its own transaction; on SQLite committed without a
   sync, as phaseledger's lease rows are);
3. read the latest snapshot and the events after it;
4. read the phase visit's rows back (here the visit is the whole run, from its start);
5. commit the resume marker (PostgreSQL: the append function's first call on this
   connection).

The clock stops where phaseledger's first new step could start. The difference between
phaseledger's recovery and this is what its own code costs (Python, threads, a second
connection); the difference between this and LangGraph's recovery is what the guarantees
cost in statements (the lease, the marker, the set-up check), on this machine.

:func:`view_floor` does the same for reading a finished run's state in a new process:
open, the set-up check (PostgreSQL), the latest snapshot and the events after it.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from benchmarks._harness import now, postgres_conninfo
from phaseledger.store.postgres import append_function
from phaseledger.store.sql import SELECT_ROWS_BETWEEN, quote
from phaseledger.store.sql import postgres as pg
from phaseledger.store.sql import sqlite as sql
from phaseledger.store.sqlite_appender import lease_writes
from phaseledger.store.sqlite_factory import EVENTS_TABLE, SNAPSHOTS_TABLE

_TOPIC = "phaseledger.domain.run:WorkflowRun.RunResumed"
_SQLITE = {"events": EVENTS_TABLE, "snapshots": SNAPSHOTS_TABLE}
_PG = {"events": "phaseledger_events", "snapshots": "phaseledger_snapshots",
       "function": append_function("phaseledger_events")}


def _marker_state() -> bytes:
    return b'{"timestamp":%d,"reason":"recover"}' % int(time.time() * 1e6)


def _owner() -> dict[str, Any]:
    host = socket.gethostname()
    return {"owner": f"{host}:{os.getpid()}:floor", "host": host, "pid": os.getpid(), "proc_start": 0.0,
            "lease": 30.0}


def resume_floor(backend: str, store: str, run_id: str) -> float:
    """Seconds from opening the store to where the first new step could start (see the module)."""
    return _sqlite_resume(store, run_id) if backend == "sqlite" else _postgres_resume(store, run_id)


def view_floor(backend: str, store: str, run_id: str) -> float:
    """Seconds to open the store and read a run's latest snapshot and the events after it."""
    start = now()
    conn: Any = _sqlite_connect(store) if backend == "sqlite" else _postgres_open(store)
    try:
        if backend == "sqlite":
            _sqlite_read(conn, run_id)
        else:
            _postgres_read(conn, _schema(store), run_id)
        return now() - start
    finally:
        conn.close()


# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """A connection, and the check a store's opening makes (see :mod:`phaseledger.store.sqlite_factory`)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode;")  # as eventsourcing's connections do: WAL already, nothing to set
    conn.execute(sql.TABLES_PRESENT, _SQLITE).fetchone()
    return conn


def _sqlite_read(conn: sqlite3.Connection, run_id: str) -> tuple[int, int]:
    """The latest snapshot's version and the run's head, reading what a load reads."""
    snap = conn.execute(
        f"SELECT * FROM {_SQLITE['snapshots']} WHERE originator_id=? ORDER BY originator_version DESC LIMIT 1",
        (run_id,)).fetchone()
    base = int(snap[1]) if snap else 0
    tail = conn.execute(
        f"SELECT * FROM {_SQLITE['events']} WHERE originator_id=? AND originator_version>? "
        "ORDER BY originator_version", (run_id, base)).fetchall()
    return base, int(tail[-1][1]) if tail else base


def _sqlite_resume(path: str, run_id: str) -> float:
    me = _owner()
    start = now()
    conn = _sqlite_connect(path)
    try:
        holder = ""
        with lease_writes(conn.cursor(), conn.close):  # lease rows commit unsynced, as phaseledger's do
            for _ in range(2):  # finds the dead holder, then takes over from it
                conn.execute("BEGIN")
                conn.execute(sql.ACQUIRE, {**me, "run_id": run_id, "now": time.time(), "takeover": holder})
                row = conn.execute(sql.LEASE_ROW, {"run_id": run_id}).fetchone()
                conn.execute("COMMIT")
                if row is None or row[1] == me["owner"]:
                    break
                holder = row[1]
        base, head = _sqlite_read(conn, run_id)
        conn.execute(sql.sql(SELECT_ROWS_BETWEEN, events=_SQLITE["events"]),
                     {"run_id": run_id, "gt": 0, "lte": base}).fetchall()
        conn.execute("BEGIN")
        conn.execute(f"INSERT INTO {_SQLITE['events']} VALUES (?,?,?,?)", (run_id, head + 1, _TOPIC, _marker_state()))
        conn.execute("COMMIT")
        return now() - start
    finally:
        conn.close()


# -- PostgreSQL --------------------------------------------------------------------------------


def _schema(store: str) -> str:
    return store.rsplit("schema=", 1)[1]


def _postgres_open(store: str) -> psycopg.Connection[Any]:
    """A connection, and the set-up check a new store makes on it."""
    schema = _schema(store)
    conn = psycopg.connect(postgres_conninfo(store), autocommit=True, row_factory=dict_row)
    conn.execute(pg.IS_SET_UP, {
        "function": f"{quote((schema, _PG['function']))}({pg.APPEND_ARGS})",
        "events": quote((schema, _PG["events"])), "snapshots": quote((schema, _PG["snapshots"])),
    }).fetchone()
    return conn


def _postgres_read(conn: psycopg.Connection[Any], schema: str, run_id: str) -> tuple[int, int]:
    snap = conn.execute(pg.sql("SELECT * FROM {snapshots} WHERE originator_id = %(id)s "
                               "ORDER BY originator_version DESC LIMIT 1", schema, snapshots=_PG["snapshots"]),
                        {"id": run_id}).fetchone()
    base = int(snap["originator_version"]) if snap else 0
    tail = conn.execute(pg.sql("SELECT * FROM {events} WHERE originator_id = %(id)s AND originator_version > %(v)s "
                               "ORDER BY originator_version", schema, events=_PG["events"]),
                        {"id": run_id, "v": base}).fetchall()
    return base, int(tail[-1]["originator_version"]) if tail else base


def _postgres_resume(store: str, run_id: str) -> float:
    schema, me = _schema(store), _owner()
    acquire = pg.sql(pg.ACQUIRE_OR_HOLDER, schema)
    append = pg.sql(pg.APPEND_ONE, schema, function=_PG["function"])
    start = now()
    conn = _postgres_open(store)
    try:
        holder = ""
        for _ in range(2):  # finds the dead holder, then takes over from it
            row = conn.execute(acquire, {**me, "run_id": run_id, "takeover": holder}).fetchone()
            if row is None or row["taken"]:
                break
            holder = row["owner"]
        base, head = _postgres_read(conn, schema, run_id)
        conn.execute(pg.sql(SELECT_ROWS_BETWEEN, schema, events=_PG["events"]),
                     {"run_id": run_id, "gt": 0, "lte": base}).fetchall()
        with conn.cursor(binary=True) as cursor:
            cursor.execute(append, (run_id, head + 1, _TOPIC, _marker_state(), "5s"))
            cursor.fetchall()
        return now() - start
    finally:
        conn.close()
