"""eventsourcing's SQLite persistence, set up only when the store's file needs it."""

from __future__ import annotations

from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment

from phaseledger.store.sql import sqlite

EVENTS_TABLE = "stored_events"
SNAPSHOTS_TABLE = "stored_snapshots"
"""The tables eventsourcing's SQLite recorders keep a store's events and snapshots in."""


class SQLiteStoreFactory(SQLiteFactory):
    """The factory of a SQLite store's application: eventsourcing's, whose recorders create
    their tables only when the file lacks one of them.

    eventsourcing runs each recorder's ``CREATE TABLE IF NOT EXISTS`` in a write transaction
    of its own every time a store is opened. One query on the pool's first connection tells
    whether both tables are there (every opening of a store that exists: a restarted
    service's, a CLI command's); only then are the transactions left out. Each table is
    one ``CREATE TABLE`` statement (its primary key included), so a table that is there is
    whole.
    """

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        self._set_up = not super().env_create_table() or self._tables_present()

    def env_create_table(self) -> bool:
        """Whether recorders create their tables: only when the file lacks one of the store's."""
        return not self._set_up

    def _tables_present(self) -> bool:
        with self.datastore.get_connection(commit=False) as conn, conn.cursor() as cursor:
            cursor.execute(sqlite.TABLES_PRESENT, {"events": EVENTS_TABLE, "snapshots": SNAPSHOTS_TABLE})
            (present,) = cursor.fetchone()
        return bool(present == 2)
