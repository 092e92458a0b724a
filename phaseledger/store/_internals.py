"""Every use of a private member of eventsourcing or psycopg_pool, in one module.

The store uses these libraries' public API everywhere else. What follows has no public
equivalent; each use says why it is needed. ``tests/unit/test_faults.py`` checks that each
member is still there, so an upgrade that moves one fails loudly there rather than
quietly changing how the store behaves.
"""

from __future__ import annotations

import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Protocol, cast

from eventsourcing.application import Application
from eventsourcing.persistence import ListenNotifySubscription, Tracking, TrackingRecorder
from eventsourcing.popo import POPOAggregateRecorder
from eventsourcing.postgres import ConnectionPool, PostgresDatastore
from eventsourcing.projection import ApplicationSubscription, EventSourcedProjection, Projection, ProjectionRunner
from psycopg import Connection
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout

OUTAGE_WAIT = 0.25
"""While the server cannot be reached, how long a pool waits for a connection before giving up."""
RECONNECT_DELAYS = (0.1, 1.0)
"""A pool's first and longest waits between attempts to reconnect to a server that went away."""


# -- eventsourcing: tracking rows written in the caller's transaction ---------------------

def insert_tracking(recorder: TrackingRecorder, cursor: Any, tracking: Tracking) -> None:
    """Record ``tracking`` in the transaction of ``cursor``.

    ``TrackingRecorder.insert_tracking`` commits a transaction of its own; the run index
    and the report view write their rows and their position in one transaction, which only
    the recorders' private ``_insert_tracking(cursor, tracking)`` does (it also raises
    ``IntegrityError`` when the position has moved past ``tracking``).
    """
    recorder._insert_tracking(cursor, tracking)  # type: ignore[attr-defined]


def max_tracking_id(recorder: TrackingRecorder, application_name: str, cursor: Any) -> int | None:
    """The position of ``application_name`` read in the transaction of ``cursor``.

    ``TrackingRecorder.max_tracking_id`` reads in a transaction of its own; the report view
    reads its position together with its generation.
    """
    return recorder._max_tracking_id(application_name, cursor)  # type: ignore[attr-defined]


# -- eventsourcing: a projection runner's events, handed over in batches --------------------

def pulled_ahead(subscription: ApplicationSubscription[Any]) -> bool:
    """Whether ``next(subscription)`` returns without waiting: the subscription has pulled
    notifications from the database that it has not yielded yet.

    eventsourcing's subscriptions (PostgreSQL, memory) pull the log in sections, lists of
    up to 500 notifications queued by a thread of their own, but yield one notification at
    a time, with no public way to ask whether the next one is already there: this reads the
    index in the current section and the queue of sections. Another kind of subscription
    says no (its events are then handed over one at a time).
    """
    inner = subscription.subscription
    if not isinstance(inner, ListenNotifySubscription):
        return False
    return inner._notifications_index < len(inner._notifications) or not inner._notifications_queue.empty()


class BatchProjection(Protocol):
    """A projection that applies several events, with the position of the last, in one transaction."""

    batch_size: int
    """The most events handed over at once."""

    def process_events(self, items: Sequence[tuple[Any, Tracking]]) -> None:
        """Apply ``(event, tracking)`` pairs, in log order, with their position, atomically."""


class BatchingLoop:
    """Mixed into an eventsourcing projection runner (before it): its processing thread hands
    the projection every event already pulled from the log, up to ``batch_size``, in one call
    of ``process_events`` instead of one ``process_event`` call per event.

    Batches grow only when events arrive faster than they are applied: an event that finds
    nothing pulled behind it is applied alone, at once. eventsourcing has no public hook
    for this; its runner's thread runs the static method ``_process_events_loop``, which
    this overrides (keeping what it does on errors and on stopping).
    """

    @staticmethod
    def _process_events_loop(subscription: ApplicationSubscription[Any],
                             projection: EventSourcedProjection[Any] | Projection[Any], is_stopping: threading.Event,
                             runner: weakref.ReferenceType[ProjectionRunner[Application[Any], TrackingRecorder]],
                             ) -> None:
        batching = cast(BatchProjection, projection)
        try:
            for item in subscription:
                batch = [item]
                while len(batch) < batching.batch_size and pulled_ahead(subscription):
                    following = next(subscription, None)  # None: stopped meanwhile
                    if following is None:
                        break
                    batch.append(following)
                batching.process_events(batch)
        except BaseException as exc:  # noqa: BLE001 - kept for the runner to raise, as eventsourcing does
            owner = runner()
            if owner is not None:
                owner._thread_error = exc  # run_forever() raises it
            else:  # pragma: no cover - eventsourcing warns the same way
                warnings.warn(f"projection runner deleted before its error could be kept: {exc!r}",
                              RuntimeWarning, stacklevel=2)
        finally:
            is_stopping.set()


