"""Where the errors of the databases under a store become phaseledger's errors: one place.

Every store operation runs its database calls inside :class:`store_errors`, or is a method
decorated with :func:`guarded`: the event store, the run index, leases, retention, time
travel, the report projections, and the drivers' appends. Whatever the layers underneath
raise (eventsourcing's ``PersistenceError`` family and its closed-pool error, ``psycopg.Error``
and so ``psycopg_pool.PoolTimeout``, ``sqlite3.Error``) comes out as one of:

- :class:`~phaseledger.ConcurrencyConflict`, for an integrity error where the operation
  says that this means another writer appended first;
- :class:`~phaseledger.StoreUnavailable`, naming the store (its URL, password hidden),
  the operation, the driver's reason and what to do. Its ``transient`` is True when
  waiting may help: a lost connection, a server that is down, restarting or refusing
  connections, a pool with no connection to hand out, a lock timeout, a SQLite file
  locked past its timeout, a disk I/O error.

Errors phaseledger raised itself pass through unchanged, and so do errors that do not
come from a database (bugs show as what they are).

The callers that carry on through outages (workers, drivers, report followers) wait with
a :class:`Backoff` and report to an :class:`Outage`, which logs one warning when an outage
starts and one line when it ends, however many attempts fail in between.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg_pool
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
)

from phaseledger.domain.errors import PhaseledgerError, StoreUnavailable

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")

_CLOSED = (psycopg_pool.PoolClosed, ConnectionPoolClosedError)  # the store was closed: waiting will not help
DATABASE_ERRORS = (PersistenceError, psycopg.Error, sqlite3.Error, ConnectionPoolClosedError)
"""What the layers under a store raise (for handlers that retry rather than translate)."""
_INTEGRITY = (IntegrityError, psycopg.IntegrityError, sqlite3.IntegrityError)
_NOT_TRANSIENT = _CLOSED
_TRANSIENT = (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
# sqlite3.OperationalError also covers SQL mistakes ("no such table"); these are the waits.
_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open", "disk is full")


def _root(exc: BaseException) -> BaseException:
    """The driver's own error under eventsourcing's wrappers (``raise X from driver_error``)."""
    seen = {id(exc)}
    while isinstance(exc.__cause__, DATABASE_ERRORS) and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).rstrip(".") or "no message"
    return f"{type(exc).__name__}: {text}"


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by waiting (see the module)."""
    root = _root(exc)
    if isinstance(root, _NOT_TRANSIENT) or isinstance(exc, _NOT_TRANSIENT):
        return False
    if isinstance(root, sqlite3.Error):
        return isinstance(root, sqlite3.OperationalError) and any(w in str(root).lower() for w in _SQLITE_TRANSIENT)
    return isinstance(root, _TRANSIENT) or isinstance(exc, _TRANSIENT)


def connection_lost(exc: BaseException) -> bool:
    """Whether a database error says the connection itself is gone (it is not worth using again)."""
    return isinstance(_root(exc), _TRANSIENT)


def _advice(root: BaseException, transient: bool, opening: bool) -> str:
    sqlite = isinstance(root, sqlite3.Error)
    retried = "" if opening else "workers and drivers retry this with backoff; "
    if sqlite and "locked" in str(root).lower():
        return ("Another connection held the SQLite file's write lock longer than the lock timeout "
                f"(?lock_timeout= in the store URL); {retried}try again once it is released")
    if transient and sqlite:
        advice = f"{retried}if it lasts, check the disk and the database file"
    elif transient:
        advice = f"{retried}if it lasts, check that the database server is up and reachable at this address"
    else:
        return "This is not a lost connection: check the store's URL, schema and permissions, and the database's log"
    return advice[0].upper() + advice[1:]


def _store_name(store: Any) -> str:
    """A store's name for messages: a :class:`StoreURL` (or anything with ``redacted``) or a string."""
    return str(getattr(store, "redacted", store))


def translate(exc: BaseException, store: Any, operation: str, *,
              conflict: Callable[[], PhaseledgerError] | None = None,
              any_error: bool = False) -> PhaseledgerError | None:
    """The phaseledger error for an error raised by ``operation`` on ``store``.

    None when ``exc`` is not a database error (it should propagate as it is) or is
    already a phaseledger error. ``conflict`` builds the error an integrity error means
    for this operation (None: it is a :class:`StoreUnavailable` like the others);
    ``any_error`` translates every exception (opening a store: whatever fails, it
    cannot be opened).
    """
    if isinstance(exc, PhaseledgerError) or not isinstance(exc, Exception):
        return None
    if not isinstance(exc, DATABASE_ERRORS) and not any_error:
        return None
    root = _root(exc)
    if conflict is not None and isinstance(root, _INTEGRITY):
        return conflict()
    transient = is_transient(exc)
    name, reason = _store_name(store), _reason(root)
    end = " " if reason.endswith(("?", "!")) else ". "
    message = f"cannot {operation} ({name}): {reason}{end}{_advice(root, transient, any_error)}"
    return StoreUnavailable(message, store=name, operation=operation, reason=reason, transient=transient)


