"""``memory://`` stores: eventsourcing's in-memory persistence, in this process only."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from phaseledger.store.backends.base import SQLITE_FACTORY, Backend
from phaseledger.store.deleter import Deleter, MemoryDeleter
from phaseledger.store.leasebook import LeaseBook, MemoryLeaseBook
from phaseledger.store.runindex import MemoryRunIndex, RunIndex

if TYPE_CHECKING:
    from phaseledger.store.eventstore import Store, StoreURL

T = TypeVar("T")

_PAGE = 1000


class MemoryBackend(Backend):
    """The parts of a ``memory://`` store: calls are cheap enough to make on the event loop;
    the leases live in the backend (one book per store object); each run index is the
    caller's own; the report view lives in an in-memory SQLite database of the process."""

    kind = "memory"
    report_dialect: ClassVar[str] = "sqlite"
    blocking = False
    in_process = True
    keeps_deleted_notifications = True

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self._leases = MemoryLeaseBook()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    def report_env(self) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": SQLITE_FACTORY,
            "SQLITE_DBNAME": f"file:phaseledger-report-{uuid.uuid4().hex}?mode=memory&cache=shared",
        }

    def run_index(self, store: Store, *, create: bool = True) -> RunIndex:
        return MemoryRunIndex(store)

    def lease_book(self, store: Store) -> LeaseBook:
        return self._leases

    def deleter(self, store: Store) -> Deleter:
        return MemoryDeleter(store)

    def count_notifications(self, after: int | None, topics: Sequence[str]) -> int:
        recorder: Any = self.application().recorder
        count, start = 0, after or 0
        while page := recorder.select_notifications(start=start, limit=_PAGE, topics=topics, inclusive_of_start=False):
            count += len(page)
            start = page[-1].id
        return count
