"""The report projection: which events it reads and how one event reaches the view.

:class:`ReportProjection` is an eventsourcing :class:`~eventsourcing.projection.Projection`,
so eventsourcing's :class:`~eventsourcing.projection.ProjectionRunner` can drive it from a
subscription to the log (PostgreSQL, memory). :func:`read_log` pages through the
notification log for catch-up and rebuilds (and for SQLite, which has no subscriptions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from phaseledger.projections.errors import AlreadyApplied
from phaseledger.projections.schema import PROJECTION_NAME
from phaseledger.projections.view import ReportView
from phaseledger.store.eventstore import RUN_TOPICS, Store

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
            self.view.apply([(domain_event, tracking.notification_id)],
                             application_name=tracking.application_name, generation=self.generation)
        except AlreadyApplied:
            pass


def read_log(store: Store, after: int | None, limit: int) -> Sequence[Any]:
    """Up to ``limit`` run-event notifications after position ``after``, in log order."""
    return store.notifications(after, limit, TOPICS)


def count_after(store: Store, after: int | None) -> int:
    """How many run-event notifications the log holds after position ``after``."""
    return store.count_notifications(after, TOPICS)
