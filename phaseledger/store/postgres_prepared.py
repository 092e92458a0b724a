"""A step's append on the event loop's PostgreSQL connection, through libpq's own calls.

A journaled step appends one event. Through psycopg's asynchronous cursor that call cost
more CPU than the append's round trip: a cursor and its adapters built per call, the query
looked up and its parameters dumped, a wait generator and a timer per wait (≈ 250 µs of
CPU on a slow 2-core machine, against ≈ 140 µs for the calls below, measured). :class:`PreparedAppend`
sends the same call through :mod:`psycopg.pq`, psycopg's public libpq interface, on the
connection psycopg made: a statement prepared once per connection, its five parameters
encoded here (binary for the version and the state), the result read when the socket is
readable. The function called, and so the transaction, the table lock, the notification
and the rows, are those of :class:`~phaseledger.store.postgres.OneTripRecorder`'s appends.

An error the server returns is raised as the psycopg exception of its SQLSTATE (a version
conflict as ``UniqueViolation``, a lock timeout as ``LockNotAvailable``), as psycopg's
cursor raises it; a connection that fails raises ``psycopg.OperationalError``.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import errors, pq

STATEMENT = b"phaseledger_append_one"
"""The name of the prepared statement on the loop's connection (psycopg's own are ``_pg3_*``)."""

_FORMATS = [pq.Format.TEXT, pq.Format.BINARY, pq.Format.TEXT, pq.Format.BINARY, pq.Format.TEXT]
_INT8 = struct.Struct(">q")


def prepare_statement(call: bytes) -> bytes:
    """``PREPARE`` of the one-event append ``call`` (its ``%s`` placeholders become ``$1``..``$5``)."""
    head, *rest = call.split(b"%s")
    return b"PREPARE " + STATEMENT + b" AS " + head + b"".join(b"$%d" % n + part for n, part in enumerate(rest, 1))


class PreparedAppend:
    """Appends one event on ``conn`` with the statement :func:`prepare_statement` prepared there.

    Calls must not overlap each other or any other use of the connection: the caller
    serialises them (see :class:`~phaseledger.store.postgres.LoopAppender`).
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], lock_timeout: str) -> None:
        self.pgconn = conn.pgconn
        self._encoding = conn.info.encoding  # the connection's, as psycopg encodes text parameters
        self._lock_timeout = lock_timeout.encode(self._encoding)

    async def __call__(self, event: StoredEvent) -> list[int]:
        """Append ``event`` in one transaction; its notification id (as a one-item list)."""
        pgconn = self.pgconn
        pgconn.send_query_prepared(
            STATEMENT,
            [str(event.originator_id).encode(self._encoding), _INT8.pack(event.originator_version),
             event.topic.encode(self._encoding), event.state, self._lock_timeout],
            param_formats=_FORMATS, result_format=pq.Format.BINARY,
        )
        loop = asyncio.get_running_loop()
        while pgconn.flush():  # what the socket did not take at once
            await _ready(pgconn.socket, loop.add_writer, loop.remove_writer)
        ids: list[int] = []
        error: psycopg.Error | None = None
        while True:
            while pgconn.is_busy():
                await _ready(pgconn.socket, loop.add_reader, loop.remove_reader)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            if result.status == pq.ExecStatus.TUPLES_OK:
                ids.extend(int.from_bytes(result.get_value(row, 0) or b"", "big", signed=True)
                           for row in range(result.ntuples))
            elif error is None:
                error = _error(result)
        if error is not None:
            raise error
        return ids


async def _ready(fd: int, add: Callable[..., None], remove: Callable[[int], object]) -> None:
    """Wait until the socket ``fd`` is ready (``add``: the loop's ``add_reader`` or ``add_writer``)."""
    ready = asyncio.get_running_loop().create_future()
    add(fd, _set, ready)
    try:
        await ready
    finally:
        remove(fd)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _error(result: pq.abc.PGresult) -> psycopg.Error:
    """The psycopg exception for an error ``result``, by its SQLSTATE, as psycopg's cursor raises it."""
    sqlstate = result.error_field(pq.DiagnosticField.SQLSTATE)
    message = result.error_message.decode("utf-8", "replace").strip() or "the append failed"
    try:
        kind = errors.lookup(sqlstate.decode()) if sqlstate else psycopg.DatabaseError
    except KeyError:
        kind = psycopg.DatabaseError
    return kind(message)
