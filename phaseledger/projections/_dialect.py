"""The small differences between SQLite and PostgreSQL that the report SQL meets.

Report SQL is written once, in the store's template style (see :mod:`phaseledger.store.sql`):
``{runs}``-style fields name the tables and ``%(name)s`` the parameters. A :class:`Dialect`
renders it for its backend (quoted names, qualified with the schema on PostgreSQL;
``:name`` parameters on SQLite) and converts values at the boundary (timestamps are ISO
text on SQLite, booleans 0/1).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from phaseledger.projections.schema import TABLES, TRACKING_TABLE, Table
from phaseledger.store.sql import Identifier, render


class Dialect:
    """How report SQL is spelled and values are stored on one backend."""

    def __init__(self, name: str, schema: str | None = None) -> None:
        self.name = name
        """``sqlite`` or ``postgresql``."""
        self.schema = schema if name == "postgresql" else None
        """The PostgreSQL schema of the tables (None on SQLite)."""
        tables = {key: table.name for key, table in TABLES.items()}
        tables["tracking"] = TRACKING_TABLE
        self.names: dict[str, Identifier] = {
            key: (self.schema, table) if self.schema else table for key, table in tables.items()
        }
        self._paramstyle = "named" if name == "sqlite" else "pyformat"
        self.sql = lru_cache(maxsize=256)(self._render)

    def _render(self, template: str, table: str | None = None) -> str:
        """The backend's SQL for a template using ``{table}`` names and ``%(param)s``.

        ``table``: the key of the table a ``{table}`` field stands for.
        """
        names = self.names if table is None else {**self.names, "table": self.names[table]}
        return render(template, self._paramstyle, **names)

    # -- values --------------------------------------------------------------------------

    def to_db(self, table: Table, row: dict[str, Any]) -> dict[str, Any]:
        """A row's values as the backend stores them."""
        if self.name != "sqlite":
            return row
        types = table.types()
        out: dict[str, Any] = {}
        for key, value in row.items():
            kind = types.get(key)
            if value is not None and kind in ("ts", "date"):
                value = value.isoformat()
            elif value is not None and kind == "bool":
                value = int(bool(value))
            out[key] = value
        return out

    def to_db_date(self, value: date) -> Any:
        """A date as a query parameter."""
        return value.isoformat() if self.name == "sqlite" else value

    def from_db(self, table: Table | None, row: Any) -> dict[str, Any]:
        """A fetched row as a dict of Python values (aware UTC datetimes, dates, bools)."""
        data = dict(row)
        types = table.types() if table is not None else {}
        for key, value in data.items():
            if value is None:
                continue
            kind = types.get(key)
            if kind == "ts":
                if isinstance(value, str):
                    value = datetime.fromisoformat(value)
                data[key] = value.astimezone(UTC)
            elif kind == "date" and isinstance(value, str):
                data[key] = date.fromisoformat(value)
            elif kind == "bool":
                data[key] = bool(value)
        return data
