"""SQLite stores: eventsourcing's SQLite persistence, one file, one writer at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eventsourcing.sqlite import SQLiteConnectionPool
from eventsourcing.utils import get_topic

from phaseledger.store.backends.base import Backend
from phaseledger.store.deleter import Deleter, SQLiteDeleter
from phaseledger.store.group_commit import GroupCommitter
from phaseledger.store.leasebook import LeaseBook, SQLiteLeaseBook
from phaseledger.store.runindex import SQLiteRunIndex
from phaseledger.store.sql import SELECT_ROWS_BETWEEN, sqlite
from phaseledger.store.sqlite_appender import InlineAppender
from phaseledger.store.sqlite_factory import SQLiteStoreFactory
from phaseledger.store.transactions import Finish, Work, sqlite_transact

if TYPE_CHECKING:
    from eventsourcing.application import Application
    from eventsourcing.persistence import StoredEvent

    from phaseledger.store.eventstore import Store, StoreURL

T = TypeVar("T")


class SQLiteBackend(Backend):
    """The parts of a SQLite store: its tables in the store's file; appends made on the
    event loop's own thread by a run driven alone while the file's write lock is free
    (:class:`~phaseledger.store.sqlite_appender.InlineAppender`), else in one warm writer
    thread, where the appends of runs driven together share commits
    (:class:`~phaseledger.store.group_commit.GroupCommitter`; SQLite takes one writer at a
    time anyway); no subscriptions (readers poll)."""

    kind = "sqlite"
    report_dialect: ClassVar[str] = "sqlite"
    appends_on_loop = True
    inline_appender: InlineAppender | None = None
    committer: GroupCommitter | None = None

    def __init__(self, url: StoreURL) -> None:
        super().__init__(url)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="phaseledger-writer")

    def application_env(self) -> dict[str, str]:
        return {**self.url.env, "PERSISTENCE_MODULE": get_topic(SQLiteStoreFactory)}

    def prepare(self) -> None:
        Path(self.url.sqlite_path or "").expanduser().parent.mkdir(parents=True, exist_ok=True)

    def opened(self, app: Application[str]) -> None:
        super().opened(app)
        path = self.url.sqlite_path or ""
        if not SQLiteConnectionPool.detect_memory_mode(path):  # another connection would see another database
            recorder: Any = app.recorder
            self.inline_appender = InlineAppender(path, recorder.insert_events_statement)
            lock_timeout = float(self.url.env.get("SQLITE_LOCK_TIMEOUT") or 30)
            self.committer = GroupCommitter(path, recorder.insert_events_statement, lock_timeout, self._writer)

    @property
    def leases_on_loop(self) -> bool:
        return self.inline_appender is not None  # its connection takes them (a file, not memory)

    async def append_on_loop(self, stored: Sequence[StoredEvent], *, shared: bool = False) -> list[int] | None:
        if self.inline_appender is None or self.committer is None:
            return None
        if not shared:  # driven alone: on the loop's thread, unless another writer holds the lock
            ids = self.inline_appender.append(stored)
            if ids is not None:
                await self.let_loop_run()
                return ids
        return await self.committer.append(stored)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def close(self) -> None:
        if self.inline_appender is not None:
            self.inline_appender.close()
        self._writer.shutdown(wait=True)
        if self.committer is not None:
            self.committer.close()

    transactional = True

    def transact(self, run_id: str, owner: str | None, work: Work[T], finish: Finish[T]) -> tuple[T, list[int]]:
        recorder: Any = self.application().recorder
        return sqlite_transact(self.datastore(), recorder, self.url, run_id, owner, work, finish)

    def run_index(self, store: Store, *, create: bool = True) -> SQLiteRunIndex:
        index = SQLiteRunIndex(store, self.datastore())
        if create:
            index.create_table()
        return index

    def lease_book(self, store: Store) -> LeaseBook:
        return SQLiteLeaseBook(store, self.run_index(store, create=False), self.inline_appender)

    def deleter(self, store: Store) -> Deleter:
        return SQLiteDeleter(store)

    def event_rows(self, run_id: str, gt: int, lte: int) -> Sequence[tuple[int, str, bytes]]:
        # eventsourcing's select_events builds a StoredEvent per row, and its connections a
        # sqlite3.Row: a resume reads hundreds, as the plain tuples of the driver's own cursor.
        recorder: Any = self.application().recorder
        with recorder.datastore.transaction(commit=False) as cursor:
            rows = cursor.sqlite_cursor
            rows.row_factory = None
            rows.execute(sqlite.sql(SELECT_ROWS_BETWEEN, events=recorder.events_table_name),
                         {"run_id": run_id, "gt": gt, "lte": lte})
            return rows.fetchall()

    def count_notifications(self, after: int | None, topics: Sequence[str]) -> int:
        recorder: Any = self.application().recorder
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sqlite.sql(sqlite.COUNT_AFTER, events=recorder.events_table_name),
                           {"after": after or 0, "topics": sqlite.json_list(topics)})
            row = cursor.fetchone()
        return int(row[0]) if row is not None else 0
