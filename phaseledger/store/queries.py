"""Every SQL statement of the run index and of worker leases, in one place.

Three tables sit next to the event store's own (in the store's schema on PostgreSQL, in
the same file on SQLite):

``phaseledger_runindex``
    One row per run, derived from the notification log: its status and when it may next
    be driven (``runnable_at``; NULL while only a new event can wake it, and for a run
    with status ``damaged``, a row of which cannot be read). Rows are written
    in the same transaction as the index's tracking position, so the table can always be
    rebuilt from the log and a crash never leaves it behind the position it claims.
``phaseledger_runindex_tracking`` (PostgreSQL) / ``tracking`` (SQLite)
    The notification id the index has reached: eventsourcing's tracking table, under the
    name ``phaseledger.runindex``.
``phaseledger_leases``
    Which process drives which run, until when, and its last heartbeat: a worker's claim
    or any other driver's lease (``engine.run``, ``engine.resume``, the CLI). ``owner``,
    ``host`` and ``pid`` name the driver; ``proc_start`` tells a reused pid from the
    process that took the lease. ``fence`` is the run version the lease was left at: a
    worker claims the run again only once the index has caught up with it, so a run is not
    picked up on an index row older than what its last driver saw (PostgreSQL; SQLite's one
    worker keeps its fences in memory).

Named parameters (``%(name)s`` for psycopg, ``:name`` for sqlite3) keep the statements
readable. ``{schema}`` is filled in with a quoted identifier.
"""

from __future__ import annotations

INDEX_TABLE = "phaseledger_runindex"
LEASES_TABLE = "phaseledger_leases"
TRACKING_TABLE = "phaseledger_runindex_tracking"  # PostgreSQL; SQLite has one shared "tracking" table
TRACKING_NAME = "phaseledger.runindex"

# -- PostgreSQL ------------------------------------------------------------------------

PG_CREATE = (
    """
    CREATE TABLE IF NOT EXISTS {schema}.phaseledger_runindex (
        run_id           text PRIMARY KEY,
        workflow         text NOT NULL,
        workflow_version integer NOT NULL,
        workflow_key     text NOT NULL,        -- "name@version", what a worker can run
        status           text NOT NULL,
        runnable_at      timestamptz,          -- NULL: waits for an event (signal, cancel)
        version          bigint NOT NULL,      -- the run version this row reflects
        updated_at       timestamptz NOT NULL
    )
    """,
    """
    CREATE INDEX IF NOT EXISTS phaseledger_runindex_runnable
        ON {schema}.phaseledger_runindex (runnable_at) WHERE runnable_at IS NOT NULL
    """,
    """
    CREATE TABLE IF NOT EXISTS {schema}.phaseledger_leases (
        run_id      text PRIMARY KEY,
        owner       text,                      -- NULL once released
        expires_at  timestamptz NOT NULL,      -- after this any worker may claim the run
        fence       bigint NOT NULL,           -- claim only when the index row reached this version
        claims      integer NOT NULL DEFAULT 1,
        host        text,                      -- the driver: host, process id and its start time
        pid         integer,
        proc_start  double precision,
        heartbeat_at timestamptz
    )
    """,
    # Stores made before leases named their driver get the columns added.
    "ALTER TABLE {schema}.phaseledger_leases ADD COLUMN IF NOT EXISTS host text",
    "ALTER TABLE {schema}.phaseledger_leases ADD COLUMN IF NOT EXISTS pid integer",
    "ALTER TABLE {schema}.phaseledger_leases ADD COLUMN IF NOT EXISTS proc_start double precision",
    "ALTER TABLE {schema}.phaseledger_leases ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz",
)

# Serialises table creation when several workers start on a fresh schema at once.
PG_CREATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%(key)s))"

# One indexer at a time; the others skip their pass (the index is shared).
PG_TRY_INDEX_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext(%(key)s)) AS locked"

# Writes of rows without a position (damaged runs, rechecked runs) wait for the pass in progress.
PG_WAIT_INDEX_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%(key)s)), true AS locked"

PG_UPSERT_ROW = """
    INSERT INTO {schema}.phaseledger_runindex AS i
        (run_id, workflow, workflow_version, workflow_key, status, runnable_at, version, updated_at)
    VALUES
        (%(run_id)s, %(workflow)s, %(workflow_version)s, %(workflow_key)s, %(status)s,
         %(runnable_at)s, %(version)s, %(updated_at)s)
    ON CONFLICT (run_id) DO UPDATE SET
        status = excluded.status, runnable_at = excluded.runnable_at,
        version = excluded.version, updated_at = excluded.updated_at,
        -- unknown ("?") in the row of a run found damaged before it was ever indexed
        workflow = excluded.workflow, workflow_version = excluded.workflow_version,
        workflow_key = excluded.workflow_key
    WHERE i.version <= excluded.version
"""

