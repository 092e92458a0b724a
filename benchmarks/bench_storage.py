"""(6) What the log takes on disk: bytes stored per step (and per model call, see bench_agents).

Runs of ``steps`` steps in one phase visit, on each durable store: one whose steps each
return a ``payload_bytes`` string, one whose steps each return a small int (a trivial step).
Reported, per step:

- ``StepRecorded`` rows: their ``originator_id``, ``originator_version`` (8 B), ``topic``
  and ``state`` columns, against the floor of the payload itself (its JSON size);
- snapshots, amortised: the same columns of every snapshot row the run left;
- all of it: every event row of the run (its ``RunStarted``, ``PhaseEntered``,
  ``RunCompleted`` too) with its ``notification_id`` (8 B: eventsourcing's notification log
  is that column of the events table), plus every snapshot row, divided by the steps; the
  trivial step is held to the target of :data:`TARGET_BYTES`.

Those are column bytes: what each database adds per row (headers, indexes, pages) is left
out of them. Beside them, for the trivial step, the growth of the database on disk per step
(:func:`disk_bytes`: the SQLite file after a checkpoint and ``VACUUM``; on PostgreSQL every
table of the store's schema with its indexes and TOAST), against a run of no steps.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass

from pydantic import BaseModel

from benchmarks._harness import Backends, Result
from phaseledger import Context, Engine, Workflow
from phaseledger.domain.values import json_size
from phaseledger.store.eventstore import Store


@dataclass(frozen=True)
class Sizes:
    """How big."""

    steps: int = 1000
    payload_bytes: int = 200
    repeats: int = 1
    """Stored bytes do not vary from run to run: one run is enough."""


TARGET_BYTES = 300
"""Bytes per trivial step, all rows counted (events, notification log, snapshots)."""


class PayloadState(BaseModel):
    """How many steps and how big each result is."""

    n: int
    size: int
    """Characters of each result; 0: each result is a small int instead."""


def payload(i: int, size: int) -> str:
    """A step result of ``size`` characters."""
    return f"{i:08d}" + "x" * max(0, size - 8)


def count(i: int) -> int:
    """A trivial step's result."""
    return i + 1


def storage_workflow() -> Workflow[PayloadState]:
    """One phase of ``n`` steps returning ``size``-character strings (small ints when ``size`` is 0)."""
    wf = Workflow("bench-storage", state=PayloadState)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[PayloadState]) -> str:
        for i in range(ctx.state.n):
            if ctx.state.size:
                await ctx.step("produce", payload, i, ctx.state.size)
            else:
                await ctx.step("count", count, i)
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[PayloadState]) -> None:
        return None

    return wf


def table_bytes(store: Store, table: str, topic_suffix: str | None, *, kind: str | None = None,
                run_id: str | None = None, notification_ids: bool = False) -> tuple[int, int]:
    """``(rows, bytes)`` of a table's rows: all, or those whose topic ends so (and of this step kind, of this run).

    Counted: the id, version (8 B), topic and state columns, and with ``notification_ids``
    the notification id (8 B) too.
    """
    postgres = store.url.backend == "postgresql"
    mark = "%s" if postgres else "?"
    if postgres:
        columns = "octet_length(originator_id) + 8 + octet_length(topic) + octet_length(state)"
        state_text = "convert_from(state, 'UTF8')"
    else:
        columns = "length(CAST(originator_id AS BLOB)) + 8 + length(CAST(topic AS BLOB)) + length(state)"
        state_text = "CAST(state AS TEXT)"
    if notification_ids:
        columns += " + 8"
    where, params = [], []
    if run_id:
        where.append(f"originator_id = {mark}")
        params.append(run_id)
    if topic_suffix:
        where.append(f"topic LIKE {mark}")
        params.append(f"%{topic_suffix}")
    if kind:
        where.append(f"{state_text} LIKE {mark}")
        params.append(f'%"kind":"{kind}"%')
    query = f"SELECT count(*), coalesce(sum({columns}), 0) FROM {{table}}"
    if where:
        query += " WHERE " + " AND ".join(where)
    datastore = store.app.recorder.datastore  # type: ignore[attr-defined]
    if not postgres:
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(query.format(table=table), params)
            rows, size = cursor.fetchone()
    else:
        from psycopg import sql

        statement = sql.SQL(query).format(table=sql.Identifier(store.url.postgres_schema or "public", table))
        with datastore.get_connection() as conn:
            record = conn.execute(statement, params).fetchone()
            rows, size = record["count"], record["coalesce"]
    return int(rows), int(size)