PROCESS_LOOP = "_process_events_loop"
"""The private static method of eventsourcing's ``BaseProjectionRunner`` that :class:`BatchingLoop` overrides."""


# -- eventsourcing: deleting the rows of a memory:// store --------------------------------

def delete_memory_events(recorder: POPOAggregateRecorder, originator_id: str, doomed: Any) -> int:
    """Delete the versions of ``originator_id`` for which ``doomed(version)`` is true; return how many.

    eventsourcing's recorders have no delete operation (retention deletes rows with SQL on
    the other backends); the in-memory recorder keeps each stream in ``_stored_events_index``
    under ``_database_lock``. Its notification list keeps the deleted rows (positions are
    ids), so readers of the whole log check that a run still exists.
    """
    with recorder._database_lock:
        index = recorder._stored_events_index.get(originator_id, {})
        versions = [version for version in index if doomed(version)]
        for version in versions:
            del index[version]
    return len(versions)


# -- psycopg_pool: a LIFO pool that is quick through outages ------------------------------

try:  # private to psycopg_pool: without them, a pool's threads start as it opens
    from psycopg_pool.pool import Schedule, ShrinkPool  # the task open() schedules to shrink the pool
except ImportError:  # pragma: no cover
    Schedule = ShrinkPool = None  # type: ignore[assignment,misc]

try:  # private to psycopg_pool: without it, reconnections keep psycopg_pool's own schedule
    from psycopg_pool.base import AttemptWithBackoff
except ImportError:  # pragma: no cover
    _ReconnectBackoff: Any = None
else:
    class _ReconnectBackoff(AttemptWithBackoff):  # type: ignore[no-redef]
        """psycopg_pool's reconnection schedule (1, 2, 4... s, for minutes), started and capped lower."""

        INITIAL_DELAY = RECONNECT_DELAYS[0]

        def update_delay(self, now: float) -> None:
            super().update_delay(now)
            self.delay = min(self.delay, RECONNECT_DELAYS[1])


