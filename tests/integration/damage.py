"""Damaging and repairing stored rows as a bad disk, a botched migration or a hand edit would.

Rows are read and written with a connection of their own (sqlite3, psycopg), straight in
the store's tables, never through phaseledger.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from phaseledger import Store


@dataclass(frozen=True)
class Row:
    """What a stored event or snapshot row holds besides its stream and version."""

    topic: str
    state: bytes


def _table(store: Store, snapshot: bool) -> str:
    recorder: Any = store.app.snapshots.recorder if snapshot else store.app.recorder  # type: ignore[union-attr]
    return str(recorder.events_table_name)


def _execute(store: Store, sqlite_sql: str, pg_sql: str, params: tuple[Any, ...]) -> list[Any]:
    url = store.url
    if url.backend == "sqlite":
        with sqlite3.connect(url.sqlite_path or "") as conn:
            return conn.execute(sqlite_sql, params).fetchall()
    import psycopg

    with psycopg.connect(url.postgres_conninfo or "", autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{url.postgres_schema}"')
        cursor = conn.execute(pg_sql, params)
        return cursor.fetchall() if cursor.description else []


def read_row(store: Store, run_id: str, version: int, *, snapshot: bool = False) -> Row:
    """The row of ``run_id`` at ``version`` (of the snapshots table with ``snapshot``)."""
    table = _table(store, snapshot)
    where = "WHERE originator_id = {0} AND originator_version = {0}"
    [(topic, state)] = _execute(
        store, f"SELECT topic, state FROM {table} " + where.format("?"),
        f"SELECT topic, state FROM {table} " + where.format("%s"), (run_id, version),
    )
    return Row(str(topic), bytes(state))


def write_row(store: Store, run_id: str, version: int, row: Row, *, snapshot: bool = False) -> None:
    """Overwrite the topic and state of that row."""
    table = _table(store, snapshot)
    statement = "UPDATE {t} SET topic = {m}, state = {m} WHERE originator_id = {m} AND originator_version = {m}"
    _execute(store, statement.format(t=table, m="?"), statement.format(t=table, m="%s"),
             (row.topic, row.state, run_id, version))


def truncated(row: Row) -> Row:
    """Half the JSON: it no longer decodes."""
    return replace(row, state=row.state[: len(row.state) // 2])


def missing_field(row: Row) -> Row:
    """The JSON without the first field of the event's own (after its timestamp)."""
    data = json.loads(row.state)
    field = next(key for key in data if key != "timestamp")
    del data[field]
    return replace(row, state=json.dumps(data).encode())


def unknown_topic(row: Row) -> Row:
    """A type this release does not know (as if a newer release wrote the row)."""
    return replace(row, topic="phaseledger.domain.run:WorkflowRun.FromTheFuture")


CORRUPTIONS: dict[str, Callable[[Row], Row]] = {
    "truncated-json": truncated, "missing-field": missing_field, "unknown-topic": unknown_topic,
}


def damage(store: Store, run_id: str, version: int, how: Callable[[Row], Row] = truncated, *,
           snapshot: bool = False) -> Row:
    """Damage one row; return the original, for :func:`write_row` to repair it."""
    original = read_row(store, run_id, version, snapshot=snapshot)
    write_row(store, run_id, version, how(original), snapshot=snapshot)
    return original
