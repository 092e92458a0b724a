"""The run index: which runs a worker may drive, and when; derived from the notification log.

Every event a run appends lands in the store's notification log. The index follows that
log with eventsourcing tracking: each pass reads the notifications after its tracking
position, folds the runs they touch (the same fold that resumes runs, so "runnable" means
exactly what :func:`phaseledger.domain.schedule.is_due` says) and writes the index rows and the new position in one
transaction. So nothing is lost between "events appended" and "index updated": after any
crash the next pass starts from the last position written, and the index can be rebuilt
from position 0 at any time (:meth:`RunIndex.rebuild`).

Backends follow the store (:meth:`Store.run_index`): :class:`MemoryRunIndex` (``memory://``),
:class:`SQLiteRunIndex` and :class:`PostgresRunIndex`, each an eventsourcing tracking
recorder with the index table added. Statements are in :mod:`phaseledger.store.sql`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder

from phaseledger.domain.errors import CorruptEvent, RunNotFound
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.schedule import EPOCH, runnable_at
from phaseledger.domain.status import DAMAGED, FINISHED
from phaseledger.store import _internals
from phaseledger.store.faults import create_racing, guarded
from phaseledger.store.postgres import create_statement
from phaseledger.store.sql import Literal, sqlite
from phaseledger.store.sql import postgres as pg

if TYPE_CHECKING:
    from phaseledger.store.eventstore import Store

TRACKING_NAME = "phaseledger.runindex"
"""The index's name in the tracking table."""

log = logging.getLogger("phaseledger.worker")


@dataclass(frozen=True)
class IndexRow:
    """What the index knows about one run."""

    run_id: str
    workflow: str
    workflow_version: int
    status: str
    runnable_at: datetime | None
    """When the run may next be driven (None: waits for a signal, or finished)."""
    version: int
    """The run version this row reflects."""
    updated_at: datetime

    @classmethod
    def of(cls, run: WorkflowRun) -> IndexRow:
        """The row of a run as it stands in the log."""
        return cls(
            run_id=run.id, workflow=run.workflow, workflow_version=run.workflow_version, status=run.status,
            runnable_at=runnable_at(run), version=run.version, updated_at=run.modified_on,
        )

    @classmethod
    def damaged(cls, run_id: str, version: int, known: IndexRow | None) -> IndexRow:
        """The row of a run that cannot be read: never runnable (``known``: its row before)."""
        return cls(
            run_id=run_id, workflow=known.workflow if known else "?",
            workflow_version=known.workflow_version if known else 0, status=DAMAGED, runnable_at=None,
            version=max(version, known.version if known else 0), updated_at=datetime.now(UTC),
        )

    @property
    def workflow_key(self) -> str:
        """``name@version``: which registered workflow can drive the run."""
        return workflow_key(self.workflow, self.workflow_version)

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in FINISHED


