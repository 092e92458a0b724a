"""The SQL of SQLite stores: run index, leases, retention, log counts, the report view's tracking.

Three tables sit next to the event store's own, in the same file:

``phaseledger_runindex``
    One row per run, derived from the notification log: its status and when it may next
    be driven (``runnable_at``, POSIX seconds; NULL while only a new event can wake it,
    and for a run with status ``damaged``, a row of which cannot be read). Rows are
    written in the same transaction as the index's tracking position (eventsourcing's
    ``tracking`` table, under the name ``phaseledger.runindex``).
``phaseledger_leases``
    Which process drives which run, until when, and its last heartbeat (see
    :mod:`phaseledger.store.leasebook`). One worker process owns a SQLite store, and keeps
    its fences in memory.

Statements are templates rendered by :func:`sql` (see :mod:`phaseledger.store.sql`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from phaseledger.store.sql import Identifier, render


def sql(template: str, **identifiers: Identifier) -> str:
    """A template of this module as sqlite3 executes it (``:name`` parameters)."""
    return render(template, "named", **identifiers)


def json_list(values: Iterable[object]) -> str:
    """A list parameter: the JSON array that ``json_each`` reads."""
    return json.dumps(list(values))


# -- the event store's own tables (created by eventsourcing's recorders) ------------------

TABLES_PRESENT = sql("""
    SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (%(events)s, %(snapshots)s)
