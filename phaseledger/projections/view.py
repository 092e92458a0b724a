"""The materialised view of the reports: eventsourcing tracking recorders with report tables.

The view is a :class:`~eventsourcing.persistence.TrackingRecorder`, so the rows it writes
and the position it has reached are committed in one transaction
(``_insert_tracking(cursor, tracking)`` in the same cursor as the rows): each event of the
log is applied exactly once, whichever process applies it and however often it crashes.

Each transaction first claims the position of its first event (the tracking row only moves
forward, so a second processor that reaches the same events fails there and writes
nothing), then checks the generation that every rebuild bumps (a processor started before
a rebuild writes nothing after it), then folds the events and moves the position to the
last one.

``memory://`` stores get the same SQLite view in an in-memory database of the process.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import InfrastructureFactory, IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.sql import SQL

from phaseledger.projections._dialect import Dialect
from phaseledger.projections._fold import Fold
from phaseledger.projections.errors import AlreadyApplied, ProjectionOutdated, ProjectionReset
from phaseledger.projections.schema import (
    META,
    PROJECTION_NAME,
    READ_MODELS,
    SCHEMA_VERSION,
    TRACKING_TABLE,
    Table,
    create_statements,
)
from phaseledger.store.eventstore import StoreURL
from phaseledger.store.faults import create_racing
from phaseledger.store.postgres import use_lifo_pool


@dataclass(frozen=True)
class ViewState:
    """Where the view stands: read in one transaction."""

    position: int | None
    """The last notification id applied (None before the first)."""
    generation: int
    schema_version: int


class ReportView:
    """What both backends' report views do; mixed into a tracking recorder class."""

    dialect: Dialect
    datastore: Any

    def _report_create_statements(self) -> list[str]:
        return [s for t in (*READ_MODELS, META) for s in create_statements(t, self.dialect.name, self.dialect.qualify)]

    def _init_meta(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self.dialect.sql(
                    "INSERT INTO {meta} (name, schema_version, generation, rebuilt_at) "
                    "VALUES (%(name)s, %(schema_version)s, 1, NULL) ON CONFLICT (name) DO NOTHING"
                ),
                {"name": PROJECTION_NAME, "schema_version": SCHEMA_VERSION},
            )

    # -- reading -------------------------------------------------------------------------

    def _meta(self, curs: Any) -> tuple[int, int]:
        curs.execute(self.dialect.sql("SELECT generation, schema_version FROM {meta} WHERE name = %(name)s"),
                     {"name": PROJECTION_NAME})
        row = curs.fetchone()
        if row is None:  # tables dropped behind our back: treat as a fresh generation
            return 0, SCHEMA_VERSION
        data = dict(row)
        return int(data["generation"]), int(data["schema_version"])

    def state(self, application_name: str) -> ViewState:
        """The position, generation and layout of the view, read together."""
        with self.datastore.transaction(commit=False) as curs:
            generation, schema_version = self._meta(curs)
            position = self._max_tracking_id(application_name, curs)  # type: ignore[attr-defined]
        return ViewState(position, generation, schema_version)

    def generation(self) -> int:
        """The current generation (bumped by every rebuild)."""
        with self.datastore.transaction(commit=False) as curs:
            return self._meta(curs)[0]

    def fetch(self, template: str, params: dict[str, Any] | None = None,
              table: Table | None = None) -> list[dict[str, Any]]:
        """Run a read query (a template with ``{table}`` names and ``%(param)s``) and decode its rows."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.dialect.sql(template), params or {})
            rows = curs.fetchall()
        return [self.dialect.from_db(table, row) for row in rows]

    # -- writing -------------------------------------------------------------------------

    def apply(self, items: Sequence[tuple[Any, int]], *, application_name: str, generation: int) -> int:
        """Apply ``(event, notification_id)`` pairs in log order, in one transaction.

        Raises :class:`AlreadyApplied` when another processor has reached the first one
        (nothing is written), :class:`ProjectionReset` when the view was rebuilt since
        ``generation`` was read, and :class:`ProjectionOutdated` for tables of another layout.
        """
        if not items:
            return 0
        first, last = items[0][1], items[-1][1]
        with self.datastore.transaction(commit=True) as curs:
            try:
                self._insert_tracking(curs, Tracking(application_name, first))  # type: ignore[attr-defined]
            except IntegrityError:
                raise AlreadyApplied(first) from None
            found, schema_version = self._meta(curs)
            if schema_version != SCHEMA_VERSION:
                raise ProjectionOutdated(schema_version, SCHEMA_VERSION)
            if found != generation:
                raise ProjectionReset(generation, found)
            fold = Fold(self.dialect, curs)
            for event, _ in items:
                fold.apply(event)
            fold.flush()
            if last != first:
                self._insert_tracking(curs, Tracking(application_name, last))  # type: ignore[attr-defined]
        return len(items)

    def reset(self, application_name: str) -> int:
        """Drop and re-create the report tables and forget the position, in one transaction.

        Returns the new generation; processors holding an older one write nothing more.
        """
        with self.datastore.transaction(commit=True) as curs:
            # Write before reading: a SQLite transaction that reads first cannot take the write
            # lock once another connection has written ("database is locked" at once).
            curs.execute(self.dialect.sql("DELETE FROM {tracking} WHERE application_name = %(app)s"),
                         {"app": application_name})
            generation, _ = self._meta(curs)
            for table in READ_MODELS:
                curs.execute(self.dialect.sql(f"DROP TABLE IF EXISTS {{{table.key}}}"))
                for statement in create_statements(table, self.dialect.name, self.dialect.qualify):
                    curs.execute(statement)
            row = {"name": PROJECTION_NAME, "schema_version": SCHEMA_VERSION, "generation": generation + 1,
                   "rebuilt_at": datetime.now(UTC)}
            curs.execute(
                self.dialect.sql(
                    "INSERT INTO {meta} (name, schema_version, generation, rebuilt_at) "
                    "VALUES (%(name)s, %(schema_version)s, %(generation)s, %(rebuilt_at)s) "
                    "ON CONFLICT (name) DO UPDATE SET schema_version = excluded.schema_version, "
                    "generation = excluded.generation, rebuilt_at = excluded.rebuilt_at"
                ),
                self.dialect.to_db(META, row),
            )
        return generation + 1


class SQLiteReportView(ReportView, SQLiteTrackingRecorder):
    """The report view in a SQLite database (the store's file, or memory for ``memory://``).

    Its tracking table is ``report_tracking``, apart from eventsourcing's default
    ``tracking`` table that other parts of an application may use in the same file.
    """

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        self.dialect = Dialect("sqlite")
        super().__init__(datastore, **kwargs)
        self.insert_tracking_statement = (
            f"INSERT INTO {TRACKING_TABLE} VALUES (:application_name, :notification_id) "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = :notification_id "
            f"WHERE {TRACKING_TABLE}.notification_id < :notification_id RETURNING notification_id"
        )
        self.select_max_tracking_id_statement = (
            f"SELECT MAX(notification_id) FROM {TRACKING_TABLE} WHERE application_name=?"
        )

    def construct_create_table_statements(self) -> list[str]:
        return [
            (f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (application_name TEXT, notification_id INTEGER, "
             "PRIMARY KEY (application_name)) WITHOUT ROWID"),
            *self._report_create_statements(),
        ]

    def create_table(self) -> None:
        create_racing(super().create_table)  # processes opening a new store's reports at once
        self._init_meta()


class PostgresReportView(ReportView, PostgresTrackingRecorder):
    """The report view in the store's PostgreSQL database and schema (tracking: ``report_tracking``)."""

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        kwargs["tracking_table_name"] = TRACKING_TABLE
        super().__init__(datastore, **kwargs)
        use_lifo_pool(self.datastore)  # gives up within seconds during an outage, back soon after it
        self.dialect = Dialect("postgresql", self.datastore.schema)
        self.sql_create_statements.extend(SQL(s) for s in self._report_create_statements())  # type: ignore[arg-type]

    def create_table(self) -> None:
        create_racing(super().create_table)  # processes opening a new store's reports at once
        self._init_meta()


def view_env(url: StoreURL) -> Environment:
    """The environment that builds the report view of a store (named after the projection)."""
    if url.backend == "memory":
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": f"file:phaseledger-report-{uuid.uuid4().hex}?mode=memory&cache=shared",
        }
    else:
        env = dict(url.env)
        if url.backend == "postgresql":
            env["POSTGRES_POOL_SIZE"] = "1"
            env["POSTGRES_MAX_OVERFLOW"] = "4"
    return Environment(PROJECTION_NAME, env)


def open_view(url: StoreURL) -> ReportView:
    """Build the report view of a store, creating its tables when they do not exist."""
    view_class = PostgresReportView if url.backend == "postgresql" else SQLiteReportView
    return InfrastructureFactory.construct(view_env(url)).tracking_recorder(view_class)  # type: ignore[return-value]
