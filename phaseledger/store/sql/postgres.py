"""The SQL of PostgreSQL stores: the append function, run index, leases, worker claims,
retention and log counts.

Three tables sit next to the event store's own, in the store's schema:

``phaseledger_runindex``
    One row per run, derived from the notification log: its status and when it may next
    be driven (``runnable_at``; NULL while only a new event can wake it, and for a run
    with status ``damaged``, a row of which cannot be read). Rows are written in the same
    transaction as the index's tracking position, so the table can always be rebuilt from
    the log and a crash never leaves it behind the position it claims.
``phaseledger_runindex_tracking``
    The notification id the index has reached: eventsourcing's tracking table, under the
    name ``phaseledger.runindex``.
``phaseledger_leases``
    Which process drives which run, until when, and its last heartbeat: a worker's claim
    or any other driver's lease (``engine.run``, ``engine.resume``, the CLI). ``owner``,
    ``host`` and ``pid`` name the driver; ``proc_start`` tells a reused pid from the
    process that took the lease. ``fence`` is the run version the lease was left at: a
    worker claims the run again only once the index has caught up with it, so a run is not
    picked up on an index row older than what its last driver saw.

Statements are templates rendered by :func:`sql` (see :mod:`phaseledger.store.sql`):
``{schema}`` is the store's schema, other fields are tables qualified with it.
"""

from __future__ import annotations

from phaseledger.store.sql import Identifier, Literal, render

TRACKING_TABLE = "phaseledger_runindex_tracking"


def sql(template: str, schema: str, **names: str) -> str:
    """A template of this module for the store's ``schema``; ``names`` are tables or functions
    qualified with it (a :class:`~phaseledger.store.sql.Literal` is quoted as a string)."""
    identifiers: dict[str, Identifier] = {
        key: name if isinstance(name, Literal) else (schema, name) for key, name in names.items()
    }
    return render(template, schema=schema, **identifiers)


# -- the append function of OneTripRecorder -----------------------------------------------

APPEND_ARGS = "text[], bigint[], text[], bytea[], text"

# {channel}: the NOTIFY channel, a Literal.
CREATE_APPEND = """
    CREATE OR REPLACE FUNCTION {function}(
        ids text[], versions bigint[], topics text[], states bytea[], lock_timeout text)
    RETURNS SETOF bigint LANGUAGE plpgsql AS $body$
    BEGIN
    PERFORM set_config('lock_timeout', lock_timeout, true);
    LOCK TABLE {events} IN EXCLUSIVE MODE;
    PERFORM pg_notify({channel}, '');
    RETURN QUERY INSERT INTO {events} (originator_id, originator_version, topic, state)
    SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id;
    END $body$
"""

# Positional parameters, the cheapest to bind on the hot path. Arrays for a batch; for one
# event (the common case) scalars, wrapped in arrays by the server: psycopg adapts them
# several times faster than one-element lists.
APPEND_BATCH = "SELECT * FROM {function}(%s::text[], %s::bigint[], %s::text[], %s::bytea[], %s::text)"
APPEND_ONE = "SELECT * FROM {function}(ARRAY[%s::text], ARRAY[%s::bigint], ARRAY[%s::text], ARRAY[%s::bytea], %s::text)"

# The append function called with nothing to append, in a transaction rolled back, in one
# round trip (no parameters: the simple protocol): a new server backend compiles the function
# and plans its statements, and nothing is written or notified. A table lock held elsewhere
# is not waited for. {empty} and {lock_timeout} are Literals.
WARM_UP = (
    "BEGIN; SELECT FROM {function}({empty}::text[], {empty}::bigint[], {empty}::text[], {empty}::bytea[], "
    "{lock_timeout}); ROLLBACK"
)

# Whether the tables and the append function of this release are there.
IS_SET_UP = """
    SELECT to_regprocedure(%(function)s) IS NOT NULL
       AND to_regclass(%(events)s) IS NOT NULL AND to_regclass(%(snapshots)s) IS NOT NULL AS ready
"""

# The session setting eventsourcing's pool sets on each new connection (a Literal: ``'5000ms'``).
SET_IDLE_IN_TRANSACTION_TIMEOUT = "SET idle_in_transaction_session_timeout = {value}"

CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"

ADVISORY_LOCK = "SELECT pg_advisory_lock(%(key)s)"
ADVISORY_UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"

# -- run index and leases -----------------------------------------------------------------

CREATE = (
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

# Serialises table creation when several workers start on a fresh schema at once (the
# first statement of the creating transaction; %(key)s cannot be a parameter there).
CREATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext({key}))"

# One indexer at a time; the others skip their pass (the index is shared).
TRY_INDEX_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext(%(key)s)) AS locked"

# Writes of rows without a position (damaged runs, rechecked runs) wait for the pass in progress.
WAIT_INDEX_LOCK = "SELECT pg_advisory_xact_lock(hashtext(%(key)s)), true AS locked"

UPSERT_ROW = """
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

DELETE_ROWS = "DELETE FROM {schema}.phaseledger_runindex WHERE run_id = ANY(%(run_ids)s)"

SELECT_ROWS = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM {schema}.phaseledger_runindex
    ORDER BY run_id
"""