""")

# -- run index and leases -----------------------------------------------------------------

CREATE = tuple(sql(s) for s in (
    """
    CREATE TABLE IF NOT EXISTS phaseledger_runindex (
        run_id           TEXT PRIMARY KEY,
        workflow         TEXT NOT NULL,
        workflow_version INTEGER NOT NULL,
        workflow_key     TEXT NOT NULL,
        status           TEXT NOT NULL,
        runnable_at      REAL,                 -- POSIX seconds; NULL: waits for an event
        version          INTEGER NOT NULL,
        updated_at       REAL NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS phaseledger_runindex_runnable
        ON phaseledger_runindex (runnable_at) WHERE runnable_at IS NOT NULL
    """,
    """
    CREATE TABLE IF NOT EXISTS phaseledger_leases (
        run_id       TEXT PRIMARY KEY,
        owner        TEXT,                     -- NULL once released
        host         TEXT,
        pid          INTEGER,
        proc_start   REAL,
        heartbeat_at REAL,                     -- POSIX seconds
        expires_at   REAL NOT NULL,
        fence        INTEGER NOT NULL DEFAULT 0,
        claims       INTEGER NOT NULL DEFAULT 1
    )
    """,
))

UPSERT_ROW = sql("""
    INSERT INTO phaseledger_runindex
        (run_id, workflow, workflow_version, workflow_key, status, runnable_at, version, updated_at)
    VALUES
        (%(run_id)s, %(workflow)s, %(workflow_version)s, %(workflow_key)s, %(status)s, %(runnable_at)s,
         %(version)s, %(updated_at)s)
    ON CONFLICT (run_id) DO UPDATE SET
        status = excluded.status, runnable_at = excluded.runnable_at,
        version = excluded.version, updated_at = excluded.updated_at,
        -- unknown ("?") in the row of a run found damaged before it was ever indexed
        workflow = excluded.workflow, workflow_version = excluded.workflow_version,
        workflow_key = excluded.workflow_key
    WHERE phaseledger_runindex.version <= excluded.version
""")

DELETE_ROW = sql("DELETE FROM phaseledger_runindex WHERE run_id = %(run_id)s")

SELECT_ROWS = sql("""
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM phaseledger_runindex ORDER BY run_id
""")

SELECT_DAMAGED = sql("SELECT run_id FROM phaseledger_runindex WHERE status = %(status)s ORDER BY run_id")

SELECT_ROW = sql("""
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM phaseledger_runindex WHERE run_id = %(run_id)s
""")

RUNNABLE = sql("""
    SELECT run_id, version FROM phaseledger_runindex
    WHERE runnable_at <= %(now)s AND workflow_key IN (SELECT value FROM json_each(%(keys)s))
    ORDER BY runnable_at
    LIMIT %(limit)s
""")

CHANGED = sql("""
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM phaseledger_runindex
    WHERE updated_at > %(since)s AND workflow_key IN (SELECT value FROM json_each(%(keys)s))
    ORDER BY updated_at
    LIMIT %(limit)s
""")

NEXT_WAKE = sql("""
    SELECT min(runnable_at) FROM phaseledger_runindex
    WHERE runnable_at IS NOT NULL AND workflow_key IN (SELECT value FROM json_each(%(keys)s))
""")

RESET = (
    sql("DELETE FROM phaseledger_runindex"),
    sql("DELETE FROM tracking WHERE application_name = %(name)s"),
)

# A driver takes a run's lease when it is free, released, expired, already its own, or
# held by %(takeover)s (an owner found dead on this host, or the holder a driver steals from).
ACQUIRE = sql("""
    INSERT INTO phaseledger_leases AS l
        (run_id, owner, host, pid, proc_start, heartbeat_at, expires_at)
    VALUES (%(run_id)s, %(owner)s, %(host)s, %(pid)s, %(proc_start)s, %(now)s, %(now)s + %(lease)s)
    ON CONFLICT (run_id) DO UPDATE SET
        owner = excluded.owner, host = excluded.host, pid = excluded.pid,
        proc_start = excluded.proc_start, heartbeat_at = excluded.heartbeat_at,
        expires_at = excluded.expires_at, claims = l.claims + 1
    WHERE l.owner IS NULL OR l.owner = excluded.owner OR l.expires_at < %(now)s
       OR l.owner = %(takeover)s
""")

_LEASE_ROWS = """
    SELECT run_id, owner, host, pid, proc_start, heartbeat_at, expires_at
    FROM phaseledger_leases WHERE owner IS NOT NULL
"""

LEASE_ROWS = sql(_LEASE_ROWS)

LEASE_ROW = sql(_LEASE_ROWS + " AND run_id = %(run_id)s")

# Who holds the run's lease, read in a transactional step's transaction before its event is
# appended (see phaseledger.store.transactions): no row, or another owner, and nothing commits.
LEASE_OWNER = sql("SELECT owner FROM phaseledger_leases WHERE run_id = %(run_id)s")

RENEW = sql("""
    UPDATE phaseledger_leases SET heartbeat_at = %(now)s, expires_at = %(expires_at)s
    WHERE owner = %(owner)s AND run_id IN (SELECT value FROM json_each(%(run_ids)s))
    RETURNING run_id
""")

RELEASE_RUN = sql("""
    UPDATE phaseledger_leases SET owner = NULL, expires_at = %(now)s, fence = max(fence, %(fence)s)
    WHERE run_id = %(run_id)s AND owner = %(owner)s
""")

# -- the log: counts and retention (tables named by eventsourcing's recorders) ------------

# SQLite numbers notifications by rowid.
COUNT_AFTER = """
    SELECT COUNT(*) AS n FROM {events}
    WHERE rowid > %(after)s AND topic IN (SELECT value FROM json_each(%(topics)s))
"""

# Versions from %(first)s on, below %(below)s (NULL: all of them).
DELETE_EVENTS = """
    DELETE FROM {events}
    WHERE originator_id = %(run_id)s AND originator_version >= %(first)s
      AND (%(below)s IS NULL OR originator_version < %(below)s)
"""

CHANGES = sql("SELECT changes()")

NEWEST_ROW = "SELECT MAX(rowid) FROM {events}"

NEWEST_ROW_OF = "SELECT MAX(rowid) FROM {events} WHERE originator_id = %(run_id)s"

# -- the report view's tracking table (the report SQL itself is in .reports) --------------

CREATE_TRACKING = """
    CREATE TABLE IF NOT EXISTS {tracking} (application_name TEXT, notification_id INTEGER,
        PRIMARY KEY (application_name)) WITHOUT ROWID
"""

# No row back when the position has moved past this one: eventsourcing then raises IntegrityError.
INSERT_TRACKING = """
    INSERT INTO {tracking} VALUES (%(application_name)s, %(notification_id)s)
    ON CONFLICT (application_name) DO UPDATE SET notification_id = %(notification_id)s
    WHERE {tracking}.notification_id < %(notification_id)s RETURNING notification_id
"""

# eventsourcing passes the application name as the only positional parameter.
SELECT_MAX_TRACKING_ID = "SELECT MAX(notification_id) FROM {tracking} WHERE application_name = ?"


def insert_events(cursor: Any, statement: str, stored_events: Iterable[Any]) -> list[int]:
    """Insert stored events with eventsourcing's recorder ``statement`` on a SQLite connection or
    cursor (in its transaction); their row ids, which are their notification ids."""
    ids = []
    for event in stored_events:
        row = cursor.execute(statement, (str(event.originator_id), event.originator_version, event.topic, event.state))
        ids.append(int(row.lastrowid or 0))
    return ids
