"""Appends to a SQLite store from the calling thread, when the file's write lock is free.

SQLite has no asynchronous driver, so a store on an event loop has appended in its one
writer thread. Handing each append to that thread and back costs two thread wake-ups,
about half of a commit on a small machine, on every committed step. An append is one
short transaction (the inserts, then the commit's sync), so :class:`InlineAppender`
makes it on the caller's own thread instead, on a connection of its own whose busy
timeout is zero: ``BEGIN IMMEDIATE`` either takes the write lock at once or fails at
once. When the lock is held (another process or thread is writing, a transactional step
is open), or another thread is using this appender, it writes nothing and says so; the
caller then hands the append to the writer thread, which waits for the lock as before.
The event loop therefore waits for a commit's sync, never for another writer. The store
uses it only for a run driven alone in its process (see
:meth:`phaseledger.Store.append_async`): while several are, the writer thread lets the
others go on during a commit.

The guarantee is the writer thread's: the events are committed (synced as the store's
connections sync) before :meth:`InlineAppender.append` returns, in one transaction, with
the statement of eventsourcing's recorder, whose row id is the notification id.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from phaseledger.store.sql import sqlite

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent


class InlineAppender:
    """One connection to a SQLite store's file for appends made on the caller's thread (see the module)."""

    def __init__(self, path: str, insert_statement: str) -> None:
        self.path = path
        self.insert_statement = insert_statement
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def append(self, stored_events: Sequence[StoredEvent]) -> list[int] | None:
        """Insert and commit the events in one transaction: their notification ids, or None
        when the write lock (or this appender) is taken right now and nothing was written.

        Raises the driver's error otherwise (an integrity error: another writer took one of
        these versions first); the transaction is then rolled back.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._closed:
                return None
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    return None
                self._drop()
                raise
            try:
                ids = sqlite.insert_events(conn, self.insert_statement, stored_events)
                conn.commit()
            except BaseException:
                self._abandon(conn)
                raise
            return ids
        finally:
            self._lock.release()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Python's defaults, as eventsourcing's connections have them (so the same sync on
            # commit); autocommit mode, so the BEGIN above is the only one; no busy wait.
            self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False,
                                         uri=True)
        return self._conn

    def _abandon(self, conn: sqlite3.Connection) -> None:
        """Roll back after a failed insert or commit; a connection that cannot is closed."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close the connection; later appends write nothing (they go to the writer thread)."""
        with self._lock:
            self._closed = True
            self._drop()
