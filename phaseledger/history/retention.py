"""Retention: removing what finished runs no longer need.

eventsourcing's recorders have no delete operation, so rows are deleted by the store's
backend (:meth:`Store.delete_events <phaseledger.Store.delete_events>`, see
:mod:`phaseledger.store.deleter`): with SQL on SQLite and PostgreSQL, from the tables the
recorders name, and through the in-memory recorder's index on ``memory://``.

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
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from phaseledger.domain.errors import (
    CorruptEvent,
    InvalidInput,
    PhaseledgerError,
    RunNotFinished,
    StoreUnavailable,
)
from phaseledger.store.faults import guarded

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

    # -- compaction ----------------------------------------------------------------------

    @guarded("compact run {run_id!r}")
    def compact(self, run_id: str, *, before: int | None = None) -> CompactionReport:
        """Keep a snapshot at ``before`` (default: the last version) and remove the finished run's
        events between its first event and that version; see the module docs for what is kept."""
        if not self.store.snapshotting:
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
        self.store.take_snapshot(run_id, version=before)  # with the journal, in place of one without
        check = self.store.load(run_id, version=before)
        if check.version != before:  # pragma: no cover - the snapshot was not written
            raise StoreUnavailable(f"the snapshot of run {run_id!r} at version {before} could not be read back")
        removed_events, removed_snapshots = self.store.delete_events(run_id, before)
        return CompactionReport(run_id=run_id, snapshot_version=before, removed_events=removed_events,
                                removed_snapshots=removed_snapshots)

    # -- policies ------------------------------------------------------------------------

    def apply(self, policy: RetentionPolicy, *, now: datetime | None = None) -> RetentionReport:
        """Apply ``policy`` to every finished run of the store; unfinished runs are left alone."""
        now = now or datetime.now(UTC)
        report = RetentionReport()
        run_ids = list(self.store.run_ids())
        parents: set[str] = set()
        if policy.keep_forked:
            parents = {event.parent["run_id"] for event in self.store.started_events() if event.parent}
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
                if run_id not in parents and not self.store.holds_newest_row(run_id):
                    self.store.delete_events(run_id, None)
                    report.deleted.append(run_id)
                    continue
            if _older(age, policy.compact_after) or _older(age, policy.delete_after):
                result = self.compact(run_id)
                if result.removed_events or result.removed_snapshots:
                    report.compacted.append(result)
        return report


def _older(age: timedelta, limit: timedelta | None) -> bool:
    return limit is not None and age >= limit

