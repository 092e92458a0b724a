"""One owner per live run: leases with heartbeats, taken by every process that drives a run.

``engine.run``, ``engine.resume``, ``engine.retry``, forks that drive, durable agents, the
CLI and workers all drive runs through :meth:`Engine._drive`, which first takes the run's
lease in the store (:class:`LeaseBook`): one row per run naming the driver (host, process
id, engine or worker id), renewed by a heartbeat every third of its length. A second
driver gets :class:`~phaseledger.RunBusy` naming the owner; it takes over only when

- the lease expired (its driver stopped renewing: crashed, hung, or cut off),
- the owner is a process of this host that no longer exists (a crash: no need to wait
  out the lease), or
- the caller asks for it (``steal=True``): the old driver then stops at its next journal
  boundary with :class:`~phaseledger.LeaseLost` (its next append also conflicts with the
  new owner's), and the step it was running may run twice.

What one engine's drivers and workers share about the runs they hold lives in
:mod:`phaseledger.engine.control`.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventsourcing.persistence import OperationalError, ProgrammingError
from pydantic import BaseModel

from phaseledger.domain.errors import RunBusy
from phaseledger.store.faults import is_transient, store_errors
from phaseledger.store.sql import postgres as pg
from phaseledger.store.sql import sqlite
from phaseledger.store.sqlite_appender import InlineAppender, LockBusy, lease_writes

if TYPE_CHECKING:
    from phaseledger.store.eventstore import Store
    from phaseledger.store.runindex import PostgresRunIndex, SQLiteRunIndex

T = TypeVar("T")

LEASE_SAFETY = 0.8
"""A driver stops at its next journal boundary once this fraction of its lease passed unrenewed."""


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return float(fields[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True)
class DriverId:
    """Who drives runs: a process (host and pid) and the engine or worker in it."""

    owner: str
    """``host:pid:xxxxxxxx``, unique per engine or worker."""
    host: str
    pid: int
    proc_start: float | None

    @classmethod
    def here(cls, owner: str | None = None) -> DriverId:
        """This process, named ``owner`` (a fresh ``host:pid:xxxxxxxx`` when None)."""
        host, pid = socket.gethostname(), os.getpid()
        return cls(owner or f"{host}:{pid}:{uuid.uuid4().hex[:8]}", host, pid, _process_start(pid))


class Driving(BaseModel):
    """Who drives a run now, as its lease says; shown by ``engine.get``/``runs`` and the CLI."""

    owner: str
    """The driver's id: ``host:pid:xxxxxxxx`` of an engine or a worker."""
    host: str | None = None
    pid: int | None = None
    proc_start: float | None = None
    heartbeat_at: datetime | None = None
    """The driver's last heartbeat (when it took or renewed the lease)."""
    expires_at: datetime
    """When the lease runs out unless renewed."""
    checked_at: datetime
    """The store's clock when the lease was read (ages are measured against it)."""

    @property
    def process_gone(self) -> bool:
        """True when the driver was a process of this host that no longer exists."""
        if self.host != socket.gethostname() or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, under another user
        started = _process_start(self.pid)
        return started is not None and self.proc_start is not None and started != self.proc_start

    @property
    def live(self) -> bool:
        """The lease is held, unexpired, by a process not known to be gone."""
        return self.expires_at > self.checked_at and not self.process_gone

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds since the last heartbeat."""
        return (self.checked_at - self.heartbeat_at).total_seconds() if self.heartbeat_at else None

    def describe(self) -> str:
        """``running on host:pid, heartbeat 2 s ago`` or ``orphaned: last heartbeat 3 min ago``."""
        where = f"{self.host}:{self.pid}" if self.host else self.owner
        age = self.heartbeat_age
        ago = f"{_duration(age)} ago" if age is not None else "at an unknown time"
        if self.live:
            return f"running on {where}, heartbeat {ago}"
        why = "its process is gone" if self.process_gone else "its lease expired"
        return f"orphaned: last heartbeat {ago} by {where} ({why})"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def busy(run_id: str, lease: Driving) -> RunBusy:
    """The :class:`~phaseledger.RunBusy` error for a run held by ``lease``."""
    age = lease.heartbeat_age
    heartbeat = f"heartbeat {_duration(age)} ago" if age is not None else "no heartbeat yet"
    return RunBusy(run_id, lease.owner, lease.host, lease.pid, lease.expires_at, heartbeat)


Attempt = bool | Driving | None
"""What an attempt to take a lease found: True, taken; else who holds the lease as the attempt
read it (None: nobody, it was released meanwhile), or False when the attempt did not read it."""


class LeaseBook(ABC):
    """The run leases of one store (memory, SQLite or PostgreSQL)."""

    def acquire(self, run_id: str, driver: DriverId, seconds: float, *, steal: bool = False) -> None:
        """Take the run's lease for ``driver`` or raise :class:`~phaseledger.RunBusy`.

        Free, released, expired and own leases are taken at once; a lease of a process of
        this host that no longer exists too; any other one only with ``steal``.
        """
        self._acquire(run_id, driver, seconds, steal, self._try_acquire)

    def acquire_on_loop(self, run_id: str, driver: DriverId, seconds: float, *, steal: bool = False) -> bool:
        """:meth:`acquire`, from an event loop's own thread, when that needs no wait: False
        when it would wait (the caller then calls :meth:`acquire` in a thread). Raises
        :class:`~phaseledger.RunBusy` as :meth:`acquire` does.

        Only SQLite stores do this (while the file's write lock is free); others always
        answer False.
        """
        return False

    def _acquire(self, run_id: str, driver: DriverId, seconds: float, steal: bool,
                 try_acquire: Callable[[str, DriverId, float, str], Attempt]) -> None:
        """:meth:`acquire` with ``try_acquire`` making each attempt."""
        takeover = ""
        for _ in range(3):
            attempt = try_acquire(run_id, driver, seconds, takeover)
            if attempt is True:
                return
            holder = self.get(run_id) if attempt is False else attempt
            if holder is None:
                continue  # released meanwhile: try again
            if not (steal or holder.process_gone):
                raise busy(run_id, holder)
            takeover = holder.owner  # compare-and-set: only if it is still that owner's
        holder = self.get(run_id)
        raise busy(run_id, holder) if holder else RuntimeError(f"could not take the lease of run {run_id!r}")

    @abstractmethod
    def _try_acquire(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        """Take the lease if it is free, released, expired, ``driver``'s own or ``takeover``'s."""

    @abstractmethod
    def renew(self, owner: str, run_ids: Iterable[str], seconds: float) -> frozenset[str]:
        """Extend ``owner``'s leases on these runs; return the runs it still holds."""

    @abstractmethod
    def release(self, owner: str, run_id: str, fence: int) -> None:
        """Give the run back (if ``owner`` still holds it), at run version ``fence``."""

    @abstractmethod
    def held(self, run_ids: Iterable[str] | None = None) -> dict[str, Driving]:
        """The held leases (of these runs, or all), by run id; expired ones included."""

    def get(self, run_id: str) -> Driving | None:
        """The run's lease while one is held (expired or not); None once released."""
        return self.held([run_id]).get(run_id)


# -- memory:// ----------------------------------------------------------------------------

class MemoryLeaseBook(LeaseBook):
    """Leases of a ``memory://`` store, shared by every engine on the same store object (its
    backend holds one book)."""

    def __init__(self) -> None:
        self._rows: dict[str, Driving] = {}
        self._lock = threading.Lock()

    def _try_acquire(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            row = self._rows.get(run_id)
            if row is not None and row.owner not in (driver.owner, takeover) and row.expires_at >= now:
                return False
            self._rows[run_id] = Driving(owner=driver.owner, host=driver.host, pid=driver.pid,
                                         proc_start=driver.proc_start, heartbeat_at=now,
                                         expires_at=now + timedelta(seconds=seconds), checked_at=now)
            return True

    def renew(self, owner: str, run_ids: Iterable[str], seconds: float) -> frozenset[str]:
        now = datetime.now(UTC)
        kept = set()
        with self._lock:
            for run_id in run_ids:
                row = self._rows.get(run_id)
                if row is not None and row.owner == owner:
                    self._rows[run_id] = row.model_copy(update={
                        "heartbeat_at": now, "expires_at": now + timedelta(seconds=seconds)})
                    kept.add(run_id)
        return frozenset(kept)

    def release(self, owner: str, run_id: str, fence: int) -> None:
        with self._lock:
            row = self._rows.get(run_id)
            if row is not None and row.owner == owner:
                del self._rows[run_id]

    def held(self, run_ids: Iterable[str] | None = None) -> dict[str, Driving]:
        now = datetime.now(UTC)
        with self._lock:
            wanted = self._rows if run_ids is None else {r: self._rows[r] for r in run_ids if r in self._rows}
            return {r: row.model_copy(update={"checked_at": now}) for r, row in wanted.items()}


# -- SQLite -------------------------------------------------------------------------------

def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


_ATTEMPTS = 5
"""Tries of a lease statement over a blip (0.1 s, doubling: 1.5 s in all) before it gives up."""


def _missing_table(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no such table" in text or "does not exist" in text or "no such column" in text


class _TableLeaseBook(LeaseBook):
    """Leases in the store's ``phaseledger_leases`` table, made with the run index's tables.

    Opening the book runs no DDL: the tables are created the first time a statement finds
    them missing (a store no worker has opened yet), and the statement runs again. Database
    errors are translated like every store operation's.
    """

    def __init__(self, store: Store, index: SQLiteRunIndex | PostgresRunIndex) -> None:
        self.store = store
        self.index = index
        self.datastore: Any = index.datastore  # each subclass speaks its own driver's cursors
        self._created = False

    def _with_tables(self, operation: str, statement: Callable[[], T]) -> T:
        """Run ``statement``: once more after making missing tables, and a few times more
        over a short blip (a connection that dropped, a server that is coming back)."""
        with store_errors(self.store.url, operation):
            made = False
            for attempt in range(_ATTEMPTS):
                try:
                    return statement()
                except (ProgrammingError, OperationalError) as exc:
                    if not made and _missing_table(exc):
                        # Missing (or from an earlier release): made, then again. A statement that
                        # raced another thread's creation finds the tables made and simply runs again.
                        if not self._created:
                            self.index.create_table()
                            self._created = True
                        made = True
                        continue
                    if attempt == _ATTEMPTS - 1 or not is_transient(exc):
                        raise
                    time.sleep(0.1 * 2**attempt)
            return statement()

    def _try_acquire(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        return self._with_tables(f"take the lease of run {run_id!r}",
                                 lambda: self._try_acquire_now(run_id, driver, seconds, takeover))

    def renew(self, owner: str, run_ids: Iterable[str], seconds: float) -> frozenset[str]:
        ids = list(run_ids)
        return self._with_tables("renew run leases", lambda: self._renew_now(owner, ids, seconds))

    def release(self, owner: str, run_id: str, fence: int) -> None:
        self._with_tables(f"release the lease of run {run_id!r}", lambda: self._release_now(owner, run_id, fence))

    def held(self, run_ids: Iterable[str] | None = None) -> dict[str, Driving]:
        ids = None if run_ids is None else list(run_ids)
        return self._with_tables("read run leases", lambda: self._held_now(ids))

    @abstractmethod
    def _try_acquire_now(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt: ...

    @abstractmethod
    def _renew_now(self, owner: str, run_ids: list[str], seconds: float) -> frozenset[str]: ...

    @abstractmethod
    def _release_now(self, owner: str, run_id: str, fence: int) -> None: ...

    @abstractmethod
    def _held_now(self, run_ids: list[str] | None) -> dict[str, Driving]: ...


class SQLiteLeaseBook(_TableLeaseBook):
    """Leases in the ``phaseledger_leases`` table of a SQLite store (clock: this host's).

    Lease writes commit without waiting for the disk (``synchronous=NORMAL`` for their
    transaction; see :func:`~phaseledger.store.sqlite_appender.lease_writes`).
    """

    def __init__(self, store: Store, index: SQLiteRunIndex, loop_connection: InlineAppender | None = None) -> None:
        super().__init__(store, index)
        self.loop_connection = loop_connection
        """The store's connection for writes made on an event loop's thread (see :meth:`acquire_on_loop`)."""

    def acquire_on_loop(self, run_id: str, driver: DriverId, seconds: float, *, steal: bool = False) -> bool:
        """:meth:`acquire` on the store's loop connection, whose transactions begin only when
        the write lock is free right now: False when it is not, or on any database error (the
        lease book's tables missing, say), which :meth:`acquire` in a thread then meets and
        handles. The transaction commits without a sync (see
        :func:`~phaseledger.store.sqlite_appender.lease_writes`), so the loop waits for no
        other writer and no disk."""
        if self.loop_connection is None:
            return False
        try:
            self._acquire(run_id, driver, seconds, steal, self._try_acquire_on_loop)
        except (LockBusy, sqlite3.Error):
            return False
        return True

    def _try_acquire_on_loop(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        assert self.loop_connection is not None
        with self.loop_connection.lease_transaction() as conn:
            return self._acquire_rows(conn.cursor(), run_id, driver, seconds, takeover)

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """A transaction that writes lease rows, on a connection of the store's pool."""
        with (self.datastore.get_connection(commit=True) as conn, lease_writes(conn.cursor(), conn.close),
              conn.transaction(commit=True) as cursor):
            yield cursor

    def _try_acquire_now(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        with self._writing() as c:
            return self._acquire_rows(c, run_id, driver, seconds, takeover)

    @staticmethod
    def _acquire_rows(c: Any, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        """One attempt at the lease, in the transaction of cursor ``c``."""
        now = datetime.now(UTC).timestamp()
        c.execute(sqlite.ACQUIRE, {
            "run_id": run_id, "owner": driver.owner, "host": driver.host, "pid": driver.pid,
            "proc_start": driver.proc_start, "now": now, "lease": float(seconds), "takeover": takeover,
        })
        c.execute(sqlite.LEASE_ROW, {"run_id": run_id})
        row = c.fetchone()
        if row is not None and row[1] == driver.owner:
            return True
        return None if row is None else _sqlite_lease(row, datetime.now(UTC))

    def _renew_now(self, owner: str, run_ids: list[str], seconds: float) -> frozenset[str]:
        run_ids = list(run_ids)
        if not run_ids:
            return frozenset()
        now = datetime.now(UTC).timestamp()
        with self._writing() as c:
            c.execute(sqlite.RENEW, {"now": now, "expires_at": now + seconds, "owner": owner,
                                     "run_ids": sqlite.json_list(run_ids)})
            return frozenset(r[0] for r in c.fetchall())

    def _release_now(self, owner: str, run_id: str, fence: int) -> None:
        with self._writing() as c:
            c.execute(sqlite.RELEASE_RUN, {"run_id": run_id, "owner": owner, "fence": fence,
                                           "now": datetime.now(UTC).timestamp()})

    def _held_now(self, run_ids: list[str] | None) -> dict[str, Driving]:
        wanted = None if run_ids is None else set(run_ids)
        with self.datastore.transaction(commit=False) as c:
            if wanted is not None and len(wanted) == 1:
                c.execute(sqlite.LEASE_ROW, {"run_id": next(iter(wanted))})
            else:
                c.execute(sqlite.LEASE_ROWS)
            rows = c.fetchall()
        now = datetime.now(UTC)
        return {r[0]: _sqlite_lease(r, now) for r in rows if wanted is None or r[0] in wanted}


def _sqlite_lease(row: Any, now: datetime) -> Driving:
    """A row of ``sqlite.LEASE_ROWS`` read at ``now``."""
    return Driving(owner=row[1], host=row[2], pid=row[3], proc_start=row[4], heartbeat_at=_ts(row[5]),
                   expires_at=_ts(row[6]) or now, checked_at=now)


# -- PostgreSQL ---------------------------------------------------------------------------

@overload
def _aware(value: datetime) -> datetime: ...


@overload
def _aware(value: None) -> None: ...


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class PostgresLeaseBook(_TableLeaseBook):
    """Leases in the store schema's ``phaseledger_leases`` table, shared with worker claims
    (clock: the database server's, so drivers on many hosts agree)."""

    index: PostgresRunIndex

    @contextmanager
    def _statement(self) -> Iterator[Any]:
        """A cursor for one statement, which is a transaction of its own (the pool's connections
        are in autocommit mode): wrapped in BEGIN and COMMIT it would take three round trips."""
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            yield curs

    # -- worker claims: a worker's claim is the run's lease (see phaseledger.workers.claims) --

    def _run(self, operation: str, template: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with store_errors(self.store.url, operation), self._statement() as curs:
            curs.execute(self.index.sql(template), params)
            return list(curs.fetchall()) if curs.description else []

    def claim(self, owner: str, driver: DriverId, limit: int, seconds: float,
              keys: list[str]) -> list[tuple[str, int]]:
        """Take up to ``limit`` runnable, unleased runs of these workflow keys for ``owner`` (run by
        ``driver``'s process): ``(run_id, version)``."""
        rows = self._run("claim runs", pg.CLAIM, {
            "owner": owner, "limit": limit, "lease": float(seconds), "keys": keys,
            "host": driver.host, "pid": driver.pid, "proc_start": driver.proc_start})
        return [(r["run_id"], r["version"]) for r in rows]

    def renew_claims(self, owner: str, run_ids: list[str], seconds: float) -> tuple[frozenset[str], frozenset[str]]:
        """Extend ``owner``'s claims: the runs it still holds, and those of them the index shows cancelled."""
        with store_errors(self.store.url, "renew leases"), self.datastore.transaction(commit=True) as curs:
            curs.execute(self.index.sql(pg.RENEW), {"owner": owner, "run_ids": run_ids, "lease": float(seconds)})
            kept = frozenset(r["run_id"] for r in curs.fetchall())
            cancelled: frozenset[str] = frozenset()
            if kept:
                curs.execute(self.index.sql(pg.CANCELLED), {"run_ids": list(kept)})
                cancelled = frozenset(r["run_id"] for r in curs.fetchall())
        return kept, cancelled

    def release_claim(self, owner: str, run_id: str, fence: int, hold_seconds: float) -> None:
        """Give a claimed run back at version ``fence``; no worker takes it for ``hold_seconds``."""
        self._run(f"release run {run_id!r}", pg.RELEASE,
                  {"owner": owner, "run_id": run_id, "fence": fence, "hold": float(hold_seconds)})

    def rows(self) -> list[dict[str, Any]]:
        """Every lease row (for inspection and tests)."""
        return self._run("read the leases", pg.SELECT_LEASES, {})

    # -- every driver's run leases ----------------------------------------------------------

    def _try_acquire_now(self, run_id: str, driver: DriverId, seconds: float, takeover: str) -> Attempt:
        with self._statement() as curs:
            curs.execute(self.index.sql(pg.ACQUIRE_OR_HOLDER), {
                "run_id": run_id, "owner": driver.owner, "host": driver.host, "pid": driver.pid,
                "proc_start": driver.proc_start, "lease": float(seconds), "takeover": takeover,
            })
            r = curs.fetchone()
        if r is None or r["taken"]:
            return r is not None
        if r["owner"] is None:
            return None
        return Driving(owner=r["owner"], host=r["host"], pid=r["pid"], proc_start=r["proc_start"],
                       heartbeat_at=_aware(r["heartbeat_at"]), expires_at=_aware(r["expires_at"]),
                       checked_at=_aware(r["db_now"]))

    def _renew_now(self, owner: str, run_ids: list[str], seconds: float) -> frozenset[str]:
        run_ids = list(run_ids)
        if not run_ids:
            return frozenset()
        with self._statement() as curs:
            curs.execute(self.index.sql(pg.RENEW), {"owner": owner, "run_ids": run_ids, "lease": float(seconds)})
            return frozenset(r["run_id"] for r in curs.fetchall())

    def _release_now(self, owner: str, run_id: str, fence: int) -> None:
        with self._statement() as curs:
            curs.execute(self.index.sql(pg.RELEASE_RUN), {"run_id": run_id, "owner": owner, "fence": fence})

    def _held_now(self, run_ids: list[str] | None) -> dict[str, Driving]:
        with self._statement() as curs:
            curs.execute(self.index.sql(pg.LEASE_ROWS), {"run_ids": None if run_ids is None else list(run_ids)})
            rows = curs.fetchall()
        return {
            r["run_id"]: Driving(owner=r["owner"], host=r["host"], pid=r["pid"], proc_start=r["proc_start"],
                                 heartbeat_at=_aware(r["heartbeat_at"]), expires_at=_aware(r["expires_at"]),
                                 checked_at=_aware(r["db_now"]))
            for r in rows
        }


def open_lease_book(store: Store) -> LeaseBook:
    """The lease book of a store (its tables are created with the run index's, on first use)."""
    return store.lease_book()
