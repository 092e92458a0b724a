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

A resume takes its run's lease on the same connection, by the same rule
(:meth:`InlineAppender.lease_transaction`; see
:meth:`phaseledger.store.leasebook.SQLiteLeaseBook.acquire_on_loop`), committed without a
sync (:func:`lease_writes`).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from phaseledger.store.sql import sqlite

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent


@contextmanager
def lease_writes(cursor: Any, close: Callable[[], object]) -> Iterator[None]:
    """Within the block, commits of the cursor's SQLite connection do not wait for the disk.

    A lease row says which live process drives a run; it need not outlive the machine.
    Written to the write-ahead log, it survives its process (the OS keeps the file's
    pages), and it reaches the disk with the next commit that syncs the log: the run's own
    next event. Only a machine that loses power before then loses it, and that kills every
    driver too: the lease falls back to one held by a process that is gone, taken over at
    once. So taking, renewing and releasing a lease waits for no sync of its own, and the
    events of a run sync as before. Should the connection's setting fail to come back, it
    is closed (``close``): it never commits an event unsynced.
    """
    cursor.execute("PRAGMA synchronous")
    level = int(cursor.fetchone()[0])
    cursor.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        try:
            cursor.execute(f"PRAGMA synchronous = {level}")
        except Exception:
            close()
            raise


class LockBusy(Exception):
    """The file's write lock, or the appender, is taken right now: nothing was written."""


class InlineAppender:
    """One connection to a SQLite store's file for appends made on the caller's thread (see the module)."""

    def __init__(self, path: str, insert_statement: str) -> None:
        self.path = path
        self.insert_statement = insert_statement
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._broken = False

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
            if not self._begin(conn):
                return None
            try:
                ids = sqlite.insert_events(conn, self.insert_statement, stored_events)
                conn.commit()
            except BaseException:
                self._roll_back(conn)
                raise
            return ids
        finally:
            self._done()

    @contextmanager
    def lease_transaction(self) -> Iterator[sqlite3.Connection]:
        """A transaction that writes lease rows on this connection, committed without a sync
        (:func:`lease_writes`), begun only when the file's write lock (and this appender) is
        free right now, else :class:`LockBusy` and nothing is written. It commits when the
        block ends and rolls back when it raises."""
        if not self._lock.acquire(blocking=False):
            raise LockBusy
        try:
            if self._closed:
                raise LockBusy
            conn = self._connection()
            with lease_writes(conn.cursor(), self._drop):
                if not self._begin(conn):
                    raise LockBusy
                try:
                    yield conn
                    conn.commit()
                except BaseException:
                    self._roll_back(conn)
                    raise
        finally:
            self._done()

    def _begin(self, conn: sqlite3.Connection) -> bool:
        """``BEGIN IMMEDIATE``: False when the write lock is taken right now and nothing began.
        Another error is raised, and the connection is closed once the caller is done."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return False
            self._broken = True
            raise
        return True

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """Roll back after a failed statement or commit; a connection that cannot is closed once
        the caller is done."""
        try:
            if conn.in_transaction:
                conn.rollback()
        except sqlite3.Error:
            self._broken = True

    def _done(self) -> None:
        """End a use of the connection: close it if it broke, and let the next use in."""
        try:
            if self._broken:
                self._drop()
        finally:
            self._lock.release()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Python's defaults, as eventsourcing's connections have them (so the same sync on
            # commit); autocommit mode, so the BEGIN above is the only one; no busy wait.
            self._conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False,
                                         uri=True)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._broken = self._conn, None, False
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
