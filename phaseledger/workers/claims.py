"""How workers take runs without two of them driving one run at once.

A worker *claims* runnable runs from the run index, *renews* its leases while it drives
them, and *releases* each run when its drive ends. The backends:

- :class:`PostgresLeases`: any number of worker processes on any number of machines. A
  claim locks index rows with ``FOR UPDATE SKIP LOCKED`` and writes a lease row that
  expires unless renewed; the run of a worker that died is claimed again once its lease
  expires. The event store's optimistic concurrency stays the last line of defence: a
  worker whose lease was taken over fails to append and stops without writing.
- :class:`LocalLeases`: ``memory://`` and SQLite stores, where one worker process owns the
  store (:class:`StoreOwnership`; a second one gets :class:`~phaseledger.WorkerAlreadyRunning`).
  Its claims are kept in memory; the engine then takes each run's lease in the store like
  any other driver (:mod:`.ownership`), so a run driven by ``engine.run`` in another
  process is not driven twice.

On PostgreSQL a worker's claim *is* the run's lease (the same ``phaseledger_leases`` row
that ``engine.run`` or ``engine.resume`` in any process takes), so workers and other
drivers never drive one run at once.

A released lease keeps a *fence*, the run version its worker left it at: the run is claimed
again only once the index has caught up with that version, so no worker picks a run up
on an index row older than what the last worker saw.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from phaseledger.domain.errors import WorkerAlreadyRunning
from phaseledger.domain.status import CANCELLED
from phaseledger.store.eventstore import Store
from phaseledger.store.leasebook import DriverId, PostgresLeaseBook
from phaseledger.store.runindex import RunIndex


@dataclass(frozen=True)
class Claim:
    """A run a worker now holds: its id and the index version it was claimed at."""

    run_id: str
    version: int


@dataclass(frozen=True)
class Renewal:
    """The outcome of renewing a worker's leases."""

    kept: frozenset[str]
    """Runs still held; any other run the worker drives was taken over and must stop."""
    cancelled: frozenset[str] = field(default_factory=frozenset)
    """Held runs that the index shows cancelled: stop them at their next journal boundary."""


class Leases(ABC):
    """Claims, renews and releases runs for workers (one instance per worker)."""

    claims_are_run_leases = False
    """True when a claim is the run's lease in the store (the engine then takes none of its own)."""

    @abstractmethod
    def claim(self, owner: str, limit: int, lease_seconds: float, keys: Iterable[str]) -> list[Claim]:
        """Take up to ``limit`` runs of these workflow keys that are runnable now and free."""

    @abstractmethod
    def renew(self, owner: str, run_ids: Iterable[str], lease_seconds: float) -> Renewal:
        """Extend the leases ``owner`` holds on these runs."""

    @abstractmethod
    def release(self, owner: str, run_id: str, fence: int, hold_seconds: float = 0.0) -> None:
        """Give a run back; with ``hold_seconds`` no worker takes it for that long (after an error)."""

    def close(self) -> None:
        """Give up anything the backend holds (files, locks)."""


# -- one worker per store: memory:// and SQLite -------------------------------------------

_MEMORY_OWNERS: weakref.WeakKeyDictionary[Store, str] = weakref.WeakKeyDictionary()
"""The worker of each ``memory://`` store of this process."""
_MEMORY_LOCK = threading.Lock()


