"""eventsourcing's PostgreSQL recorder, appending each batch of events in one round trip.

eventsourcing 9.5 appends in a pipeline: BEGIN, ``SET LOCAL lock_timeout``, ``LOCK TABLE
... IN EXCLUSIVE MODE`` (so notification ids are committed in order), ``NOTIFY`` (for
subscribers), the INSERT, a sync to surface conflicts, then COMMIT in a second round trip;
and it packs the rows into a composite-type array. A journaled step appends one event,
so those round trips and that work are most of what a step costs on PostgreSQL.

:class:`OneTripRecorder` sends the same statements, in the same transaction, as one
simple-query message: the tables, the lock, the notification and the rows written are
exactly eventsourcing's, so everything that reads the store (repositories, notification
logs, subscriptions, projections) works unchanged. A conflicting version still raises
eventsourcing's ``IntegrityError`` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import retry
from psycopg import sql


class OneTripRecorder(PostgresApplicationRecorder):
    """A PostgreSQL application recorder whose appends take one round trip (see the module)."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events") -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._append_head = sql.SQL(
            "BEGIN; SET LOCAL lock_timeout = '{timeout}s'; LOCK TABLE {table} IN EXCLUSIVE MODE; "
            "NOTIFY {channel}; INSERT INTO {table} (originator_id, originator_version, topic, state) VALUES "
        ).format(
            timeout=sql.Literal(int(self.datastore.lock_timeout)),
            table=sql.Identifier(self.datastore.schema, self.events_table_name),
            channel=sql.Identifier(self.channel_name),
        )
        self._append_tail = sql.SQL(" RETURNING notification_id; COMMIT")
        self._row = sql.SQL("(%s, %s, %s, %s)")

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Append the events in one transaction, in one round trip; return their notification ids."""
        if not stored_events:
            return None
        query = self._append_head + sql.SQL(", ").join([self._row] * len(stored_events)) + self._append_tail
        params: list[Any] = []
        for event in stored_events:
            params += (str(event.originator_id), event.originator_version, event.topic, event.state)
        with self.datastore.get_connection() as conn:
            cursor = psycopg.ClientCursor(conn)
            try:
                cursor.execute(query, params)
                while not (cursor.statusmessage or "").startswith("INSERT"):
                    if not cursor.nextset():
                        raise psycopg.ProgrammingError("the INSERT of the append returned no result")
                ids = [row["notification_id"] for row in cursor.fetchall()]
            except psycopg.Error:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()  # leave nothing half-done on the pooled connection
                raise
            finally:
                cursor.close()
        if len(ids) != len(stored_events):
            raise psycopg.ProgrammingError(f"appended {len(stored_events)} events but got {len(ids)} ids")
        return ids
