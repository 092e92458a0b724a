"""The abstract :class:`Backend`: what one kind of store is made of (see :mod:`phaseledger.store.backends`)."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.utils import Environment

if TYPE_CHECKING:
    from eventsourcing.application import Application
    from eventsourcing.persistence import StoredEvent

    from phaseledger.store.deleter import Deleter
    from phaseledger.store.eventstore import Store, StoreURL
    from phaseledger.store.leasebook import LeaseBook
    from phaseledger.store.listener import AppendListener
    from phaseledger.store.runindex import RunIndex
    from phaseledger.store.transactions import Finish, Work

T = TypeVar("T")

# eventsourcing's factory classes by topic: given a module, it scans the module's members
# for the factory class (issubclass on each), about half a millisecond of every store's opening.
POPO_FACTORY = "eventsourcing.popo:POPOFactory"
SQLITE_FACTORY = "eventsourcing.sqlite:SQLiteFactory"
POSTGRES_FACTORY = "eventsourcing.postgres:PostgresFactory"

YIELD_AFTER = 0.002
"""Seconds that appends made on the event loop's thread may hold it before they let its other tasks run."""


class Backend(ABC):
    """What one kind of store is made of (subclasses: memory, SQLite, PostgreSQL).

    Built from the store's URL before the store's application; :meth:`opened` hands it the
    application once there is one.
    """

    kind: ClassVar[str]
    """The :attr:`StoreURL.backend <phaseledger.store.eventstore.StoreURL.backend>` it serves."""
    report_dialect: ClassVar[str]
    """The SQL dialect (``sqlite``, ``postgresql``) of the database of :meth:`report_infrastructure`."""
    blocking: ClassVar[bool] = True
    """Whether its calls wait on I/O: callers on an event loop then make them in a thread."""
    in_process: ClassVar[bool] = False
    """Whether the store exists only in this process's objects (nothing else can open it)."""
    keeps_deleted_notifications: ClassVar[bool] = False
    """Whether the notification log still lists the rows of deleted runs (readers check the run exists)."""

    def __init__(self, url: StoreURL) -> None:
        self.url = url
        self.app: Application[str] | None = None
        self._yielded_at = 0.0

    async def let_loop_run(self) -> None:
        """After an append that held the event loop's thread (a run driven alone), let the
        loop's other tasks (lease renewals, a web server) run, as an append that waited
        through the loop would have: not after each one (a turn of the loop costs several
        µs of CPU), but once appends have held the thread for :data:`YIELD_AFTER`."""
        if time.monotonic() - self._yielded_at >= YIELD_AFTER:
            await asyncio.sleep(0)
            self._yielded_at = time.monotonic()

    def application_env(self) -> dict[str, str]:
        """The eventsourcing settings of the store's persistence (from its URL)."""
        return dict(self.url.env)

    def prepare(self) -> None:
        """Make what must exist before the application is built (a SQLite file's directory)."""

    def opened(self, app: Application[str]) -> None:
        """Take the store's application, once built."""
        self.app = app

    def application(self) -> Application[str]:
        """The store's application (see :meth:`opened`)."""
        if self.app is None:
            raise RuntimeError(f"the {self.kind} backend has no application yet")
        return self.app

    def datastore(self) -> Any:
        """The eventsourcing datastore of the store's recorders (SQL backends)."""
        return self.application().recorder.datastore  # type: ignore[attr-defined]  # SQL recorders' own attribute

    def close(self) -> None:
        """Release what the backend holds besides the application (connections, threads)."""

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` from an event loop that keeps running meanwhile (a thread)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`call` for appends (SQLite keeps one writer thread for them)."""
        return await asyncio.to_thread(fn, *args)

    async def append_on_loop(self, stored: Sequence[StoredEvent], *, shared: bool = False) -> list[int] | None:
        """Append from the event loop itself: the notification ids, or None when this backend
        cannot now (the caller then appends with :meth:`write`). ``shared``: other runs are
        being driven in this process now."""
        return None

    def ready_appends_on_loop(self) -> None:
        """Start making what :meth:`append_on_loop` needs on the running loop (a connection),
        without waiting for it, so that a drive about to append finds it ready."""

    @property
    def leases_on_loop(self) -> bool:
        """Whether the lease book takes leases on the event loop's own thread when it can do so
        without waiting (see :meth:`~phaseledger.store.leasebook.LeaseBook.acquire_on_loop`)."""
        return False

    appends_on_loop: ClassVar[bool] = False
    """Whether :meth:`append_on_loop` may append (else the store does not encode for it)."""

    transactional: ClassVar[bool] = False
    """Whether :meth:`transact` can run a transactional step (the store lives in a database)."""

    def transact(self, run_id: str, owner: str | None, work: Work[T], finish: Finish[T]) -> tuple[T, list[int]]:
        """Run ``work(connection)`` and append the events ``finish(result)`` in one transaction of the
        store's database (see :mod:`phaseledger.store.transactions`); the notification ids."""
        raise NotImplementedError(f"a {self.kind} store has no database for transactional steps")

    def report_infrastructure(self, name: str) -> InfrastructureFactory[Any]:
        """The eventsourcing infrastructure that holds read models named ``name`` next to the store."""
        return InfrastructureFactory.construct(Environment(name, self.report_env()))

    def report_env(self) -> dict[str, str]:
        """The settings of :meth:`report_infrastructure`: the store's own database by default."""
        return dict(self.url.env)

    def subscriber_env(self) -> dict[str, str] | None:
        """Settings of an application of its own on the store's log that can subscribe to it (None: no
        subscriptions; readers poll)."""
        return None

    def listener(self, on_notify: Callable[[], None]) -> AppendListener | None:
        """A listener calling ``on_notify`` when events are committed (None: not supported; poll)."""
        return None

    @abstractmethod
    def run_index(self, store: Store, *, create: bool = True) -> RunIndex:
        """The store's run index (its tables created unless ``create`` is False)."""

    @abstractmethod
    def lease_book(self, store: Store) -> LeaseBook:
        """The store's run leases."""

    @abstractmethod
    def deleter(self, store: Store) -> Deleter:
        """What deletes rows of the log for retention."""

    def event_rows(self, run_id: str, gt: int, lte: int) -> Sequence[tuple[int, str, bytes]]:
        """The version, topic and stored state of each of the run's events in ``(gt, lte]``, in order."""
        recorder: Any = self.application().recorder
        return [(row.originator_version, row.topic, row.state) for row in recorder.select_events(run_id, gt=gt, lte=lte)]

    @abstractmethod
    def count_notifications(self, after: int | None, topics: Sequence[str]) -> int:
        """How many rows of the log with these topics follow position ``after``."""