class LifoConnectionPool(ConnectionPool[Connection[DictRow]]):
    """eventsourcing's connection pool, handing out the most recently returned connection,
    and quick to give up during an outage and to come back after it.

    psycopg_pool hands connections out round robin, waits up to its timeout (the store's
    ``connect_timeout``) for a connection, which eventsourcing's recorders then retry ten
    times, and tries to reconnect after 1, 2, 4... seconds: an operation during an outage
    held a thread for minutes, and the pool came back long after the server. This pool
    tries to reconnect at least every ``RECONNECT_DELAYS[1]`` seconds, and while its last
    connection attempt failed it waits ``OUTAGE_WAIT`` seconds at most, so an operation
    fails within seconds (callers retry with backoff) and succeeds within about a second of
    the server's return. It can also take as its first connection one that the caller made
    and used (:meth:`open_for_first`). psycopg_pool has no public hooks for any of this: the
    private methods it overrides or calls are named below.
    """

    unreachable_since: float | None = None
    """When (``time.monotonic()``) a connection attempt last failed, None once one succeeds."""

    def _get_ready_connection(self, timeout: float | None) -> Connection[DictRow] | None:
        # Called under the pool's lock; psycopg_pool takes from the left of its private
        # deque ``_pool`` and returns to the right, so bring the newest connection left first.
        if len(self._pool) > 1:
            self._pool.rotate(1)
        return super()._get_ready_connection(timeout)

    def getconn(self, timeout: float | None = None) -> Connection[DictRow]:
        # Wait in slices, so that a caller already waiting when the server becomes
        # unreachable gives up then too, not after the whole timeout.
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                return super().getconn(min(deadline - time.monotonic(), OUTAGE_WAIT))
            except PoolTimeout:
                since = self.unreachable_since
                if since is not None:
                    raise PoolTimeout(f"no connection: the server has been unreachable for "
                                      f"{time.monotonic() - since:.1f}s") from None
                if time.monotonic() >= deadline:
                    raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec") from None

    def _connect(self, timeout: float | None = None) -> Connection[DictRow]:
        # The only place that sees each connection attempt succeed or fail.
        try:
            conn = super()._connect(timeout)
        except Exception:
            self.unreachable_since = self.unreachable_since or time.monotonic()
            raise
        self.unreachable_since = None
        return conn

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # Where psycopg_pool starts its reconnection schedule.
        if attempt is None and _ReconnectBackoff is not None:
            attempt = _ReconnectBackoff(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing)

    # -- a first connection made by the caller --

    _first_wanted = False
    """Whether the next :meth:`open` leaves its first connection to :meth:`add_first`."""
    _first_pending = False
    """Whether the open pool counts a connection that :meth:`add_first` is to hand it."""
    _threads_deferred = False
    """Whether the pool's threads wait for its first task (see :meth:`open_for_first`)."""

    def open_for_first(self) -> None:
        """Open the pool without making its first connection: the caller makes it
        (:meth:`connect_first`) and hands it over (:meth:`add_first`).

        The pool's threads (a scheduler and its workers) start with its first task, such as
        making a connection (the pool grows, or replaces one lost or expired). A pool of one
        connection used by one thread at a time may never start them. On a small virtual
        machine, starting the first thread of a process waits for an idle CPU to wake
        (0.5–2 ms measured), which opening a store paid every time.
        """
        self._first_wanted = True
        try:
            self.open(wait=False)
        finally:
            self._first_wanted = False

    def connect_first(self, *, configure: bool = True) -> Connection[DictRow]:
        """A new connection made and configured as the pool makes its own, but in the caller's
        thread: it fails at once with the server's reason, where the pool would retry until its
        timeout. With ``configure=False`` the pool's ``configure`` callback is left out: the
        caller configures the connection itself (in the pipeline of its first query, say)."""
        if configure:
            return self._connect()
        callback, self._configure = self._configure, None  # the pool is not open: no other thread reads it
        try:
            return self._connect()
        finally:
            self._configure = callback

    def add_first(self, conn: Connection[DictRow]) -> None:
        """Give the pool ``conn`` (from :meth:`connect_first`) as the first connection that
        :meth:`open_for_first` left out; closed if the pool counted none."""
        with self._lock:
            pending, self._first_pending = self._first_pending, False
        if pending:
            self._add_to_pool(conn)  # psycopg_pool's: to a waiting client, else idle in the pool
        else:
            conn.close()

    def _start_workers(self) -> None:
        # Called once, by open() under the pool's lock.
        if self._first_wanted and Schedule is not None:
            self._threads_deferred = True
            return
        super()._start_workers()

    def run_task(self, task: Any) -> None:
        self._start_deferred_threads()
        super().run_task(task)

    def schedule_task(self, task: Any, delay: float) -> None:
        self._start_deferred_threads()
        super().schedule_task(task, delay)

    def _start_deferred_threads(self) -> None:
        if not self._threads_deferred:
            return
        with self._lock:  # reentrant: tasks are also run under it; close() takes it to stop the threads
            if not self._threads_deferred or self._closed:
                return
            self._threads_deferred = False
            super()._start_workers()
            # What open() leaves out with the threads: the pool's shrinking, from now.
            super().run_task(Schedule(self, ShrinkPool(self), self.max_idle))

    def _start_initial_tasks(self) -> None:
        # Called once, by open() under the pool's lock, to make the pool's ``_nconns``
        # (min_size) connections in the background: one fewer when the caller makes one.
        if not (self._first_wanted and self._nconns >= 1):
            super()._start_initial_tasks()
            return
        self._first_pending = True
        if self._nconns == 1:  # nothing to make: the shrinking starts with the threads
            return
        self._threads_deferred = False
        super()._start_workers()
        self._nconns -= 1
        try:
            super()._start_initial_tasks()  # the other connections, and the pool's shrinking
        finally:
            self._nconns += 1


LIFO_POOL_OVERRIDES = ("_get_ready_connection", "_connect", "_add_connection", "_start_initial_tasks", "_add_to_pool",
                       "_start_workers")
"""The private psycopg_pool methods :class:`LifoConnectionPool` overrides or calls."""


def use_lifo_pool(datastore: PostgresDatastore) -> None:
    """Make the datastore's pool a :class:`LifoConnectionPool`.

    eventsourcing's datastore builds its pool itself, with no way to name another pool
    class, and the pool's settings (its ``check`` and ``configure`` callbacks among them)
    are private once built: so the pool, not yet opened, changes class in place. A pool of
    another kind, or a psycopg_pool without the methods overridden, is left alone.
    """
    if type(datastore.pool) is ConnectionPool and all(hasattr(ConnectionPool, name) for name in LIFO_POOL_OVERRIDES):
        datastore.pool.__class__ = LifoConnectionPool
