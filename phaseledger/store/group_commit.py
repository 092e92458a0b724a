"""Group commit for a SQLite store: the appends of runs driven together share one commit.

SQLite takes one writer at a time and syncs the file on every commit, so runs appending
step after step in one process queue for commits. :class:`GroupCommitter` gathers the
appends that arrive while a commit is under way and writes them all in the next
transaction, each inside a savepoint of its own: an append whose version another writer
took first (an integrity error) is rolled back alone and fails alone, the others commit.
Every append's waiter is told only after the commit returned, so each is as durable as if
it had committed alone; what the runs share is the sync.

It runs in the store's writer thread, one transaction per turn of that thread, so other
work handed to the thread (a transactional step) takes its turn between two batches.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from phaseledger.store.sql import sqlite

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent

Pending = tuple[Sequence["StoredEvent"], "asyncio.Future[list[int]]", asyncio.AbstractEventLoop]


class GroupCommitter:
    """Appends to one SQLite file, batched into shared commits in the writer thread (see the module)."""

    def __init__(self, path: str, insert_statement: str, lock_timeout: float, writer: Executor) -> None:
        self.path = path
        self.insert_statement = insert_statement
        self.lock_timeout = lock_timeout
        self._writer = writer
        self._queue: list[Pending] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._conn: sqlite3.Connection | None = None
        self.batches = 0
        """How many transactions it has committed (or tried): for tests and benchmarks."""

    async def append(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Append the events in the next shared transaction; their notification ids once it committed.

        Raises what the database raised for this append (an integrity error: another writer
        took one of these versions first), or for the whole transaction.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        with self._lock:
            self._queue.append((stored_events, future, loop))
            schedule, self._scheduled = not self._scheduled, True
        if schedule:
            self._writer.submit(self._turn)
        return await future

    def _turn(self) -> None:
        """One turn of the writer thread: commit what is queued, and come back if more came meanwhile."""
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
            try:
                if batch:
                    self._commit(batch)
            finally:
                with self._lock:
                    again = self._scheduled = bool(self._queue)
            if not again:
                return
            try:
                self._writer.submit(self._turn)  # after the other work handed to the thread meanwhile
                return
            except RuntimeError:  # the store is closing: commit what is queued now
                continue

    def _commit(self, batch: list[Pending]) -> None:
        outcomes: list[list[int] | BaseException] = []
        self.batches += 1
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            for stored_events, _, _ in batch:
                conn.execute("SAVEPOINT append")
                try:
                    ids = sqlite.insert_events(conn, self.insert_statement, stored_events)
                except sqlite3.IntegrityError as exc:
                    conn.execute("ROLLBACK TO append")
                    outcomes.append(exc)
                else:
                    outcomes.append(ids)
                conn.execute("RELEASE append")
            conn.commit()
        except BaseException as exc:  # noqa: BLE001 - the transaction failed: every append in it failed with it
            self._abandon()
            outcomes = [exc] * len(batch)
        for (_, future, loop), outcome in zip(batch, outcomes, strict=True):
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # its loop is closed: nobody waits for this append any more
                pass

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # Python's defaults, as eventsourcing's connections have them (the same sync on
            # commit); autocommit mode, so the BEGIN above is the only one.
            self._conn = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None,
                                         check_same_thread=False, uri=True)
        return self._conn

    def _abandon(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                if conn.in_transaction:
                    conn.rollback()
            except sqlite3.Error:
                pass
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close the connection (call once the writer thread has finished its work)."""
        self._abandon()


def _settle(future: asyncio.Future[list[int]], outcome: Any) -> None:
    if future.done():  # the waiter was cancelled
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
