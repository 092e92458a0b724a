"""The report view's own statements, shared by both backends.

Fields: ``{meta}`` and ``{tracking}`` are the view's tables, ``{table}`` a read model; the
view renders them with its backend's names (see :class:`~phaseledger.projections._dialect.Dialect`).
The queries of the report API and the fold's upserts are built from the declarative
tables of :mod:`phaseledger.projections.schema` in the same template style.
"""

from __future__ import annotations

INIT_META = """
    INSERT INTO {meta} (name, schema_version, generation, rebuilt_at)
    VALUES (%(name)s, %(schema_version)s, 1, NULL) ON CONFLICT (name) DO NOTHING
"""

SELECT_META = "SELECT generation, schema_version FROM {meta} WHERE name = %(name)s"

FORGET_POSITION = "DELETE FROM {tracking} WHERE application_name = %(app)s"

DROP_TABLE = "DROP TABLE IF EXISTS {table}"

SET_META = """
    INSERT INTO {meta} (name, schema_version, generation, rebuilt_at)
    VALUES (%(name)s, %(schema_version)s, %(generation)s, %(rebuilt_at)s)
    ON CONFLICT (name) DO UPDATE SET schema_version = excluded.schema_version,
        generation = excluded.generation, rebuilt_at = excluded.rebuilt_at
"""

COUNT_ROWS = "SELECT COUNT(*) AS n FROM {table}"
