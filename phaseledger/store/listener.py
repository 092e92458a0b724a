"""Wake an idle worker as soon as new events are committed, instead of at its next poll.

On PostgreSQL every append sends ``NOTIFY <channel>`` in its transaction (eventsourcing's
recorder does, and so does :class:`~phaseledger.store.postgres.OneTripRecorder`), so the
notification is delivered when, and only when, the events are committed. An
:class:`AppendListener` keeps one dedicated connection that ``LISTEN``\\ s on that channel
and calls a callback for each notification; the worker's callback sets the event its loop
waits on together with the poll timeout, so a burst of notifications costs one catch-up
of the run index, not one each.

Polling stays the fallback: a lost notification or a dropped connection costs latency
(up to ``poll_interval``), never a missed run, because the run index follows the log
itself. The listener reconnects with exponential backoff (capped, jittered) and wakes the
worker after every (re)connection, since notifications sent while it was away are gone.
It logs a warning when its connection is lost and a line when it listens again, not
each failed attempt in between.

The channel is named after the events table, not the schema, so stores in other schemas
of the same database wake the worker too: such a wake-up finds nothing new and costs one
index read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql

from phaseledger.store.faults import DATABASE_ERRORS, Outage, jittered, translate

log = logging.getLogger("phaseledger.worker")


class AppendListener:
    """A ``LISTEN`` connection that calls ``on_notify`` for each notification of new events.

    Start it with :meth:`start` on the loop that should be woken and end it with
    :meth:`close`. It never raises: connection errors are retried after about
    ``retry_initial`` seconds, doubling up to ``retry_max`` (less a random part, so that
    workers do not reconnect in step), and logged once per outage. ``store`` names the
    store in messages (its URL without password).
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_notify: Callable[[], None],
        *,
        retry_initial: float = 0.2,
        retry_max: float = 10.0,
        store: str = "PostgreSQL",
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_notify = on_notify
        self.retry_initial = retry_initial
        """Seconds before the first reconnection attempt after an error."""
        self.retry_max = retry_max
        """The longest wait between reconnection attempts."""
        self.received = 0
        """Notifications received since the listener was built."""
        self.connections = 0
        """Connections that reached ``LISTEN`` (1 + the reconnections)."""
        self.backend_pid: int | None = None
        """The server process id of the current connection, None while disconnected."""
        self.listening = asyncio.Event()
        """Set while the connection is listening."""
        self.store = store
        self.outage = Outage(log, "LISTEN connection")
        """Whether the connection is lost; logs each loss and each return once."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect and listen in a task of the running loop (a no-op if already started)."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._listen_forever())

    async def close(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            except DATABASE_ERRORS as exc:
                self._lost(exc)
            else:
                try:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.backend_pid = conn.info.backend_pid
                    self.connections += 1
                    self.listening.set()
                    self.outage.ok()
                    failures = 0
                    self.on_notify()  # what was committed while not listening: catch up once
                    async for _ in conn.notifies():
                        self.received += 1
                        self.on_notify()
                except DATABASE_ERRORS as exc:
                    self._lost(exc)
                finally:
                    self.listening.clear()
                    self.backend_pid = None
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            await asyncio.sleep(jittered(min(self.retry_initial * 2**failures, self.retry_max)))
            failures += 1

    def _lost(self, exc: BaseException) -> None:
        self.outage.failed(translate(exc, self.store, "listen for new events") or exc,
                           then="polling only until it reconnects")