PG_DELETE_ROWS = "DELETE FROM {schema}.phaseledger_runindex WHERE run_id = ANY(%(run_ids)s)"

PG_SELECT_ROWS = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM {schema}.phaseledger_runindex
    ORDER BY run_id
"""

PG_SELECT_DAMAGED = "SELECT run_id FROM {schema}.phaseledger_runindex WHERE status = %(status)s ORDER BY run_id"

PG_SELECT_ROW = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM {schema}.phaseledger_runindex
    WHERE run_id = %(run_id)s
"""

PG_NEXT_WAKE = """
    SELECT min(runnable_at) AS next_wake FROM {schema}.phaseledger_runindex
    WHERE runnable_at IS NOT NULL AND workflow_key = ANY(%(keys)s)
"""

PG_RUNNABLE = """
    SELECT run_id, version FROM {schema}.phaseledger_runindex
    WHERE runnable_at <= %(now)s AND workflow_key = ANY(%(keys)s)
    ORDER BY runnable_at
    LIMIT %(limit)s
"""

PG_RESET = (
    "DELETE FROM {schema}.phaseledger_runindex",
    "DELETE FROM {schema}.phaseledger_runindex_tracking WHERE application_name = %(name)s",
)

# Claim up to %(limit)s runs that are runnable now and not leased (or whose lease expired
# and whose index row caught up with the fence). SKIP LOCKED lets concurrent workers take
# different runs; the conditional upsert is the final arbiter when two claims meet.
PG_CLAIM = """
    WITH candidates AS (
        SELECT i.run_id, i.version
        FROM {schema}.phaseledger_runindex AS i
        LEFT JOIN {schema}.phaseledger_leases AS l ON l.run_id = i.run_id
        WHERE i.runnable_at <= now()
          AND i.workflow_key = ANY(%(keys)s)
          AND (l.run_id IS NULL OR (l.expires_at < now() AND i.version >= l.fence))
        ORDER BY i.runnable_at
        LIMIT %(limit)s
        FOR UPDATE OF i SKIP LOCKED
    )
    INSERT INTO {schema}.phaseledger_leases AS l
        (run_id, owner, host, pid, proc_start, heartbeat_at, expires_at, fence)
    SELECT run_id, %(owner)s, %(host)s, %(pid)s, %(proc_start)s, now(),
           now() + make_interval(secs => %(lease)s), version
    FROM candidates
    ON CONFLICT (run_id) DO UPDATE SET
        owner = excluded.owner, host = excluded.host, pid = excluded.pid,
        proc_start = excluded.proc_start, heartbeat_at = excluded.heartbeat_at,
        expires_at = excluded.expires_at, fence = excluded.fence, claims = l.claims + 1
    WHERE l.expires_at < now() AND excluded.fence >= l.fence
    RETURNING l.run_id, l.fence AS version
"""

PG_RENEW = """
    UPDATE {schema}.phaseledger_leases
    SET expires_at = now() + make_interval(secs => %(lease)s), heartbeat_at = now()
    WHERE owner = %(owner)s AND run_id = ANY(%(run_ids)s)
    RETURNING run_id
"""

PG_CANCELLED = """
    SELECT run_id FROM {schema}.phaseledger_runindex
    WHERE run_id = ANY(%(run_ids)s) AND status = 'cancelled'
"""

# hold > 0 keeps the run from every worker for that long (after an error).
PG_RELEASE = """
    UPDATE {schema}.phaseledger_leases
    SET owner = NULL, expires_at = now() + make_interval(secs => %(hold)s),
        fence = GREATEST(fence, %(fence)s)
    WHERE run_id = %(run_id)s AND owner = %(owner)s
"""

PG_SELECT_LEASES = """
    SELECT run_id, owner, expires_at, fence, claims FROM {schema}.phaseledger_leases ORDER BY run_id
"""

# -- run leases of every driver (engine.run / resume / retry / fork, the CLI, workers) ----
# A driver takes a run's lease when it is free, released, expired, already its own, or
# held by ``%(takeover)s``: an owner found dead on this host, or the holder a driver
# steals from (compare-and-set on the owner, so two stealers cannot both win).

