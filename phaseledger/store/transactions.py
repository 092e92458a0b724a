"""Transactional steps: a step's writes to the store's own database and its event, in one transaction.

A transactional step (``ctx.transaction``, see :mod:`phaseledger.engine.transaction`) hands
the user's function a connection to the database the store lives in, inside a transaction
that also appends the step's recorded event. After a crash both are there or neither is:
the user's rows are written exactly once, together with the record that the step ran.

One function per database, each called in a thread (SQLite: the store's writer thread):

1. begin (SQLite: ``BEGIN IMMEDIATE``, so the file's write lock is held from the start and
   the transaction cannot fail later for a writer that committed meanwhile);
2. ``work(connection)``: the user's writes; whatever it raises rolls everything back and
   propagates as it is (it is the step's failure, not the store's);
3. ``finish(result)``: the events that record the result, encoded for the store (cipher
   and compression included); a result that cannot be recorded rolls back too;
4. the fence: when the run is driven under a lease, the lease row must still name its
   ``owner`` (PostgreSQL locks the row ``FOR SHARE``, so a take-over waits for the commit);
   otherwise :class:`~phaseledger.LeaseLost` and nothing commits;
5. the events' insert, as the store's appends do it (a version another writer took first
   is a :class:`~phaseledger.ConcurrencyConflict`), then the commit.

Database errors of steps 1, 4 and 5 are translated like every store operation's; those of
``work`` are not.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import tuple_row

from phaseledger.domain.errors import ConcurrencyConflict, LeaseLost
from phaseledger.store.faults import store_errors
from phaseledger.store.sql import postgres as pg
from phaseledger.store.sql import sqlite

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent

    from phaseledger.store.eventstore import StoreURL

T = TypeVar("T")

Work = Callable[[Any], T]
"""The user's function, given the connection of the transaction."""
Finish = Callable[[T], Sequence["StoredEvent"]]
"""What records ``work``'s result: the encoded events to append with it."""


def _appending(url: StoreURL, run_id: str, stored: Sequence[StoredEvent]) -> store_errors:
    version = stored[0].originator_version if stored else None
    return store_errors(url, f"append events of run {run_id!r}", conflict=lambda: ConcurrencyConflict(run_id, version))


def sqlite_transact(datastore: Any, recorder: Any, url: StoreURL, run_id: str, owner: str | None,
                    work: Work[T], finish: Finish[T]) -> tuple[T, list[int]]:
    """Run the transaction on a SQLite store (see the module); ``work`` gets a :class:`sqlite3.Connection`."""
    with contextlib.ExitStack() as held:
        with store_errors(url, f"begin a transaction for run {run_id!r}"):
            # The pool's writer connection: this process's other writers wait for it, as SQLite's would.
            connection = held.enter_context(datastore.get_connection(commit=True))
            cursor: sqlite3.Cursor = connection.cursor().sqlite_cursor  # eventsourcing's cursor wraps the driver's
            held.callback(cursor.close)
            conn = cursor.connection
            cursor.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            if not conn.in_transaction:
                raise RuntimeError(
                    "the function of a transactional step committed or rolled back its transaction itself: "
                    "leave that to phaseledger, which commits the step's writes together with its record"
                )
            stored = finish(result)
            with _appending(url, run_id, stored):
                if owner is not None:
                    cursor.execute(sqlite.LEASE_OWNER, {"run_id": run_id})
                    row = cursor.fetchone()
                    if row is None or row[0] != owner:
                        raise LeaseLost(run_id)
                ids = sqlite.insert_events(cursor, recorder.insert_events_statement, stored)
                conn.commit()
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
            raise
        return result, ids
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: ExitStack may swallow)


def postgres_transact(datastore: Any, recorder: Any, url: StoreURL, run_id: str, owner: str | None,
                      work: Work[T], finish: Finish[T]) -> tuple[T, list[int]]:
    """Run the transaction on a PostgreSQL store (see the module); ``work`` gets a :class:`psycopg.Connection`
    (its cursors return rows as dicts)."""
    with contextlib.ExitStack() as held:
        with store_errors(url, f"begin a transaction for run {run_id!r}"):
            # The pool itself, not the datastore's get_connection, which would turn the user's
            # psycopg errors into eventsourcing's.
            datastore.pool.open(wait=False)
            conn: psycopg.Connection[Any] = held.enter_context(datastore.pool.connection())
            transaction = conn.transaction()  # ended below, where its commit's errors are translated
            transaction.__enter__()
        committed = False
        try:
            result = work(conn)
            stored = finish(result)
            with _appending(url, run_id, stored):
                with conn.cursor(binary=True, row_factory=tuple_row) as cursor:
                    if owner is not None:
                        cursor.execute(pg.sql(pg.LEASE_OWNER, datastore.schema), {"run_id": run_id})
                        row = cursor.fetchone()
                        if row is None or row[0] != owner:
                            raise LeaseLost(run_id)
                    cursor.execute(*recorder.append_call(stored))  # the store's own append, in this transaction
                    ids = [int(r[0]) for r in cursor.fetchall()]
                committed = True
                transaction.__exit__(None, None, None)  # COMMIT
        except BaseException as exc:
            if not committed:
                with contextlib.suppress(Exception):  # the connection may be gone: the server rolls back then
                    transaction.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return result, ids
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: ExitStack may swallow)