class store_errors:  # lower case: used like a function, ``with store_errors(...)``
    """A context manager that raises the phaseledger error of a database error (see :func:`translate`)."""

    __slots__ = ("any_error", "conflict", "operation", "store")

    def __init__(self, store: Any, operation: str, *, conflict: Callable[[], PhaseledgerError] | None = None,
                 any_error: bool = False) -> None:
        self.store = store
        self.operation = operation
        self.conflict = conflict
        self.any_error = any_error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Never swallows: an error is either raised translated or propagates as it is.
        if exc is None:
            return
        error = translate(exc, self.store, self.operation, conflict=self.conflict, any_error=self.any_error)
        if error is not None:
            raise error from exc


def guarded(operation: str) -> Callable[[Callable[Concatenate[S, P], R]], Callable[Concatenate[S, P], R]]:
    """Translate the database errors of a method of a :class:`Store` or of an object with a ``store``.

    ``operation`` says what the method does, in messages; ``{name}`` fields are filled in
    from the call's arguments (only when an error is translated, so a call costs nothing
    more). Generator methods must use :class:`store_errors` instead.
    """

    def decorate(fn: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(self, *args, **kwargs)
            except Exception as exc:
                store = getattr(self, "url", None) or self.store.url
                error = translate(exc, store, _describe(operation, signature, self, args, kwargs))
                if error is None:
                    raise
                raise error from exc

        return wrapper

    return decorate


def _describe(operation: str, signature: inspect.Signature, self: Any, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> str:
    if "{" not in operation:
        return operation
    try:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return operation.format(**bound.arguments)
    except (TypeError, KeyError, IndexError, ValueError):
        return operation


JITTER = random.Random()
"""The random source of retry jitter: a generator of its own, so that retries in the background
neither draw from nor move the ``random`` module's, which a program may have seeded."""


def jittered(seconds: float) -> float:
    """``seconds`` less a random part of up to half of it."""
    return seconds / 2 + JITTER.uniform(0.0, seconds / 2)


class Backoff:
    """Exponential backoff with a cap and jitter: how long to wait before the next attempt.

    The n-th wait is ``initial * factor**n`` capped at ``cap``, less a random part of up to
    half of it, so that processes that met one outage together do not retry in step.
    """

    def __init__(self, initial: float = 0.25, cap: float = 5.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.attempts = 0
        """Waits handed out since the last :meth:`reset`."""

    def next(self) -> float:
        """The next wait, in seconds."""
        base = min(self.cap, self.initial * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return jittered(base)

    def reset(self) -> None:
        """Start again from ``initial`` (after a success)."""
        self.attempts = 0


class Outage:
    """One component's view of whether its store is out, and the two log lines an outage is worth.

    Callers report each failed store operation (:meth:`failed`) and each success
    (:meth:`ok`). The first failure logs a warning (the error says which store, which
    operation and why); later failures only count; the first success after them logs,
    at INFO, how long the store was out. Failures within ``settle`` seconds of the end of
    an outage (a connection that died with the server and is used only now) belong to
    that outage and are not announced again, unless they last longer than ``settle``.
    Safe to use from several threads.
    """

    def __init__(self, log: logging.Logger, who: str, *, settle: float = 5.0) -> None:
        self.log = log
        self.who = who
        """Who speaks in the log lines, for example ``worker host:123:ab12``."""
        self.settle = settle
        self.since: float | None = None
        """When (``time.monotonic()``) the current failures started; None while the store answers."""
        self.failures = 0
        """Failed operations in the current (or last) outage."""
        self.outages = 0
        """Outages announced so far."""
        self.last_error: BaseException | None = None
        self._ended: float | None = None
        self._quiet = False
        self._lock = threading.Lock()

    @property
    def out(self) -> bool:
        """Whether the last store operation reported failed."""
        return self.since is not None

    def failed(self, exc: BaseException, then: str = "retrying with backoff until it is back") -> None:
        """Report a failed store operation; the first of an outage is logged as a warning."""
        now = time.monotonic()
        with self._lock:
            self.last_error = exc
            if self.since is None:
                self.since = now
                self._quiet = self._ended is not None and now - self._ended < self.settle
                if not self._quiet:
                    self.failures = 0
                announce = not self._quiet
            else:
                announce = self._quiet and now - self.since > self.settle
                if announce:
                    self._quiet = False
            self.failures += 1
            if announce:
                self.outages += 1
        if announce:
            self.log.warning("%s: store unavailable, %s: %s", self.who, then, exc)
        else:
            self.log.debug("%s: store still unavailable: %s", self.who, exc)

    def ok(self) -> None:
        """Report a successful store operation; the first after an outage is logged."""
        if self.since is None:  # the common case, without the lock
            return
        now = time.monotonic()
        with self._lock:
            since, quiet, self.since, self._ended = self.since, self._quiet, None, now
        if since is not None and not quiet:
            self.log.info("%s: store available again after %.1fs (%d failed attempt(s)); carrying on",
                          self.who, now - since, self.failures)


def create_racing(create: Callable[[], None], attempts: int = 3) -> None:
    """Run an eventsourcing recorder's ``create_table`` where other processes may run it at
    the same moment: the loser of the race to record the tables' migration row (an
    integrity error) tries again, and then finds the tables made."""
    for attempt in range(attempts):
        try:
            create()
            return
        except IntegrityError:
            if attempt == attempts - 1:
                raise