async def _record(url: str, sizes: Sizes, payload_bytes: int) -> str:
    wf = storage_workflow()
    engine = Engine(url, workflows=[wf])
    try:
        run = await engine.run(wf, PayloadState(n=sizes.steps, size=payload_bytes))
        return run.run_id
    finally:
        engine.close()


@dataclass(frozen=True)
class Stored:
    """What one run left in a store."""

    steps: int
    step_bytes: int
    """Of its ``StepRecorded`` rows."""
    snapshot_bytes: int
    total_bytes: int
    """Of all its rows, events (with their notification ids) and snapshots."""


def disk_bytes(store: Store) -> int:
    """What the store's database takes on disk: the SQLite file, or the schema's tables with their indexes."""
    if store.url.backend == "sqlite":
        path = store.url.sqlite_path or ""
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("VACUUM")
        finally:
            conn.close()
        return os.path.getsize(path)
    datastore = store.app.recorder.datastore  # type: ignore[attr-defined]
    with datastore.get_connection() as conn:
        record = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) AS size FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
            (store.url.postgres_schema or "public",),
        ).fetchone()
    return int(record["size"])


def disk_per_step(backends: Backends, backend: str, sizes: Sizes) -> float:
    """The growth on disk per trivial step: a run of ``sizes.steps`` steps against a run of none."""
    sizes_on_disk = []
    for steps in (0, sizes.steps):
        with backends.store_url(backend, "storage") as url:
            asyncio.run(_record(url, Sizes(steps=steps), 0))
            store = Store(url)
            try:
                sizes_on_disk.append(disk_bytes(store))
            finally:
                store.close()
    return (sizes_on_disk[1] - sizes_on_disk[0]) / sizes.steps


def measure(backends: Backends, backend: str, sizes: Sizes, payload_bytes: int) -> Stored:
    """Record one run of ``sizes.steps`` steps on a fresh store and count what it stored."""
    with backends.store_url(backend, "storage") as url:
        run_id = asyncio.run(_record(url, sizes, payload_bytes))
        store = Store(url)
        try:
            events_table = store.app.recorder.events_table_name  # type: ignore[attr-defined]
            snapshots_table = store.app.snapshots.recorder.events_table_name  # type: ignore[union-attr]
            steps, step_bytes = table_bytes(store, events_table, "StepRecorded", run_id=run_id)
            _, event_bytes = table_bytes(store, events_table, None, run_id=run_id, notification_ids=True)
            _, snapshot_bytes = table_bytes(store, snapshots_table, None, run_id=run_id)
        finally:
            store.close()
    return Stored(steps, step_bytes, snapshot_bytes, event_bytes + snapshot_bytes)


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure stored bytes per step on SQLite and (when reachable) PostgreSQL."""
    results = []
    floor = float(json_size(payload(0, sizes.payload_bytes)))
    for backend in backends.durable:
        stored = measure(backends, backend, sizes, sizes.payload_bytes)
        rows = stored.steps
        results.append(Result.paired(
            "storage", f"{backend} {sizes.payload_bytes}-byte results", "bytes per step", "B", [stored.step_bytes / rows],
            "result JSON", [floor], steps=rows,
        ))
        results.append(Result.paired(
            "storage", f"{backend} snapshots, amortised", "snapshot bytes per step", "B",
            [stored.snapshot_bytes / rows], "result JSON", [floor], steps=rows,
        ))
        results.append(Result.paired(
            "storage", f"{backend} {sizes.payload_bytes}-byte results, all rows", "bytes per step", "B",
            [stored.total_bytes / rows], "result JSON", [floor], steps=rows,
        ))
        trivial = measure(backends, backend, sizes, 0)
        per_step = trivial.total_bytes / trivial.steps
        met = per_step <= TARGET_BYTES
        results.append(Result.paired(
            "storage", f"{backend} trivial steps (int result), all rows", "bytes per step", "B", [per_step],
            target=f"≤ {TARGET_BYTES} B: {'met' if met else 'NOT met'}", met=met, steps=trivial.steps,
            step_rows=trivial.step_bytes / trivial.steps, snapshots=trivial.snapshot_bytes / trivial.steps,
        ))
        results.append(Result.paired(
            "storage", f"{backend} trivial steps (int result), on disk", "bytes per step", "B",
            [disk_per_step(backends, backend, sizes)], steps=sizes.steps,
        ))
    return results
