"""The materialised view of the reports: eventsourcing tracking recorders with report tables.

The view is a :class:`~eventsourcing.persistence.TrackingRecorder`, so the rows it writes
and the position it has reached are committed in one transaction (the tracking row is
written in the same cursor as the rows): each event of the log is applied exactly once,
whichever process applies it and however often it crashes.

Each transaction first claims the position of its first event (the tracking row only moves
forward, so a second processor that reaches the same events fails there and writes
nothing), then checks the generation that every rebuild bumps (a processor started before
a rebuild writes nothing after it), then folds the events and moves the position to the
last one.

The store's backend says where the view lives (:meth:`Store.report_infrastructure`):
``memory://`` stores get the same SQLite view in an in-memory database of the process.
Its statements are in :mod:`phaseledger.store.sql.reports` and built from
:mod:`.schema`, rendered by the view's :class:`~._dialect.Dialect`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder

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
from phaseledger.store import _internals
from phaseledger.store.eventstore import Store
from phaseledger.store.faults import create_racing
from phaseledger.store.postgres import create_statement, use_lifo_pool
from phaseledger.store.sql import reports as sql
from phaseledger.store.sql import sqlite


@dataclass(frozen=True)
class ViewState:
    """Where the view stands: read in one transaction."""

    position: int | None
    """The last notification id applied (None before the first)."""
    generation: int
    schema_version: int


class ReportView(TrackingRecorder):
    """What both backends' report views do; mixed into a backend's tracking recorder class."""

    dialect: Dialect
    datastore: Any

    def _report_create_statements(self) -> list[str]:
        return [s for t in (*READ_MODELS, META) for s in create_statements(t, self.dialect.name, self.dialect.schema)]

    def _init_meta(self) -> None:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(self.dialect.sql(sql.INIT_META), {"name": PROJECTION_NAME, "schema_version": SCHEMA_VERSION})

    # -- reading -------------------------------------------------------------------------

    def _meta(self, curs: Any) -> tuple[int, int]:
        curs.execute(self.dialect.sql(sql.SELECT_META), {"name": PROJECTION_NAME})
        row = curs.fetchone()
        if row is None:  # tables dropped behind our back: treat as a fresh generation
            return 0, SCHEMA_VERSION
        data = dict(row)
        return int(data["generation"]), int(data["schema_version"])

    def state(self, application_name: str) -> ViewState:
        """The position, generation and layout of the view, read together."""
        with self.datastore.transaction(commit=False) as curs:
            generation, schema_version = self._meta(curs)
            position = _internals.max_tracking_id(self, application_name, curs)
        return ViewState(position, generation, schema_version)

    def generation(self) -> int:
        """The current generation (bumped by every rebuild)."""
        with self.datastore.transaction(commit=False) as curs:
            return self._meta(curs)[0]

    def fetch(self, template: str, params: dict[str, Any] | None = None,
              table: Table | None = None) -> list[dict[str, Any]]:
        """Run a read query (a template with ``{table}`` names and ``%(param)s``) and decode its rows."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.dialect.sql(template, table.key if table is not None else None), params or {})
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
                _internals.insert_tracking(self, curs, Tracking(application_name, first))
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
                _internals.insert_tracking(self, curs, Tracking(application_name, last))
        return len(items)

    def reset(self, application_name: str) -> int:
        """Drop and re-create the report tables and forget the position, in one transaction.

        Returns the new generation; processors holding an older one write nothing more.
        """
        with self.datastore.transaction(commit=True) as curs:
            # Write before reading: a SQLite transaction that reads first cannot take the write
            # lock once another connection has written ("database is locked" at once).
            curs.execute(self.dialect.sql(sql.FORGET_POSITION), {"app": application_name})
            generation, _ = self._meta(curs)
            for table in READ_MODELS:
                curs.execute(self.dialect.sql(sql.DROP_TABLE, table.key))
                for statement in create_statements(table, self.dialect.name, self.dialect.schema):
                    curs.execute(statement)
            row = {"name": PROJECTION_NAME, "schema_version": SCHEMA_VERSION, "generation": generation + 1,
                   "rebuilt_at": datetime.now(UTC)}
            curs.execute(self.dialect.sql(sql.SET_META), self.dialect.to_db(META, row))
        return generation + 1


class SQLiteReportView(ReportView, SQLiteTrackingRecorder):
    """The report view in a SQLite database (the store's file, or memory for ``memory://``).

    Its tracking table is ``report_tracking``, apart from eventsourcing's default
    ``tracking`` table that other parts of an application may use in the same file.
    """

    def __init__(self, datastore: Any, **kwargs: Any) -> None:
        self.dialect = Dialect("sqlite")
        super().__init__(datastore, **kwargs)
        self.insert_tracking_statement = sqlite.sql(sqlite.INSERT_TRACKING, tracking=TRACKING_TABLE)
        self.select_max_tracking_id_statement = sqlite.sql(sqlite.SELECT_MAX_TRACKING_ID, tracking=TRACKING_TABLE)

    def construct_create_table_statements(self) -> list[str]:
        return [sqlite.sql(sqlite.CREATE_TRACKING, tracking=TRACKING_TABLE), *self._report_create_statements()]

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
        self.sql_create_statements.extend(create_statement(s) for s in self._report_create_statements())

    def create_table(self) -> None:
        create_racing(super().create_table)  # processes opening a new store's reports at once
        self._init_meta()


REPORT_VIEWS: dict[str, type[ReportView]] = {"sqlite": SQLiteReportView, "postgresql": PostgresReportView}
"""The report view written in each SQL dialect."""


def open_view(store: Store) -> ReportView:
    """Build the report view of a store, creating its tables when they do not exist."""
    view_class = REPORT_VIEWS[store.report_dialect]
    return store.report_infrastructure(PROJECTION_NAME).tracking_recorder(view_class)
