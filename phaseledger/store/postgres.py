"""eventsourcing's PostgreSQL recorder, appending each batch of events with one prepared statement.

eventsourcing 9.5 appends in a pipeline: BEGIN, ``SET LOCAL lock_timeout``, ``LOCK TABLE
... IN EXCLUSIVE MODE`` (so notification ids are committed in order), ``NOTIFY`` (for
subscribers), the INSERT, a sync to surface conflicts, then COMMIT in a second round trip;
and it packs the rows into a composite-type array. A journaled step appends one event,
so those round trips and that work are most of what a step costs on PostgreSQL.

:class:`OneTripRecorder` does the same work inside a PL/pgSQL function created with the
tables, called as one prepared statement in autocommit mode: one round trip, one implicit
transaction, parameters sent in binary, nothing parsed or planned again. The function
takes the same lock, sends the same notification and writes the same rows as
eventsourcing, so everything that reads the store (repositories, notification logs,
subscriptions, projections) works unchanged. A conflicting version still raises
eventsourcing's ``IntegrityError`` and writes nothing.

The connection pool hands out the most recently returned connection (LIFO) rather than
psycopg_pool's round robin: a run appending step after step then talks to one warm server
backend instead of waking each pooled backend in turn, which costs about half a commit
per append on a small machine. Idle connections stay at the cold end, where the pool
closes them first. Through an outage the pool stops waiting for connections within a
quarter of a second and reconnects within about a second of the server's return (see
:class:`~phaseledger.store._internals.LifoConnectionPool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Self

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError, StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, retry
from psycopg.rows import Row
from psycopg.sql import SQL, Composed

from phaseledger.store._internals import LifoConnectionPool, use_lifo_pool
from phaseledger.store.faults import DATABASE_ERRORS, connection_lost
from phaseledger.store.postgres_prepared import PreparedAppend, prepare_statements
from phaseledger.store.sql import Literal, quote
from phaseledger.store.sql import postgres as pg

__all__ = [
    "AutoPreparingCursor", "LoopAppender", "OneTripRecorder", "SnapshotRecorder", "StoreDatastore", "StoreFactory",
    "append_function", "create_statement", "use_lifo_pool",
]

STORE_VERSION = 1
"""The version of a store's append function, part of its name (see :func:`append_function`): a
store that has the function of this version needs no set-up when opened."""
_SETUP_LOCK = 0x70686173656C6467  # pg_advisory_lock key held while a store is set up


def append_function(events_table: str) -> str:
    """The name of the append function of a store whose events table is ``events_table``, in
    this release: ``<events_table>_append_v<STORE_VERSION>``.

    The version is in the name, not in a comment, so the set-up check finds it with one
    lookup in the server's catalog cache; reading a comment costs a new server backend
    about half a millisecond more on every open. A release that changes the function
    names a new one and leaves the earlier release's function to that release's processes.
    """
    return f"{events_table}_append_v{STORE_VERSION}"


def create_statement(text: str) -> Composed:
    """A rendered statement in the form eventsourcing's PostgreSQL recorders keep the statements
    that create their tables in (``sql_create_statements`` is a list of :class:`~psycopg.sql.Composed`)."""
    return Composed([SQL(text)])


class AutoPreparingCursor(psycopg.Cursor[Row]):
    """The cursor of a store's pooled connections: a statement is prepared once it has run
    psycopg's ``prepare_threshold`` times (5) on its connection, also where the caller asks
    for ``prepare=True``.

    Preparing a statement takes a round trip of its own before its first run. eventsourcing
    prepares each of its reads at once, so a new process's first reads of a run (resuming
    it, showing it) each waited for the server twice. A statement that runs again and
    again is prepared all the same, from its fifth run.
    """

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,  # psycopg's types vary by release
                binary: bool | None = None) -> Self:
        """Run ``query``; ``prepare=True`` is read as psycopg's default (prepared from the threshold)."""
        return super().execute(query, params, prepare=None if prepare else prepare, binary=binary)


