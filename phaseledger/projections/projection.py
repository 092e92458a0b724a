"""The report projection: which events it reads and how they reach the view.

:class:`ReportProjection` is an eventsourcing :class:`~eventsourcing.projection.Projection`,
so eventsourcing's projection runners can drive it from a subscription to the log
(PostgreSQL, memory); the follower's runner hands it every event already pulled from the
log at once (:meth:`ReportProjection.process_events`), applied in one transaction.
:func:`read_log` pages through the notification log for catch-up and rebuilds (and for
SQLite, which has no subscriptions).
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


BATCH_SIZE = 500
"""The most events a follower applies in one transaction (a section of eventsourcing's subscriptions)."""


class ReportProjection(Projection[Any]):
    """Applies run events to the report view, with their tracking, exactly once.

    A processor reads the view's generation when it starts; if the view is rebuilt under it,
    its next transaction raises :class:`~phaseledger.projections.ProjectionReset` and writes
    nothing. Events another processor has applied already are skipped, and so is a row
    that cannot be read (it arrives as an :class:`~phaseledger.store.mapper.Unreadable`,
    already logged): its position is recorded and the events after it are applied.
    """

    name = PROJECTION_NAME
    topics = TOPICS
    batch_size = BATCH_SIZE
    """The most events a runner hands to :meth:`process_events` at once."""

    def __init__(self, view: ReportView) -> None:
        super().__init__(view)
        self.generation = view.generation()
        """The view's generation when this processor started."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Apply one event and record its position in the same transaction."""
        self.process_events([(domain_event, tracking)])

    def process_events(self, items: Sequence[tuple[Any, Tracking]]) -> None:
        """Apply events in log order and record the last one's position, in one transaction.

        The transaction claims the first event's position; when another processor has
        reached it (a catch-up in another process, say), nothing is written, and the events
        past the position it reached are applied in a new transaction: a batch that
        overlaps another processor's work neither skips nor applies anything twice.
        """
        if not items:
            return
        name = items[0][1].application_name
        pending = [(event, tracking.notification_id) for event, tracking in items]
        while pending:
            try:
                self.view.apply(pending, application_name=name, generation=self.generation)
                return
            except AlreadyApplied:
                position = self.view.state(name).position or 0
                pending = [(event, nid) for event, nid in pending if nid > position]


def read_log(store: Store, after: int | None, limit: int) -> Sequence[Any]:
    """Up to ``limit`` run-event notifications after position ``after``, in log order."""
    return store.notifications(after, limit, TOPICS)


def count_after(store: Store, after: int | None) -> int:
    """How many run-event notifications the log holds after position ``after``."""
    return store.count_notifications(after, TOPICS)
