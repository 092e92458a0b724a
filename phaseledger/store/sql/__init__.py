"""The SQL of each backend, in one home per backend, written in one style.

Every statement is a template: ``{name}`` fields stand for identifiers (tables, a
PostgreSQL schema; a :class:`Literal` in DDL), ``%(name)s`` for parameters. :func:`render` fills the fields with
quoted identifiers (the only way identifiers enter a statement) and spells the
parameters as the backend's driver wants them; values are always passed as parameters.
Lists are parameters too: ``= ANY(%(ids)s)`` on PostgreSQL, ``IN (SELECT value FROM
json_each(%(ids)s))`` with a JSON array on SQLite, so a statement's text never depends
on its values.

:mod:`.sqlite` and :mod:`.postgres` hold the statements of the run index, the leases,
worker claims, retention and the log counts of each backend; :mod:`.reports` those of the
report view, which both backends share, and this module the few on eventsourcing's event
table that read the same on both.
"""

from __future__ import annotations

import re
from functools import lru_cache

_PARAM = re.compile(r"%\((\w+)\)s")

class Literal(str):
    """A string written into a statement that takes no parameters (DDL), quoted as a literal."""

    __slots__ = ()


Identifier = str | tuple[str, ...]
"""A name, or a qualified name such as ``(schema, table)``, or a :class:`Literal`."""


def quote(name: Identifier) -> str:
    """An identifier quoted for SQL: ``"table"``, or ``"schema"."table"`` for a tuple
    (a :class:`Literal` is quoted as a string: ``'text'``)."""
    if isinstance(name, Literal):
        return "'" + name.replace("'", "''") + "'"
    parts = (name,) if isinstance(name, str) else name
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


@lru_cache(maxsize=1024)
def _render(template: str, identifiers: tuple[tuple[str, Identifier], ...], named: bool) -> str:
    text = template.format_map({key: quote(name) for key, name in identifiers})
    return _PARAM.sub(r":\1", text) if named else text


def render(template: str, paramstyle: str = "pyformat", /, **identifiers: Identifier) -> str:
    """The statement of ``template`` with its ``{fields}`` quoted and its parameters in ``paramstyle``.

    ``pyformat`` (psycopg) keeps ``%(name)s``; ``named`` (sqlite3) spells them ``:name``.
    """
    return _render(template, tuple(sorted(identifiers.items())), paramstyle == "named")


# The rows a resume reads a phase visit's journal back from: the columns it needs, no more.
SELECT_ROWS_BETWEEN = """
    SELECT originator_version, topic, state FROM {events}
    WHERE originator_id = %(run_id)s AND originator_version > %(gt)s AND originator_version <= %(lte)s
    ORDER BY originator_version
"""