class OneTripRecorder(PostgresApplicationRecorder):
    """A PostgreSQL application recorder whose appends take one round trip (see the module)."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._function_name = append_function(self.events_table_name)
        names = {"function": self._function_name, "events": self.events_table_name}
        # CREATE OR REPLACE, so a store set up before gets this one.
        self.sql_create_statements.append(
            create_statement(self._sql(pg.CREATE_APPEND, channel=Literal(self.channel_name), **names)))
        self._calls = {True: self._sql(pg.APPEND_ONE, **names).encode(), False: self._sql(pg.APPEND_BATCH, **names).encode()}
        self.warm_up = self._sql(pg.WARM_UP, empty=Literal("{}"), lock_timeout=Literal("1ms"), **names).encode()
        """Calls the function with nothing to append, in a transaction rolled back (see :class:`LoopAppender`)."""
        self.prepare_appends = prepare_statements(self._calls[True], self._calls[False])
        """Prepares the appends of :class:`~phaseledger.store.postgres_prepared.PreparedAppend`."""
        self.lock_timeout = f"{int(self.datastore.lock_timeout)}s"
        """How long an append waits for the table lock (the datastore's ``lock_timeout``)."""

    def _sql(self, template: str, **names: str) -> str:
        return pg.sql(template, self.datastore.schema, **names)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Append the events in one transaction, in one round trip; return their notification ids."""
        if not stored_events:
            return None
        # The pool's connections are in autocommit mode: the call is its own transaction,
        # and a failed one (a version conflict) leaves the connection idle and usable.
        with self.datastore.get_connection() as conn, conn.cursor(binary=True) as cursor:
            cursor.execute(*self.append_call(stored_events))
            ids = [row[self._function_name] for row in cursor.fetchall()]
        if len(ids) != len(stored_events):
            raise OperationalError(f"appended {len(stored_events)} events but got {len(ids)} ids")
        return ids

    def append_call(self, stored_events: Sequence[StoredEvent]) -> tuple[bytes, tuple[Any, ...]]:
        """The statement (rendered once) and parameters that append these events."""
        single = len(stored_events) == 1
        statement = self._calls[single]
        if single:
            event = stored_events[0]
            return statement, (str(event.originator_id), event.originator_version, event.topic, event.state,
                               self.lock_timeout)
        return statement, (
            [str(event.originator_id) for event in stored_events],
            [event.originator_version for event in stored_events],
            [event.topic for event in stored_events],
            [event.state for event in stored_events],
            self.lock_timeout,
        )


class StoreDatastore(PostgresDatastore):
    """eventsourcing's PostgreSQL datastore, reading the composite types of its recorders when
    a recorder first needs them rather than when recorders are built.

    eventsourcing reads the ``stored_event`` type from the catalog as each recorder is built,
    so opening a store waited for a pooled connection and a catalog query (the slowest
    query of a new server backend: most of what opening a store cost). Only
    :class:`SnapshotRecorder` sends that type (the store's appends pass arrays), and it
    calls :meth:`load_type_adapters` before it does.
    """

    types_deferred = True

    def register_type_adapters(self) -> None:
        """Nothing until :meth:`load_type_adapters` was called (then: read the types not read yet)."""
        if not self.types_deferred:
            super().register_type_adapters()

    def load_type_adapters(self) -> None:
        """Read the recorders' composite types from the catalog (once; later calls do nothing)."""
        self.types_deferred = False
        super().register_type_adapters()


class SnapshotRecorder(PostgresAggregateRecorder):
    """eventsourcing's PostgreSQL aggregate recorder (the store's snapshots), reading its
    composite type before its first insert (see :class:`StoreDatastore`)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Insert as eventsourcing does, once the type it sends the rows as is known."""
        datastore = self.datastore
        if isinstance(datastore, StoreDatastore) and datastore.types_deferred:
            datastore.load_type_adapters()
        return super().insert_events(stored_events, **kwargs)


class StoreFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory for phaseledger stores.

    It gives the datastore a LIFO pool and :class:`OneTripRecorder` appends, and sets the
    store up only when it needs it: one query tells whether the tables and the append
    function of this release are there (the common case, which then runs no DDL at all).
    Otherwise it creates the schema, the tables and the function under an advisory lock,
    because PostgreSQL refuses concurrent DDL on the same catalog rows ("tuple concurrently
    updated") that processes opening one new store would send.
    """

    application_recorder_class = OneTripRecorder
    aggregate_recorder_class = SnapshotRecorder

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        use_lifo_pool(self.datastore)
        if type(self.datastore) is PostgresDatastore:  # built by eventsourcing, which names no other class
            self.datastore.__class__ = StoreDatastore
        pool_kwargs = self.datastore.pool.kwargs
        if isinstance(pool_kwargs, dict):  # libpq itself would wait for an unreachable host forever
            timeout = self.env.get(self.POSTGRES_CONNECT_TIMEOUT)
            pool_kwargs.setdefault("connect_timeout", int(float(timeout)) if timeout else 10)
            pool_kwargs.setdefault("cursor_factory", AutoPreparingCursor)
        self._set_up = not super().env_create_table()
        if self._set_up:
            return
        pool = self.datastore.pool
        try:
            if isinstance(pool, LifoConnectionPool):
                # The check runs on the pool's first connection, made here: it fails at once
                # with the server's reason when the store is unreachable (the pool would retry
                # until its timeout), and the pool keeps it instead of making one more.
                pipelined = psycopg.Pipeline.is_supported()  # libpq 14 and later
                conn = pool.connect_first(configure=not pipelined)
                try:
                    # In a pipeline, the session's settings and the check take one round trip,
                    # which overlaps starting the pool's threads.
                    if pipelined:
                        conn.autocommit = True  # as the callback would; no round trip outside a pipeline
                    with conn.pipeline() if pipelined else contextlib.nullcontext():
                        if pipelined:
                            self._send_settings(conn)
                        check = self._send_check(conn)
                        pool.open_for_first()
                        self._set_up = self._checked(check)
                except BaseException:
                    conn.close()
                    raise
                pool.add_first(conn)
                if not self._set_up:
                    self._set_up = self._own_connection(self._set_up_store)
            else:
                pool.open(wait=False)
                self._set_up = self._own_connection(lambda own: self._is_set_up(own) or self._set_up_store(own))
        except BaseException:
            self.datastore.close()
            raise

    def env_create_table(self) -> bool:
        """Whether recorders create their tables: never, the factory has seen to them."""
        return not self._set_up

    def _names(self) -> tuple[str, str, str]:
        prefix = self.env.name.lower() or "stored"
        return f"{prefix}_events", f"{prefix}_snapshots", append_function(f"{prefix}_events")

    def _own_connection(self, use: Callable[[psycopg.Connection[Any]], bool]) -> bool:
        """``use`` a connection of its own, outside the pool: the set-up holds a lock on it while
        the recorders create their tables on the pool's."""
        with psycopg.connect(**self._connect_kwargs()) as conn:
            return use(conn)

    def _connect_kwargs(self) -> dict[str, Any]:
        pool = self.datastore.pool
        kwargs = dict(pool.kwargs() if callable(pool.kwargs) else pool.kwargs or {})  # psycopg_pool takes either
        if pool.get_password_func:
            kwargs["password"] = pool.get_password_func()
        timeout = self.env.get(self.POSTGRES_CONNECT_TIMEOUT)
        return {**kwargs, "autocommit": True, "connect_timeout": int(float(timeout)) if timeout else 10}

    def _send_settings(self, conn: psycopg.Connection[Any]) -> None:
        """Send the session setting that the pool's ``configure`` callback (eventsourcing's) sets
        on each new connection, without waiting for it (in the connection's pipeline)."""
        timeout = int(self.datastore.idle_in_transaction_session_timeout * 1000)
        conn.execute(pg.sql(pg.SET_IDLE_IN_TRANSACTION_TIMEOUT, self.datastore.schema, value=Literal(f"{timeout}ms")))

    def _is_set_up(self, conn: psycopg.Connection[Any]) -> bool:
        return self._checked(self._send_check(conn))

    def _send_check(self, conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
        """Send the query that tells whether the store is set up (its result is read from the cursor)."""
        events, snapshots, function = self._names()
        schema = self.datastore.schema
        return conn.execute(pg.IS_SET_UP, {  # the to_reg* functions take quoted names
            "function": f"{quote((schema, function))}({pg.APPEND_ARGS})",
            "events": quote((schema, events)), "snapshots": quote((schema, snapshots)),
        })

    @staticmethod
    def _checked(check: psycopg.Cursor[Any]) -> bool:
        row = check.fetchone()
        return bool(row and row["ready"])

    def _set_up_store(self, conn: psycopg.Connection[Any]) -> bool:
        events, snapshots, _ = self._names()
        conn.execute(pg.ADVISORY_LOCK, {"key": _SETUP_LOCK})
        try:
            if not self._is_set_up(conn):  # unless another process did it while we waited
                conn.execute(pg.sql(pg.CREATE_SCHEMA, self.datastore.schema))
                OneTripRecorder(self.datastore, events_table_name=events).create_table()
                self.aggregate_recorder_class(self.datastore, events_table_name=snapshots).create_table()
        finally:
            conn.execute(pg.ADVISORY_UNLOCK, {"key": _SETUP_LOCK})
        return True


HOLD_LOOP = 0.002
"""Seconds an append of a run driven alone waits for its reply on the event loop's thread
before it waits through the loop (see :meth:`LoopAppender.append`)."""

RETRY_SECONDS = 5.0
"""How long a :class:`LoopAppender` leaves the synchronous path alone after failing to connect."""


class LoopAppender:
    """Appends through a psycopg ``AsyncConnection`` on the running event loop.

    Handing a blocking append to a worker thread and back costs about as much as the
    append's own round trip on a small machine (two thread wake-ups per step). This
    appender sends the same prepared call as :class:`OneTripRecorder` from the event loop
    itself, on one connection bound to that loop, through libpq's own calls (see
    :mod:`~phaseledger.store.postgres_prepared`). Concurrent appends from one loop queue on
    that connection, as they would on the table lock anyway.

    :meth:`append` returns ``None`` when it cannot be used: while the loop's connection is
    being made (the first append of a loop starts that in the background rather than wait
    for it, and a new connection calls the append function once with nothing to append
    before it is used: see :meth:`_warm_up`), when another live loop owns the connection, or
    when the connection failed. The caller then takes the recorder's synchronous path,
    which retries.
    """

    def __init__(self, recorder: OneTripRecorder, conninfo: str) -> None:
        self.recorder = recorder
        self.conninfo = conninfo
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._prepared: PreparedAppend | None = None
        self._in_use: asyncio.Lock | None = None
        """Held by each append: appends from several tasks of the loop take turns on the connection."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        """After a failed connection attempt, when (monotonic) to try again."""

    async def append(self, stored_events: Sequence[StoredEvent], *, alone: bool = False) -> list[int] | None:
        """Append in one transaction; the notification ids, or None (use the sync path).

        ``alone``: the append is a run's driven alone in this process, whose loop has nothing
        else to do until it returns; its reply is then waited for on the loop's thread (up
        to :data:`HOLD_LOOP`), not through the loop's selector.
        """
        conn, prepared, in_use = self._connection(), self._prepared, self._in_use
        if conn is None or prepared is None or in_use is None:
            return None
        try:
            async with in_use:
                if self._prepared is not prepared:  # closed while this append queued
                    return None
                ids = await prepared(stored_events, hold=HOLD_LOOP if alone else 0.0)
        except Exception as exc:  # the caller translates what it raises (a conflict among them)
            if connection_lost(exc):
                self._close(prepared)
                return None
            raise
        except BaseException:
            self._close(prepared)  # cancelled mid-call: the connection's state is unknown
            raise
        if len(ids) != len(stored_events):
            raise PersistenceError(f"appended {len(stored_events)} events but got {len(ids)} ids")
        return ids

    def start(self) -> None:
        """Start making the running loop's connection in the background (if it is not made yet)."""
        self._connection()

    async def connected(self) -> bool:
        """Wait for this loop's connection (starting it if needed); whether there is one."""
        if self._connection() is None and self._connecting is not None and self._loop is asyncio.get_running_loop():
            await asyncio.shield(self._connecting)
        return self._connection() is not None

    def _connection(self) -> psycopg.AsyncConnection[Any] | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                return None  # another live loop (another thread) owns it
            self.close()
            if time.monotonic() < self._retry_at:
                return None
            self._loop = loop
            self._connecting = loop.create_task(self._connect())
        return self._conn

    async def _connect(self) -> None:
        task = asyncio.current_task()
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            await self._warm_up(conn)
            await conn.execute(self.recorder.prepare_appends, prepare=False)
        except BaseException as exc:
            if conn is not None:
                conn.pgconn.finish()
            if not isinstance(exc, DATABASE_ERRORS):
                raise
            if self._connecting is task:  # an append after RETRY_SECONDS tries again
                self._loop = self._connecting = None
                self._retry_at = time.monotonic() + RETRY_SECONDS
            return
        if self._connecting is task:
            self._prepared, self._in_use = PreparedAppend(conn, self.recorder.lock_timeout), asyncio.Lock()
            self._conn, self._connecting = conn, None
        else:  # closed meanwhile
            conn.pgconn.finish()

    async def _warm_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Have the new connection's server backend compile the append function and plan its
        statements, as its first call does, with ``OneTripRecorder.warm_up``: the first append
        (a resumed run's marker) then costs what later ones do, not four or five times more.
        It writes and notifies nothing, and gives up at once on a table lock held elsewhere."""
        try:
            await conn.execute(self.recorder.warm_up, prepare=False)
        except psycopg.Error:
            if conn.closed:
                raise
            await conn.rollback()  # the table lock was held elsewhere: warm enough

    def _close(self, prepared: PreparedAppend) -> None:
        """Close the connection ``prepared`` appends on, unless another replaced it meanwhile."""
        if self._prepared is prepared:
            self.close()

    def close(self) -> None:
        """Close the connection (synchronously: its loop may be gone)."""
        conn, self._conn, self._loop, self._connecting = self._conn, None, None, None
        self._prepared = self._in_use = None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()