def workflow_key(name: str, version: int) -> str:
    """The key a run index uses for a workflow version (``name@version``)."""
    return f"{name}@{version}"


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class RunIndex(TrackingRecorder):
    """The index of runs of one store, maintained from its notification log with tracking.

    :meth:`catch_up` is safe to call from several processes at once: each pass writes its
    rows and its tracking position in one transaction, and a pass that finds the position
    moved on (another indexer got there first) writes nothing.

    A run a row of which cannot be read (:class:`~phaseledger.CorruptEvent`) gets a
    ``damaged`` row that is never runnable, so workers pass it by. Damaged runs are read
    again by :meth:`recheck_damaged`, which :meth:`catch_up_fully` calls on its first pass
    and then every :attr:`damaged_recheck_seconds`: a run whose row was repaired becomes
    runnable again without anything more to do.
    """

    store: Store
    damaged_recheck_seconds: float = 30.0
    """How often :meth:`catch_up_fully` reads the damaged runs again."""
    _damaged_checked_at: float | None = None

    @guarded("index the log")
    def catch_up(self, *, batch: int = 500) -> int:
        """Index the notifications after the tracking position; return how many were read.

        Call it until it returns less than ``batch`` to reach the end of the log.
        """
        notifications = self.store.notifications(self.position(), batch)
        if not notifications:
            return 0
        rows, gone = [], []
        for run_id, version in self.store.runs_in(notifications).items():
            try:
                rows.append(IndexRow.of(self.store.load(run_id, journal=False)))
            except RunNotFound:  # deleted since (retention): its row goes too
                gone.append(run_id)
            except CorruptEvent as exc:
                log.error("run index: %s", exc)
                rows.append(IndexRow.damaged(run_id, version, self.get(run_id)))
        try:
            self._write(rows, gone, Tracking(TRACKING_NAME, notifications[-1].id))
        except IntegrityError:
            return 0  # another indexer recorded this position first: its rows stand
        return len(notifications)

    def catch_up_fully(self, *, batch: int = 500) -> int:
        """Index the whole log after the tracking position; return how many were read.

        Damaged runs are read again on the first call and every :attr:`damaged_recheck_seconds`.
        """
        total = 0
        while (read := self.catch_up(batch=batch)) >= batch:
            total += read
        now = time.monotonic()
        checked = self._damaged_checked_at
        if checked is None or now - checked >= self.damaged_recheck_seconds:
            self._damaged_checked_at = now
            self.recheck_damaged()
        return total + read

    @guarded("read the run index")
    def recheck_damaged(self) -> list[str]:
        """Read every damaged run again; index those that read now. Returns their ids."""
        rows, gone = [], []
        for run_id in self.damaged_runs():
            try:
                rows.append(IndexRow.of(self.store.load(run_id, journal=False)))
            except RunNotFound:
                gone.append(run_id)
            except CorruptEvent:
                continue
        if rows or gone:
            try:
                self._write(rows, gone, None)
            except IntegrityError:  # pragma: no cover - rows without a position wait for the lock
                return []
            for row in rows:
                log.info("run index: run %s reads again and is indexed as %s", row.run_id, row.status)
        return [row.run_id for row in rows]

    @guarded("write the run index")
    def mark_damaged(self, run_id: str) -> None:
        """Record that a run cannot be read (a worker found it so): it is no longer runnable."""
        known = self.get(run_id)
        try:
            self._write([IndexRow.damaged(run_id, known.version if known else 0, known)], [], None)
        except IntegrityError:  # pragma: no cover - rows without a position wait for the lock
            pass

    @guarded("read the run index's position")
    def position(self) -> int:
        """The notification id the index has reached (0 before the first pass)."""
        return self.max_tracking_id(TRACKING_NAME) or 0

    @guarded("read the run index's position")
    def caught_up(self) -> bool:
        """Whether the index has read the whole notification log."""
        return self.store.max_notification_id() <= self.position()

    @guarded("rebuild the run index")
    def rebuild(self) -> int:
        """Drop every row and the tracking position, then index the log from the start."""
        self._reset()
        return self.catch_up_fully()

    @abstractmethod
    def _write(self, rows: Sequence[IndexRow], gone: Sequence[str], tracking: Tracking | None) -> None:
        """Upsert ``rows``, delete the rows of ``gone`` runs and record ``tracking`` (if any) in
        one transaction (IntegrityError, and nothing written, if the position moved past it)."""

    @abstractmethod
    def _reset(self) -> None:
        """Delete all rows and the tracking position."""

    @abstractmethod
    def rows(self) -> list[IndexRow]:
        """Every row, ordered by run id."""

    @abstractmethod
    def get(self, run_id: str) -> IndexRow | None:
        """The row of one run (None when the index has not seen it)."""

    @abstractmethod
    def damaged_runs(self) -> list[str]:
        """The ids of the runs indexed as damaged."""

    @abstractmethod
    def next_wake(self, keys: Iterable[str]) -> datetime | None:
        """The earliest ``runnable_at`` among runs of these workflow keys."""

    @abstractmethod
    def runnable(self, now: datetime, keys: Iterable[str], limit: int) -> list[tuple[str, int]]:
        """``(run_id, version)`` of runs of these workflow keys runnable at ``now``, oldest first."""

    def changed_since(self, since: datetime, keys: Iterable[str], limit: int) -> list[IndexRow]:
        """Rows of runs of these workflow keys whose last event is later than ``since``, oldest first
        (what an outside scheduler follows to learn of signals and cancellations)."""
        wanted = set(keys)
        rows = sorted((r for r in self.rows() if r.updated_at > since and r.workflow_key in wanted),
                      key=lambda r: r.updated_at)
        return rows[:limit]