SELECT_DAMAGED = "SELECT run_id FROM {schema}.phaseledger_runindex WHERE status = %(status)s ORDER BY run_id"

SELECT_ROW = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM {schema}.phaseledger_runindex
    WHERE run_id = %(run_id)s
"""

NEXT_WAKE = """
    SELECT min(runnable_at) AS next_wake FROM {schema}.phaseledger_runindex
    WHERE runnable_at IS NOT NULL AND workflow_key = ANY(%(keys)s)
"""

RUNNABLE = """
    SELECT run_id, version FROM {schema}.phaseledger_runindex
    WHERE runnable_at <= %(now)s AND workflow_key = ANY(%(keys)s)
    ORDER BY runnable_at
    LIMIT %(limit)s
"""

CHANGED = """
    SELECT run_id, workflow, workflow_version, status, runnable_at, version, updated_at
    FROM {schema}.phaseledger_runindex
    WHERE updated_at > %(since)s AND workflow_key = ANY(%(keys)s)
    ORDER BY updated_at
    LIMIT %(limit)s
"""

RESET = (
    "DELETE FROM {schema}.phaseledger_runindex",
    "DELETE FROM {schema}.phaseledger_runindex_tracking WHERE application_name = %(name)s",
)

# -- worker claims: a worker's claim is the run's lease ----------------------------------

# Claim up to %(limit)s runs that are runnable now and not leased (or whose lease expired
# and whose index row caught up with the fence). SKIP LOCKED lets concurrent workers take
# different runs; the conditional upsert is the final arbiter when two claims meet.
CLAIM = """
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

RENEW = """
    UPDATE {schema}.phaseledger_leases
    SET expires_at = now() + make_interval(secs => %(lease)s), heartbeat_at = now()
    WHERE owner = %(owner)s AND run_id = ANY(%(run_ids)s)
    RETURNING run_id
"""

CANCELLED = """
    SELECT run_id FROM {schema}.phaseledger_runindex
    WHERE run_id = ANY(%(run_ids)s) AND status = 'cancelled'
"""

# hold > 0 keeps the run from every worker for that long (after an error).
RELEASE = """
    UPDATE {schema}.phaseledger_leases
    SET owner = NULL, expires_at = now() + make_interval(secs => %(hold)s),
        fence = GREATEST(fence, %(fence)s)
    WHERE run_id = %(run_id)s AND owner = %(owner)s
"""

SELECT_LEASES = """
    SELECT run_id, owner, expires_at, fence, claims FROM {schema}.phaseledger_leases ORDER BY run_id
"""

# -- run leases of every driver (engine.run / resume / retry / fork, the CLI, workers) ----
# A driver takes a run's lease when it is free, released, expired, already its own, or
# held by %(takeover)s: an owner found dead on this host, or the holder a driver steals
# from (compare-and-set on the owner, so two stealers cannot both win).

ACQUIRE = """
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

# ACQUIRE, and when it does not take the lease, who holds it (one round trip; the holder as
# the statement's snapshot shows it, owner NULL when released or when there is no row).
ACQUIRE_OR_HOLDER = "WITH taken AS (" + ACQUIRE + """ RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM taken) AS taken, l.owner, l.host, l.pid, l.proc_start,
           l.heartbeat_at, l.expires_at, now() AS db_now
    FROM (SELECT 1) AS one LEFT JOIN {schema}.phaseledger_leases AS l ON l.run_id = %(run_id)s
"""

LEASE_ROWS = """
    SELECT run_id, owner, host, pid, proc_start, heartbeat_at, expires_at, now() AS db_now
    FROM {schema}.phaseledger_leases
    WHERE owner IS NOT NULL AND (%(run_ids)s::text[] IS NULL OR run_id = ANY(%(run_ids)s))
"""

# Who holds the run's lease, read in a transactional step's transaction before its event is
# appended (see phaseledger.store.transactions). FOR SHARE: a take-over (an UPDATE of the row)
# waits until the step's transaction ends, so the lease cannot change hands before it commits.
LEASE_OWNER = "SELECT owner FROM {schema}.phaseledger_leases WHERE run_id = %(run_id)s FOR SHARE"

RELEASE_RUN = """
    UPDATE {schema}.phaseledger_leases
    SET owner = NULL, expires_at = now(), fence = GREATEST(fence, %(fence)s)
    WHERE run_id = %(run_id)s AND owner = %(owner)s
"""

# -- the log: counts and retention (tables named by eventsourcing's recorders) ------------

COUNT_AFTER = "SELECT COUNT(*) AS n FROM {events} WHERE notification_id > %(after)s AND topic = ANY(%(topics)s)"

# Versions from %(first)s on, below %(below)s (NULL: all of them).
DELETE_EVENTS = """
    DELETE FROM {events}
    WHERE originator_id = %(run_id)s AND originator_version >= %(first)s
      AND (%(below)s::bigint IS NULL OR originator_version < %(below)s)
"""
