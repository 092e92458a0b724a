"""The report projection: which events it reads and how one event reaches the view.

:class:`ReportProjection` is an eventsourcing :class:`~eventsourcing.projection.Projection`,
so eventsourcing's :class:`~eventsourcing.projection.ProjectionRunner` can drive it from a
subscription to the log (PostgreSQL, memory). :func:`read_log` pages through the
notification log for catch-up and rebuilds (and for SQLite, which has no subscriptions).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from phaseledger.projections.errors import AlreadyApplied
from phaseledger.projections.schema import PROJECTION_NAME
from phaseledger.projections.view import ReportView
from phaseledger.store.eventstore import RUN_TOPICS

TOPICS: tuple[str, ...] = tuple(sorted(RUN_TOPICS))
"""Topics of every run event class: the projection reads only these from the log."""


class ReportProjection(Projection[Any]):
    """Applies each run event to the report view, with its tracking, exactly once.

    A processor reads the view's generation when it starts; if the view is rebuilt under it,
    its next transaction raises :class:`~phaseledger.projections.ProjectionReset` and writes
    nothing. An event another processor has applied already is skipped, and so is a row
    that cannot be read (it arrives as an :class:`~phaseledger.store.mapper.Unreadable`,
    already logged): its position is recorded and the events after it are applied.
    """

    name = PROJECTION_NAME
    topics = TOPICS

    def __init__(self, view: ReportView) -> None:
        super().__init__(view)
        self.generation = view.generation()
        """The view's generation when this processor started."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply one event and record its position in the same transaction."""
        try:
            self._view.apply([(domain_event, tracking.notification_id)],
                             application_name=tracking.application_name, generation=self.generation)
        except AlreadyApplied:
            pass


def read_log(app: Application[Any], after: int | None, limit: int) -> Sequence[Any]:
    """Up to ``limit`` run-event notifications after position ``after``, in log order."""
    return app.recorder.select_notifications(start=after or 0, limit=limit, topics=TOPICS, inclusive_of_start=False)


def count_after(app: Application[Any], after: int | None) -> int:
    """How many run-event notifications the log holds after position ``after``."""
    recorder: Any = app.recorder
    table = getattr(recorder, "events_table_name", None)
    datastore = getattr(recorder, "datastore", None)
    if table is None or datastore is None:  # memory: count in pages
        return sum(len(page) for page in _pages(app, after, 1000))
    schema = getattr(datastore, "schema", None)
    name = f'"{schema}".{table}' if schema else table
    marks = ", ".join(["%s" if schema else "?"] * len(TOPICS))
    mark = "%s" if schema else "?"
    column = "notification_id" if schema else "rowid"  # SQLite numbers notifications by rowid
    sql = f"SELECT COUNT(*) AS n FROM {name} WHERE {column} > {mark} AND topic IN ({marks})"
    with datastore.transaction(commit=False) as curs:
        curs.execute(sql, (after or 0, *TOPICS))
        row = curs.fetchone()
    return int(dict(row)["n"]) if row is not None else 0


def _pages(app: Application[Any], after: int | None, limit: int) -> Iterator[Sequence[Any]]:
    while page := read_log(app, after, limit):
        yield page
        after = page[-1].id