class StoreOwnership:
    """Makes one worker the only one on a ``memory://`` or SQLite store.

    SQLite: an exclusive lock on ``<database>.worker-lock`` held for the worker's life; the
    operating system drops it when the process dies, so a restarted worker takes over at
    once. ``memory://``: one worker per :class:`~phaseledger.Store` object in this process.
    """

    def __init__(self, store: Store, owner: str) -> None:
        self.store = store
        self.owner = owner
        self._file: IO[str] | None = None
        self.path = Path(store.url.sqlite_path).with_name(Path(store.url.sqlite_path).name + ".worker-lock") \
            if store.url.sqlite_path else None

    def acquire(self) -> None:
        """Become the store's worker, or raise :class:`~phaseledger.WorkerAlreadyRunning`."""
        if self.path is None:
            with _MEMORY_LOCK:
                holder = _MEMORY_OWNERS.get(self.store)
                if holder is not None:
                    raise WorkerAlreadyRunning(self.store.url.redacted, holder)
                _MEMORY_OWNERS[self.store] = self.owner
            return
        handle = open(self.path, "a+", encoding="utf-8")  # held open while the worker runs
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise WorkerAlreadyRunning(self.store.url.redacted, holder)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.owner}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Stop being the store's worker."""
        if self.path is None:
            with _MEMORY_LOCK:
                if _MEMORY_OWNERS.get(self.store) == self.owner:
                    del _MEMORY_OWNERS[self.store]
            return
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            _unlock(self._file)
            self._file.close()
            self._file = None


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle: IO[str]) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class LocalLeases(Leases):
    """Leases kept in this worker's memory, for a store it owns alone (memory://, SQLite)."""

    def __init__(self, index: RunIndex, ownership: StoreOwnership) -> None:
        self.index = index
        self.ownership = ownership
        self._held: dict[str, str] = {}
        self._fences: dict[str, tuple[int, datetime]] = {}
        """run_id -> (fence, not before): runs released, waiting for the index or a hold."""
        self._lock = threading.Lock()

    def claim(self, owner: str, limit: int, lease_seconds: float, keys: Iterable[str]) -> list[Claim]:
        if limit <= 0:
            return []
        now = datetime.now(UTC)
        with self._lock:
            skip = len(self._held) + len(self._fences)
            claims: list[Claim] = []
            for run_id, version in self.index.runnable(now, keys, limit + skip):
                if run_id in self._held:
                    continue
                fence = self._fences.get(run_id)
                if fence is not None:
                    if version < fence[0] or now < fence[1]:
                        continue
                    del self._fences[run_id]
                self._held[run_id] = owner
                claims.append(Claim(run_id, version))
                if len(claims) == limit:
                    break
            return claims

    def renew(self, owner: str, run_ids: Iterable[str], lease_seconds: float) -> Renewal:
        with self._lock:
            kept = frozenset(r for r in run_ids if self._held.get(r) == owner)
        cancelled = frozenset(r for r in kept if (row := self.index.get(r)) is not None and row.status == CANCELLED)
        return Renewal(kept, cancelled)

    def release(self, owner: str, run_id: str, fence: int, hold_seconds: float = 0.0) -> None:
        with self._lock:
            if self._held.get(run_id) == owner:
                del self._held[run_id]
                not_before = datetime.now(UTC) + timedelta(seconds=hold_seconds)
                self._fences[run_id] = (fence, not_before)

    def close(self) -> None:
        self.ownership.release()


# -- many workers: PostgreSQL ------------------------------------------------------------

class PostgresLeases(Leases):
    """Lease rows in the store's PostgreSQL schema, shared by every worker on the store."""

    claims_are_run_leases = True

    def __init__(self, book: PostgresLeaseBook, driver: DriverId) -> None:
        self.book = book
        self.driver = driver

    def claim(self, owner: str, limit: int, lease_seconds: float, keys: Iterable[str]) -> list[Claim]:
        keys = list(keys)
        if limit <= 0 or not keys:
            return []
        claimed = self.book.claim(owner, self.driver, limit, lease_seconds, keys)
        return [Claim(run_id, version) for run_id, version in claimed]

    def renew(self, owner: str, run_ids: Iterable[str], lease_seconds: float) -> Renewal:
        run_ids = list(run_ids)
        if not run_ids:
            return Renewal(frozenset())
        return Renewal(*self.book.renew_claims(owner, run_ids, lease_seconds))

    def release(self, owner: str, run_id: str, fence: int, hold_seconds: float = 0.0) -> None:
        self.book.release_claim(owner, run_id, fence, hold_seconds)

    def leases(self) -> list[dict[str, Any]]:
        """Every lease row (for inspection and tests)."""
        return self.book.rows()


def open_leases(index: RunIndex, driver: DriverId) -> Leases:
    """The leases of a worker on the index's store; claims the store on memory:// and SQLite."""
    book = index.store.lease_book()
    if isinstance(book, PostgresLeaseBook):  # leases shared in the store: many workers
        return PostgresLeases(book, driver)
    ownership = StoreOwnership(index.store, driver.owner)
    ownership.acquire()
    return LocalLeases(index, ownership)


def worker_identity() -> str:
    """``host:pid``, how a worker names itself in lease rows and messages."""
    return f"{socket.gethostname()}:{os.getpid()}"
