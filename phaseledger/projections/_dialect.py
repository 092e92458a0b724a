"""The small differences between SQLite and PostgreSQL that the report SQL meets.

Report SQL is written once with ``{runs}``-style table names and ``%(name)s`` parameters;
a :class:`Dialect` turns it into the backend's form (qualified, quoted PostgreSQL names;
``:name`` parameters for SQLite) and converts values at the boundary (timestamps are
ISO text on SQLite, booleans 0/1).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from phaseledger.projections.schema import TABLES, TRACKING_TABLE, Table

_PARAM = re.compile(r"%\((\w+)\)s")


class Dialect:
    """How report SQL is spelled and values are stored on one backend."""

    def __init__(self, name: str, schema: str | None = None) -> None:
        self.name = name
        """``sqlite`` or ``postgresql``."""
        self.qualify = f'"{schema}".' if name == "postgresql" and schema else ""
        names = {key: f"{self.qualify}{table.name}" for key, table in TABLES.items()}
        names["tracking"] = f"{self.qualify}{TRACKING_TABLE}"
        self.names = names
        self._sql = lru_cache(maxsize=256)(self._translate)

    def _translate(self, template: str) -> str:
        text = template.format(**self.names)
        if self.name == "sqlite":
            text = _PARAM.sub(r":\1", text)
        return text

    def sql(self, template: str) -> str:
        """The backend's SQL for a template using ``{table}`` names and ``%(param)s``."""
        return self._sql(template)

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
