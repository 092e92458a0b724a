"""Retention: removing what finished runs no longer need.

eventsourcing's recorders have no delete operation, so this module deletes rows itself:
with SQL on SQLite (tables ``stored_events`` / ``stored_snapshots``) and PostgreSQL
(``phaseledger_events`` / ``phaseledger_snapshots`` in the store's schema), and through
the in-memory recorder's index on ``memory://``. The table names are read from the
recorders, not hard-coded.

What :meth:`Retention.compact` keeps for a finished run compacted ``before=V`` (V is the
run's last version by default):

- the ``RunStarted`` event (version 1): the run is still listed, its lineage (parent
  and forks) still resolves, and ``engine.history`` still shows when and how it began;
- every event from version V on (by default just the last one: how the run ended);
- a snapshot at version V, so ``engine.get``, ``engine.state_at(run, v)`` for ``v >= V``,
  ``engine.retry`` of a failed run and forks at ``v >= V`` work as before.

It removes the events strictly between 1 and V and the snapshots older than V.
``state_at``, ``checkpoint`` and ``fork`` at a removed version raise
:class:`~phaseledger.HistoryCompacted`. Read models already built from the log keep
their rows (they are separate tables); a read model rebuilt from position 0 afterwards
sees only what was kept. Forks are separate copies, so compacting a parent never breaks
them. Unfinished runs are never compacted (:class:`~phaseledger.RunNotFinished`).

A :class:`RetentionPolicy` applies the same per run, and may delete whole finished runs
(all their events and snapshots). Damaged runs (a row of which cannot be read) are left
alone and listed in the report. Runs with forks are compacted instead of deleted
unless ``keep_forked=False``. On SQLite, a run that holds the store's newest row is
compacted instead of deleted, because SQLite would hand that row's notification id to
the next event and read models that tracked it would skip that event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from phaseledger.domain.errors import (
    CorruptEvent,
    InvalidInput,
    PhaseledgerError,
    RunNotFinished,
    StoreUnavailable,
)
from phaseledger.store.faults import guarded, store_errors

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine


class CompactionReport(BaseModel):
    """What compacting one run removed and kept."""

    run_id: str
    snapshot_version: int
    """The version of the snapshot the run now loads from (the earliest version kept after 1)."""
    removed_events: int = 0
    removed_snapshots: int = 0


class RetentionPolicy(BaseModel):
    """Which finished runs to compact or delete, by how long ago they finished."""

    compact_after: timedelta | None = None
    """Compact finished runs that finished longer ago than this (None: never)."""
    delete_after: timedelta | None = None
    """Delete finished runs that finished longer ago than this (None: never)."""
    keep_forked: bool = True
    """Compact, never delete, runs that have forks (their lineage keeps a live parent)."""


class RetentionReport(BaseModel):
    """What applying a :class:`RetentionPolicy` did."""

    compacted: list[CompactionReport] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    """Ids of the runs deleted, events and snapshots alike."""
    unfinished: int = 0
    """Runs left alone because they are not finished."""
    damaged: list[str] = Field(default_factory=list)
    """Ids of the runs left alone because a stored row of theirs cannot be read."""


class Retention:
    """Compaction and retention for one engine's store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store

    # -- deleting rows (the only place that does) ---------------------------------------

    def _delete(self, run_id: str, below: int | None) -> tuple[int, int]:
        """Delete the run's events 1 < version < ``below`` and snapshots < ``below``;
        everything of the run when ``below`` is None. Returns (events, snapshots) removed."""
        app = self.store.app
        recorders = [(app.recorder, True)]
        if app.snapshots is not None:
            recorders.append((app.snapshots.recorder, False))
        backend = self.store.url.backend
        if backend == "memory":
            counts = []
            for recorder, is_log in recorders:
                with recorder._database_lock:
                    index = recorder._stored_events_index[str(run_id)]
                    doomed = [v for v in index if _doomed(v, below, keep_first=is_log)]
                    for version in doomed:
                        del index[version]
                counts.append(len(doomed))
            counts += [0] * (2 - len(counts))
            return counts[0], counts[1]
        with store_errors(self.store.url, f"delete events of run {run_id!r}"):
            if backend == "sqlite":
                return self._delete_sqlite(recorders, run_id, below)
            return self._delete_postgres(recorders, run_id, below)

    @staticmethod
    def _where(below: int | None, is_log: bool, mark: str) -> tuple[str, list[Any]]:
        if below is None:
            return "", []
        first = " AND originator_version > 1" if is_log else ""
        return f"{first} AND originator_version < {mark}", [below]

    def _delete_sqlite(self, recorders: list[tuple[Any, bool]], run_id: str, below: int | None) -> tuple[int, int]:
        counts = [0, 0]
        datastore = recorders[0][0].datastore
        with datastore.transaction(commit=True) as cursor:
            for i, (recorder, is_log) in enumerate(recorders):
                extra, params = self._where(below, is_log, "?")
                cursor.execute(
                    f"DELETE FROM {recorder.events_table_name} WHERE originator_id = ?{extra}",  # noqa: S608
                    [run_id, *params],
                )
                cursor.execute("SELECT changes()")
                counts[i] = int(cursor.fetchone()[0])
        return counts[0], counts[1]

    def _delete_postgres(self, recorders: list[tuple[Any, bool]], run_id: str,
                         below: int | None) -> tuple[int, int]:
        from psycopg import sql

        counts = [0, 0]
        datastore = recorders[0][0].datastore
        with datastore.transaction(commit=True) as cursor:
            for i, (recorder, is_log) in enumerate(recorders):
                extra, params = self._where(below, is_log, "%s")
                statement = sql.SQL("DELETE FROM {}.{} WHERE originator_id = %s" + extra).format(
                    sql.Identifier(datastore.schema), sql.Identifier(recorder.events_table_name)
                )
                cursor.execute(statement, [run_id, *params])
                counts[i] = cursor.rowcount
        return counts[0], counts[1]

    @guarded("read the newest row of the log")
    def _holds_newest_row(self, run_id: str) -> bool:
        if self.store.url.backend != "sqlite":
            return False
        recorder = self.store.app.recorder
        with recorder.datastore.transaction(commit=False) as cursor:
            table = recorder.events_table_name
            cursor.execute(f"SELECT MAX(rowid) FROM {table}")  # noqa: S608
            newest = cursor.fetchone()[0]
            cursor.execute(f"SELECT MAX(rowid) FROM {table} WHERE originator_id = ?", [run_id])  # noqa: S608
            return bool(newest is not None and cursor.fetchone()[0] == newest)

    # -- compaction ----------------------------------------------------------------------

    @guarded("compact run {run_id!r}")
    def compact(self, run_id: str, *, before: int | None = None) -> CompactionReport:
        """Keep a snapshot at ``before`` (default: the last version) and remove the finished run's
        events between its first event and that version; see the module docs for what is kept."""
        app = self.store.app
        if app.snapshots is None:
            raise PhaseledgerError(
                "compaction keeps a snapshot in place of the removed events, and this store has "
                "snapshots off: create the Engine with snapshot_every=N (the default is 100)"
            )
        run = self.store.load(run_id)
        if not run.finished:
            raise RunNotFinished(run_id, run.status, "compact")
        head = run.version
        before = head if before is None else before
        if isinstance(before, bool) or not isinstance(before, int) or not 2 <= before <= head:
            raise InvalidInput(f"before= must be a version from 2 to {head} for run {run_id!r}, got {before!r}")
        earliest = self.engine.time_travel.earliest_version(run_id)
        if before <= earliest:
            return CompactionReport(run_id=run_id, snapshot_version=earliest)
        if not list(app.snapshots.get(run_id, gt=before - 1, lte=before)):
            self.store.take_snapshot(run_id, version=before)
        check = self.store.load(run_id, version=before)
        if check.version != before:  # pragma: no cover - the snapshot was not written
            raise StoreUnavailable(f"the snapshot of run {run_id!r} at version {before} could not be read back")
        removed_events, removed_snapshots = self._delete(run_id, before)
        return CompactionReport(run_id=run_id, snapshot_version=before, removed_events=removed_events,
                                removed_snapshots=removed_snapshots)

    # -- policies ------------------------------------------------------------------------

    def apply(self, policy: RetentionPolicy, *, now: datetime | None = None) -> RetentionReport:
        """Apply ``policy`` to every finished run of the store; unfinished runs are left alone."""
        now = now or datetime.now(UTC)
        report = RetentionReport()
        run_ids = [rid for rid in self.store.run_ids() if not self.store.is_memory or self.store.exists(rid)]
        parents: set[str] = set()
        if policy.keep_forked:
            started = self.engine.time_travel.started_events()
            parents = {event.parent["run_id"] for event in started if event.parent}
        for run_id in run_ids:
            try:
                run = self.store.load(run_id)
            except CorruptEvent:
                report.damaged.append(run_id)
                continue
            if not run.finished:
                report.unfinished += 1
                continue
            age = now - (run.finished_on or run.modified_on)
            if _older(age, policy.delete_after):
                if run_id not in parents and not self._holds_newest_row(run_id):
                    self._delete(run_id, None)
                    report.deleted.append(run_id)
                    continue
            if _older(age, policy.compact_after) or _older(age, policy.delete_after):
                result = self.compact(run_id)
                if result.removed_events or result.removed_snapshots:
                    report.compacted.append(result)
        return report


def _older(age: timedelta, limit: timedelta | None) -> bool:
    return limit is not None and age >= limit


def _doomed(version: int, below: int | None, *, keep_first: bool) -> bool:
    if below is None:
        return True
    return version < below and not (keep_first and version == 1)
