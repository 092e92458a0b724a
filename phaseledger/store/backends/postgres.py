"""PostgreSQL stores: eventsourcing's PostgreSQL persistence with one-trip appends (see
:mod:`phaseledger.store.postgres`), shared by any number of processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from eventsourcing.utils import get_topic
from psycopg.rows import tuple_row

from phaseledger.store.backends.base import Backend
from phaseledger.store.deleter import Deleter, PostgresDeleter
from phaseledger.store.leasebook import LeaseBook, PostgresLeaseBook
from phaseledger.store.listener import AppendListener
from phaseledger.store.postgres import LoopAppender, OneTripRecorder, StoreFactory
from phaseledger.store.runindex import PostgresRunIndex
from phaseledger.store.sql import SELECT_ROWS_BETWEEN
from phaseledger.store.sql import postgres as pg
from phaseledger.store.transactions import Finish, Work, postgres_transact

if TYPE_CHECKING:
    from eventsourcing.application import Application
    from eventsourcing.persistence import StoredEvent

    from phaseledger.store.eventstore import Store

T = TypeVar("T")

# Connections of a read model's or a subscriber's own pool: one kept, a few more on demand.
_SIDE_POOL = {"POSTGRES_POOL_SIZE": "1", "POSTGRES_MAX_OVERFLOW": "4"}


class PostgresBackend(Backend):
    """The parts of a PostgreSQL store: tables in the store's schema, appends sent from the
    event loop (:class:`~phaseledger.store.postgres.LoopAppender`), subscriptions for the
    report follower and ``LISTEN`` for workers."""

    kind = "postgresql"
    report_dialect: ClassVar[str] = "postgresql"
    appends_on_loop = True
    loop_appender: LoopAppender | None = None

    def application_env(self) -> dict[str, str]:
        return {**self.url.env, "PERSISTENCE_MODULE": get_topic(StoreFactory)}

    def opened(self, app: Application[str]) -> None:
        super().opened(app)
        if isinstance(app.recorder, OneTripRecorder):  # always, as StoreFactory builds it
            self.loop_appender = LoopAppender(app.recorder, self.url.postgres_conninfo or "")

    async def append_on_loop(self, stored: Sequence[StoredEvent], *, shared: bool = False) -> list[int] | None:
        if self.loop_appender is None:
            return None
        ids = await self.loop_appender.append(stored, alone=not shared)
        if ids is not None and not shared:
            await self.let_loop_run()
        return ids

    def ready_appends_on_loop(self) -> None:
        if self.loop_appender is not None:
            self.loop_appender.start()

    def close(self) -> None:
        if self.loop_appender is not None:
            self.loop_appender.close()

    transactional = True

    def transact(self, run_id: str, owner: str | None, work: Work[T], finish: Finish[T]) -> tuple[T, list[int]]:
        recorder: Any = self.application().recorder
        return postgres_transact(recorder.datastore, recorder, self.url, run_id, owner, work, finish)

    def report_env(self) -> dict[str, str]:
        return {**self.url.env, **_SIDE_POOL}

    def subscriber_env(self) -> dict[str, str] | None:
        return {**self.url.env, "ORIGINATOR_ID_TYPE": "text", **_SIDE_POOL, "CREATE_TABLE": "y"}

    def listener(self, on_notify: Callable[[], None]) -> AppendListener | None:
        if not self.url.postgres_conninfo:
            return None
        recorder: Any = self.application().recorder
        return AppendListener(self.url.postgres_conninfo, recorder.channel_name, on_notify, store=self.url.redacted)

    def run_index(self, store: Store, *, create: bool = True) -> PostgresRunIndex:
        index = PostgresRunIndex(store, self.datastore())
        if create:
            index.create_table()
        return index

    def lease_book(self, store: Store) -> LeaseBook:
        return PostgresLeaseBook(store, self.run_index(store, create=False))

    def deleter(self, store: Store) -> Deleter:
        return PostgresDeleter(store)

    def event_rows(self, run_id: str, gt: int, lte: int) -> Sequence[tuple[int, str, bytes]]:
        # eventsourcing's select_events builds a dict and a StoredEvent per row: a resume reads hundreds
        recorder: Any = self.application().recorder
        statement = pg.sql(SELECT_ROWS_BETWEEN, recorder.datastore.schema, events=recorder.events_table_name)
        with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            cursor.execute(statement, {"run_id": run_id, "gt": gt, "lte": lte})
            return cursor.fetchall()

    def count_notifications(self, after: int | None, topics: Sequence[str]) -> int:
        recorder: Any = self.application().recorder
        statement = pg.sql(pg.COUNT_AFTER, recorder.datastore.schema, events=recorder.events_table_name)
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement, {"after": after or 0, "topics": list(topics)})
            row = cursor.fetchone()
        return int(row["n"]) if row is not None else 0