PG_ACQUIRE = """
    INSERT INTO {schema}.phaseledger_leases AS l
        (run_id, owner, host, pid, proc_start, heartbeat_at, expires_at, fence)
    VALUES (%(run_id)s, %(owner)s, %(host)s, %(pid)s, %(proc_start)s, now(),
            now() + make_interval(secs => %(lease)s), 0)
    ON CONFLICT (run_id) DO UPDATE SET
        owner = excluded.owner, host = excluded.host, pid = excluded.pid,
        proc_start = excluded.proc_start, heartbeat_at = excluded.heartbeat_at,
        expires_at = excluded.expires_at, claims = l.claims + 1
    WHERE l.owner IS NULL OR l.owner = excluded.owner OR l.expires_at < now()
       OR l.owner = %(takeover)s
"""

PG_LEASE_ROWS = """
    SELECT run_id, owner, host, pid, proc_start, heartbeat_at, expires_at, now() AS db_now
    FROM {schema}.phaseledger_leases
    WHERE owner IS NOT NULL AND (%(run_ids)s::text[] IS NULL OR run_id = ANY(%(run_ids)s))
"""

PG_RELEASE_RUN = """
    UPDATE {schema}.phaseledger_leases
    SET owner = NULL, expires_at = now(), fence = GREATEST(fence, %(fence)s)
    WHERE run_id = %(run_id)s AND owner = %(owner)s
"""

# -- SQLite (one worker process per store; the leases table holds every driver's lease) ----

SQLITE_CREATE = (
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
)

SQLITE_ACQUIRE = """
    INSERT INTO phaseledger_leases AS l
        (run_id, owner, host, pid, proc_start, heartbeat_at, expires_at)
    VALUES (:run_id, :owner, :host, :pid, :proc_start, :now, :now + :lease)
    ON CONFLICT (run_id) DO UPDATE SET
        owner = excluded.owner, host = excluded.host, pid = excluded.pid,
        proc_start = excluded.proc_start, heartbeat_at = excluded.heartbeat_at,
        expires_at = excluded.expires_at, claims = l.claims + 1
    WHERE l.owner IS NULL OR l.owner = excluded.owner OR l.expires_at < :now
       OR l.owner = :takeover
"""

SQLITE_LEASE_ROWS = """
    SELECT run_id, owner, host, pid, proc_start, heartbeat_at, expires_at
    FROM phaseledger_leases WHERE owner IS NOT NULL
"""

SQLITE_LEASE_ROW = SQLITE_LEASE_ROWS + " AND run_id = :run_id"

# {ids} is a list of "?" placeholders, one per run id.
SQLITE_RENEW = """
    UPDATE phaseledger_leases SET heartbeat_at = ?, expires_at = ?
    WHERE owner = ? AND run_id IN ({ids})
    RETURNING run_id
"""

SQLITE_RELEASE_RUN = """
    UPDATE phaseledger_leases SET owner = NULL, expires_at = :now, fence = max(fence, :fence)
    WHERE run_id = :run_id AND owner = :owner
"""

SQLITE_UPSERT_ROW = """
    INSERT INTO phaseledger_runindex
        (run_id, workflow, workflow_version, workflow_key, status, runnable_at, version, updated_at)
    VALUES
        (:run_id, :workflow, :workflow_version, :workflow_key, :status, :runnable_at, :version, :updated_at)
    ON CONFLICT (run_id) DO UPDATE SET
        status = excluded.status, runnable_at = excluded.runnable_at,
        version = excluded.version, updated_at = excluded.updated_at,
        -- unknown ("?") in the row of a run found damaged before it was ever indexed
        workflow = excluded.workflow, workflow_version = excluded.workflow_version,
        workflow_key = excluded.workflow_key
    WHERE phaseledger_runindex.version <= excluded.version
"""

SQLITE_DELETE_ROW = "DELETE FROM phaseledger_runindex WHERE run_id = :run_id"

SQLITE_SELECT_ROWS = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM phaseledger_runindex ORDER BY run_id
"""

SQLITE_SELECT_DAMAGED = "SELECT run_id FROM phaseledger_runindex WHERE status = :status ORDER BY run_id"

SQLITE_SELECT_ROW = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM phaseledger_runindex WHERE run_id = :run_id
"""

# {keys} is a list of "?" placeholders, one per workflow key.
SQLITE_RUNNABLE = """
    SELECT run_id, version FROM phaseledger_runindex
    WHERE runnable_at <= ? AND workflow_key IN ({keys})
    ORDER BY runnable_at
    LIMIT ?
"""

SQLITE_NEXT_WAKE = """
    SELECT min(runnable_at) FROM phaseledger_runindex
    WHERE runnable_at IS NOT NULL AND workflow_key IN ({keys})
"""

SQLITE_RESET = (
    "DELETE FROM phaseledger_runindex",
    "DELETE FROM tracking WHERE application_name = :name",
)
