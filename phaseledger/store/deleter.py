"""Deleting a run's rows: retention's only way to remove anything from a store.

eventsourcing's recorders have no delete operation, so each backend deletes rows itself:
with SQL on SQLite and PostgreSQL (from the tables the recorders name), and through the
in-memory recorder's index on ``memory://`` (see :mod:`._internals`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from phaseledger.store import _internals
from phaseledger.store.faults import store_errors
from phaseledger.store.sql import postgres as pg
from phaseledger.store.sql import sqlite

if TYPE_CHECKING:
    from phaseledger.store.eventstore import Store


class Deleter(ABC):
    """Deletes the rows of one run from a store's log and snapshots."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def delete(self, run_id: str, below: int | None = None) -> tuple[int, int]:
        """Delete the run's events 1 < version < ``below`` and snapshots < ``below``;
        everything of the run when ``below`` is None. Returns (events, snapshots) removed."""
        with store_errors(self.store.url, f"delete events of run {run_id!r}"):
            return self._delete(run_id, below)

    def delete_snapshot(self, run_id: str, version: int) -> int:
        """Delete the run's snapshot at ``version`` (compaction replaces one taken without the
        journal by one with it); how many were removed (0 or 1)."""
        snapshots: Any = self.store.app.snapshots
        if snapshots is None:
            return 0
        with store_errors(self.store.url, f"delete a snapshot of run {run_id!r}"):
            return self._delete_rows(snapshots.recorder, run_id, version, version + 1)

    @abstractmethod
    def _delete_rows(self, recorder: Any, run_id: str, first: int, below: int) -> int:
        """Delete the rows of ``recorder`` for the run's versions from ``first`` up to ``below``."""

    def holds_newest_row(self, run_id: str) -> bool:
        """Whether deleting the run would let the store give its newest notification id to
        the next event (read models that tracked that id would skip the event)."""
        return False

    def _recorders(self) -> list[tuple[Any, int]]:
        """The recorders of the run's rows, each with the first version ``delete`` may remove
        when given ``below`` (the log keeps the run's first event)."""
        app: Any = self.store.app
        recorders = [(app.recorder, 2)]
        if app.snapshots is not None:
            recorders.append((app.snapshots.recorder, 0))
        return recorders

    def _counts(self, counts: list[int]) -> tuple[int, int]:
        counts += [0] * (2 - len(counts))
        return counts[0], counts[1]

    @abstractmethod
    def _delete(self, run_id: str, below: int | None) -> tuple[int, int]: ...


class MemoryDeleter(Deleter):
    """Deletes from the in-memory recorders of a ``memory://`` store."""

    def _delete(self, run_id: str, below: int | None) -> tuple[int, int]:
        counts = []
        for recorder, first in self._recorders():
            start = first if below is not None else 0
            counts.append(_internals.delete_memory_events(
                recorder, run_id, lambda v, start=start: v >= start and (below is None or v < below)))
        return self._counts(counts)

    def _delete_rows(self, recorder: Any, run_id: str, first: int, below: int) -> int:
        return _internals.delete_memory_events(recorder, run_id, lambda v: first <= v < below)


class SQLiteDeleter(Deleter):
    """Deletes with SQL from the tables of a SQLite store, in one transaction."""

    def _delete(self, run_id: str, below: int | None) -> tuple[int, int]:
        recorders = self._recorders()
        counts = []
        with recorders[0][0].datastore.transaction(commit=True) as cursor:
            for recorder, first in recorders:
                cursor.execute(sqlite.sql(sqlite.DELETE_EVENTS, events=recorder.events_table_name),
                               {"run_id": run_id, "first": first if below is not None else 0, "below": below})
                cursor.execute(sqlite.CHANGES)
                counts.append(int(cursor.fetchone()[0]))
        return self._counts(counts)

    def _delete_rows(self, recorder: Any, run_id: str, first: int, below: int) -> int:
        with recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(sqlite.sql(sqlite.DELETE_EVENTS, events=recorder.events_table_name),
                           {"run_id": run_id, "first": first, "below": below})
            cursor.execute(sqlite.CHANGES)
            return int(cursor.fetchone()[0])

    def holds_newest_row(self, run_id: str) -> bool:
        """SQLite gives a new row the highest rowid + 1: deleting the newest row hands its id on."""
        recorder: Any = self.store.app.recorder
        events = recorder.events_table_name
        with (store_errors(self.store.url, "read the newest row of the log"),
              recorder.datastore.transaction(commit=False) as cursor):
            cursor.execute(sqlite.sql(sqlite.NEWEST_ROW, events=events))
            newest = cursor.fetchone()[0]
            cursor.execute(sqlite.sql(sqlite.NEWEST_ROW_OF, events=events), {"run_id": run_id})
            return bool(newest is not None and cursor.fetchone()[0] == newest)


class PostgresDeleter(Deleter):
    """Deletes with SQL from the tables of a PostgreSQL store, in one transaction."""

    def _delete(self, run_id: str, below: int | None) -> tuple[int, int]:
        recorders = self._recorders()
        datastore = recorders[0][0].datastore
        counts = []
        with datastore.transaction(commit=True) as cursor:
            for recorder, first in recorders:
                cursor.execute(pg.sql(pg.DELETE_EVENTS, datastore.schema, events=recorder.events_table_name),
                               {"run_id": run_id, "first": first if below is not None else 0, "below": below})
                counts.append(cursor.rowcount)
        return self._counts(counts)

    def _delete_rows(self, recorder: Any, run_id: str, first: int, below: int) -> int:
        datastore = recorder.datastore
        with datastore.transaction(commit=True) as cursor:
            cursor.execute(pg.sql(pg.DELETE_EVENTS, datastore.schema, events=recorder.events_table_name),
                           {"run_id": run_id, "first": first, "below": below})
            return int(cursor.rowcount)
