"""Appends on the event loop's PostgreSQL connection, through libpq's own calls.

A journaled step appends one event. Through psycopg's asynchronous cursor that call cost
more CPU than the append's round trip: a cursor and its adapters built per call, the query
looked up and its parameters dumped, a wait generator and a timer per wait (≈ 250 µs of
CPU on a slow 2-core machine, against ≈ 140 µs for the calls below, measured).
:class:`PreparedAppend` sends the same call through :mod:`psycopg.pq`, psycopg's public
libpq interface, on the connection psycopg made: a statement prepared once per
connection, its five parameters encoded here (binary for the version and the state), the
result read when the socket is readable. A batch (several events committed together, as
with ``checkpoint_every_n_steps`` above 1) goes the same way, as arrays in PostgreSQL's
binary format. A run driven alone (nothing else for its loop to do) waits for the reply
on the loop's thread for a short while before it waits through the loop: registering the
socket with the loop's selector for each wait and a task switch cost CPU (37 against 15 µs
per append, measured) and, on a machine whose commits are fast, wall time. The function called, and so the transaction, the
table lock, the notification and the rows, are those of
:class:`~phaseledger.store.postgres.OneTripRecorder`'s appends.

An error the server returns is raised as the psycopg exception of its SQLSTATE (a version
conflict as ``UniqueViolation``, a lock timeout as ``LockNotAvailable``), as psycopg's
cursor raises it; a connection that fails raises ``psycopg.OperationalError``.
"""

from __future__ import annotations

import asyncio
import select
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import errors, pq

ONE = b"phaseledger_append_one"
BATCH = b"phaseledger_append_batch"
"""The names of the prepared statements on the loop's connection (psycopg's own are ``_pg3_*``)."""

_ONE_FORMATS = [pq.Format.TEXT, pq.Format.BINARY, pq.Format.TEXT, pq.Format.BINARY, pq.Format.TEXT]
_BATCH_FORMATS = [pq.Format.BINARY] * 4 + [pq.Format.TEXT]
_INT4, _INT8 = struct.Struct(">i"), struct.Struct(">q")
_ARRAY_HEAD = struct.Struct(">iiiii")  # dimensions, has nulls, element type, length, lower bound
_TEXT_OID, _INT8_OID, _BYTEA_OID = 25, 20, 17


def prepare_statements(one: bytes, batch: bytes) -> bytes:
    """``PREPARE`` of the append calls ``one`` (one event) and ``batch`` (arrays), whose ``%s``
    placeholders become ``$1``..``$5``: one query of two statements."""
    return _prepare(ONE, one) + b"; " + _prepare(BATCH, batch)


def _prepare(name: bytes, call: bytes) -> bytes:
    head, *rest = call.split(b"%s")
    return b"PREPARE " + name + b" AS " + head + b"".join(b"$%d" % n + part for n, part in enumerate(rest, 1))


def _array(oid: int, items: list[bytes]) -> bytes:
    """A one-dimensional array without nulls in PostgreSQL's binary format."""
    parts = [_ARRAY_HEAD.pack(1, 0, oid, len(items), 1)]
    for item in items:
        parts += (_INT4.pack(len(item)), item)
    return b"".join(parts)


class PreparedAppend:
    """Appends events on ``conn`` with the statements :func:`prepare_statements` prepared there.

    Calls must not overlap each other or any other use of the connection: the caller
    serialises them (see :class:`~phaseledger.store.postgres.LoopAppender`).
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], lock_timeout: str) -> None:
        self.pgconn = conn.pgconn
        self._encoding = conn.info.encoding  # the connection's, as psycopg encodes text parameters
        self._lock_timeout = lock_timeout.encode(self._encoding)
        # poll, not select: a socket's number may be past select's limit (1024). Where there
        # is no poll (Windows), replies are always waited for through the loop.
        self._replied = select.poll() if hasattr(select, "poll") else None
        if self._replied is not None:
            self._replied.register(self.pgconn.socket, select.POLLIN)

    async def __call__(self, events: Sequence[StoredEvent], *, hold: float = 0.0) -> list[int]:
        """Append ``events`` (at least one) in one transaction; their notification ids, in order.

        With ``hold`` (seconds), the reply is first waited for on the calling thread, holding
        the event loop for up to that long, and only then through the loop: for a run driven
        alone, whose loop has nothing else to do meanwhile (see :class:`LoopAppender`).
        """
        pgconn, encoding = self.pgconn, self._encoding
        if len(events) == 1:  # a step's append: scalars, wrapped in arrays by the server
            event = events[0]
            pgconn.send_query_prepared(
                ONE,
                [str(event.originator_id).encode(encoding), _INT8.pack(event.originator_version),
                 event.topic.encode(encoding), event.state, self._lock_timeout],
                param_formats=_ONE_FORMATS, result_format=pq.Format.BINARY,
            )
        else:
            pgconn.send_query_prepared(
                BATCH,
                [_array(_TEXT_OID, [str(event.originator_id).encode(encoding) for event in events]),
                 _array(_INT8_OID, [_INT8.pack(event.originator_version) for event in events]),
                 _array(_TEXT_OID, [event.topic.encode(encoding) for event in events]),
                 _array(_BYTEA_OID, [event.state for event in events]),
                 self._lock_timeout],
                param_formats=_BATCH_FORMATS, result_format=pq.Format.BINARY,
            )
        loop = asyncio.get_running_loop()
        while pgconn.flush():  # what the socket did not take at once
            await _ready(pgconn.socket, loop.add_writer, loop.remove_writer)
        ids: list[int] = []
        error: psycopg.Error | None = None
        until = time.monotonic() + hold if hold > 0 else 0.0
        while True:
            while pgconn.is_busy():
                if not (until and self._replied_before(until)):
                    until = 0.0
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

    def _replied_before(self, until: float) -> bool:
        """Whether the socket becomes readable before ``until`` (monotonic), waiting on this thread."""
        left = until - time.monotonic()
        return left > 0 and self._replied is not None and bool(self._replied.poll(left * 1000))


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