class MemoryRunIndex(RunIndex):
    """The run index of a ``memory://`` store (in this process only)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._rows: dict[str, IndexRow] = {}
        self._position: int | None = None
        self._lock = threading.Lock()

    def insert_tracking(self, tracking: Tracking) -> None:
        with self._lock:
            self._track(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._position if application_name == TRACKING_NAME else None

    def _track(self, tracking: Tracking) -> None:
        if self._position is not None and self._position >= tracking.notification_id:
            raise IntegrityError(f"position {tracking.notification_id} not after {self._position}")
        self._position = tracking.notification_id

    def _write(self, rows: Sequence[IndexRow], gone: Sequence[str], tracking: Tracking | None) -> None:
        with self._lock:
            if tracking is not None:
                self._track(tracking)
            for row in rows:
                old = self._rows.get(row.run_id)
                if old is None or old.version <= row.version:
                    self._rows[row.run_id] = row
            for run_id in gone:
                self._rows.pop(run_id, None)

    def _reset(self) -> None:
        with self._lock:
            self._rows.clear()
            self._position = None

    def rows(self) -> list[IndexRow]:
        with self._lock:
            return sorted(self._rows.values(), key=lambda r: r.run_id)

    def get(self, run_id: str) -> IndexRow | None:
        with self._lock:
            return self._rows.get(run_id)

    def damaged_runs(self) -> list[str]:
        with self._lock:
            return sorted(r.run_id for r in self._rows.values() if r.status == DAMAGED)

    def next_wake(self, keys: Iterable[str]) -> datetime | None:
        wanted = set(keys)
        with self._lock:
            times = [r.runnable_at for r in self._rows.values() if r.runnable_at and r.workflow_key in wanted]
        return min(times, default=None)

    def runnable(self, now: datetime, keys: Iterable[str], limit: int) -> list[tuple[str, int]]:
        wanted = set(keys)
        with self._lock:
            due = [r for r in self._rows.values()
                   if r.runnable_at is not None and r.runnable_at <= now and r.workflow_key in wanted]
        due.sort(key=lambda r: r.runnable_at or EPOCH)
        return [(r.run_id, r.version) for r in due[:limit]]


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


class SQLiteRunIndex(SQLiteTrackingRecorder, RunIndex):
    """The run index of a SQLite store: a table in the same file, next to the events."""

    def __init__(self, store: Store, datastore: SQLiteDatastore) -> None:
        super().__init__(datastore)
        self.store = store

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), *sqlite.CREATE]

    def create_table(self) -> None:
        create_racing(super().create_table)  # processes opening a new store at once

    @staticmethod
    def _params(row: IndexRow) -> dict[str, Any]:
        return {
            "run_id": row.run_id, "workflow": row.workflow, "workflow_version": row.workflow_version,
            "workflow_key": row.workflow_key, "status": row.status, "runnable_at": _ts(row.runnable_at),
            "version": row.version, "updated_at": _ts(row.updated_at),
        }

    @staticmethod
    def _row(r: Any) -> IndexRow:
        return IndexRow(
            run_id=r[0], workflow=r[1], workflow_version=r[2], status=r[3], runnable_at=_dt(r[4]),
            version=r[5], updated_at=_dt(r[6]) or EPOCH,
        )

    def _write(self, rows: Sequence[IndexRow], gone: Sequence[str], tracking: Tracking | None) -> None:
        with self.datastore.transaction(commit=True) as c:
            for row in rows:
                c.execute(sqlite.UPSERT_ROW, self._params(row))
            for run_id in gone:
                c.execute(sqlite.DELETE_ROW, {"run_id": run_id})
            if tracking is not None:
                _internals.insert_tracking(self, c, tracking)

    def _reset(self) -> None:
        with self.datastore.transaction(commit=True) as c:
            for statement in sqlite.RESET:
                c.execute(statement, {"name": TRACKING_NAME})

    @guarded("read the run index")
    def rows(self) -> list[IndexRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.SELECT_ROWS)
            return [self._row(r) for r in c.fetchall()]

    @guarded("read the run index row of run {run_id!r}")
    def get(self, run_id: str) -> IndexRow | None:
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.SELECT_ROW, {"run_id": run_id})
            found = c.fetchone()
        return self._row(found) if found else None

    @guarded("read the run index")
    def damaged_runs(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.SELECT_DAMAGED, {"status": DAMAGED})
            return [r[0] for r in c.fetchall()]

    @guarded("read the run index")
    def next_wake(self, keys: Iterable[str]) -> datetime | None:
        keys = list(keys)
        if not keys:
            return None
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.NEXT_WAKE, {"keys": sqlite.json_list(keys)})
            return _dt(c.fetchone()[0])

    @guarded("read the run index")
    def runnable(self, now: datetime, keys: Iterable[str], limit: int) -> list[tuple[str, int]]:
        keys = list(keys)
        if not keys or limit <= 0:
            return []
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.RUNNABLE, {"now": now.timestamp(), "keys": sqlite.json_list(keys), "limit": limit})
            return [(r[0], r[1]) for r in c.fetchall()]

    @guarded("read the run index")
    def changed_since(self, since: datetime, keys: Iterable[str], limit: int) -> list[IndexRow]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(sqlite.CHANGED, {"since": since.timestamp(), "keys": sqlite.json_list(list(keys)),
                                       "limit": limit})
            return [self._row(r) for r in c.fetchall()]


class PostgresRunIndex(PostgresTrackingRecorder, RunIndex):
    """The run index of a PostgreSQL store, shared by every worker on it (see :mod:`.leases`)."""

    def __init__(self, store: Store, datastore: PostgresDatastore) -> None:
        super().__init__(datastore, tracking_table_name=pg.TRACKING_TABLE)
        self.store = store
        self.lock_key = f"{datastore.schema}.phaseledger_runindex"
        # The creating transaction first takes a lock, so workers starting on a fresh schema
        # at once create the tables one after the other.
        lock = self.sql(pg.CREATE_LOCK, key=Literal(self.lock_key + ":create"))
        self.sql_create_statements.insert(0, create_statement(lock))
        self.sql_create_statements.extend(create_statement(self.sql(s)) for s in pg.CREATE)

    def sql(self, template: str, **names: str) -> str:
        """A template of :mod:`phaseledger.store.sql.postgres` for the store's schema."""
        return pg.sql(template, self.datastore.schema, **names)

    def create_table(self) -> None:
        # Several workers may start on a fresh schema at once: creation is serialised by an
        # advisory lock, and a worker that raced another's migration row simply tries again.
        create_racing(super().create_table)

    def _write(self, rows: Sequence[IndexRow], gone: Sequence[str], tracking: Tracking | None) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(pg.TRY_INDEX_LOCK if tracking is not None else pg.WAIT_INDEX_LOCK, {"key": self.lock_key})
            locked = curs.fetchone()
            if not (locked and locked["locked"]):
                raise IntegrityError("another worker is indexing the log now")
            upsert = self.sql(pg.UPSERT_ROW)
            curs.executemany(upsert, [
                {"run_id": r.run_id, "workflow": r.workflow, "workflow_version": r.workflow_version,
                 "workflow_key": r.workflow_key, "status": r.status, "runnable_at": r.runnable_at,
                 "version": r.version, "updated_at": r.updated_at}
                for r in sorted(rows, key=lambda r: r.run_id)
            ])
            if gone:
                curs.execute(self.sql(pg.DELETE_ROWS), {"run_ids": list(gone)})
            if tracking is not None:
                _internals.insert_tracking(self, curs, tracking)

    def _reset(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            for statement in pg.RESET:
                curs.execute(self.sql(statement), {"name": TRACKING_NAME})

    @staticmethod
    def _row(r: dict[str, Any]) -> IndexRow:
        return IndexRow(
            run_id=r["run_id"], workflow=r["workflow"], workflow_version=r["workflow_version"],
            status=r["status"], runnable_at=_aware(r["runnable_at"]), version=r["version"],
            updated_at=_aware(r["updated_at"]) or EPOCH,
        )

    @guarded("read the run index")
    def rows(self) -> list[IndexRow]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.SELECT_ROWS))
            return [self._row(r) for r in curs.fetchall()]

    @guarded("read the run index row of run {run_id!r}")
    def get(self, run_id: str) -> IndexRow | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.SELECT_ROW), {"run_id": run_id})
            found = curs.fetchone()
        return self._row(found) if found else None

    @guarded("read the run index")
    def damaged_runs(self) -> list[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.SELECT_DAMAGED), {"status": DAMAGED})
            return [r["run_id"] for r in curs.fetchall()]

    @guarded("read the run index")
    def next_wake(self, keys: Iterable[str]) -> datetime | None:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.NEXT_WAKE), {"keys": list(keys)})
            found = curs.fetchone()
        return _aware(found["next_wake"]) if found else None

    @guarded("read the run index")
    def runnable(self, now: datetime, keys: Iterable[str], limit: int) -> list[tuple[str, int]]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.RUNNABLE), {"now": now, "keys": list(keys), "limit": limit})
            return [(r["run_id"], r["version"]) for r in curs.fetchall()]

    @guarded("read the run index")
    def changed_since(self, since: datetime, keys: Iterable[str], limit: int) -> list[IndexRow]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql(pg.CHANGED), {"since": since, "keys": list(keys), "limit": limit})
            return [self._row(r) for r in curs.fetchall()]


def open_run_index(store: Store, *, create: bool = True) -> RunIndex:
    """The run index of a store; its tables are created unless ``create`` is False (the
    caller creates them when it first finds them missing)."""
    return store.run_index(create=create)
