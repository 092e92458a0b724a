"""(6) What the log takes on disk: bytes stored per step (and per model call, see bench_agents).

A run of ``steps`` steps each returning a ``payload_bytes`` string, on each durable store.
Reported: bytes of the ``StepRecorded`` rows (state, topic, id and version columns) per
step, and the snapshot bytes the run left amortised per step, each against the floor of
the payload itself (its JSON size).
"""

from __future__ import annotations

import asyncio
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


class PayloadState(BaseModel):
    """How many steps and how big each result is."""

    n: int
    size: int


def payload(i: int, size: int) -> str:
    """A step result of ``size`` characters."""
    return f"{i:08d}" + "x" * max(0, size - 8)


def storage_workflow() -> Workflow[PayloadState]:
    """One phase of ``n`` steps returning ``size``-character strings."""
    wf = Workflow("bench-storage", state=PayloadState)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[PayloadState]) -> str:
        for i in range(ctx.state.n):
            await ctx.step("produce", payload, i, ctx.state.size)
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[PayloadState]) -> None:
        return None

    return wf


def table_bytes(store: Store, table: str, topic_suffix: str | None, *, kind: str | None = None) -> tuple[int, int]:
    """``(rows, bytes)`` of a table's rows: all, or those whose topic ends so (and of this step kind)."""
    postgres = store.url.backend == "postgresql"
    mark = "%s" if postgres else "?"
    if postgres:
        columns = "octet_length(originator_id) + 8 + octet_length(topic) + octet_length(state)"
        state_text = "convert_from(state, 'UTF8')"
    else:
        columns = "length(CAST(originator_id AS BLOB)) + 8 + length(CAST(topic AS BLOB)) + length(state)"
        state_text = "CAST(state AS TEXT)"
    where, params = [], []
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


async def _record(url: str, sizes: Sizes) -> str:
    wf = storage_workflow()
    engine = Engine(url, workflows=[wf])
    try:
        run = await engine.run(wf, PayloadState(n=sizes.steps, size=sizes.payload_bytes))
        return run.run_id
    finally:
        engine.close()


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure stored bytes per step on SQLite and (when reachable) PostgreSQL."""
    results = []
    floor = float(json_size(payload(0, sizes.payload_bytes)))
    for backend in backends.durable:
        with backends.store_url(backend, "storage") as url:
            asyncio.run(_record(url, sizes))
            store = Store(url)
            try:
                events_table = store.app.recorder.events_table_name  # type: ignore[attr-defined]
                snapshots_table = store.app.snapshots.recorder.events_table_name  # type: ignore[union-attr]
                rows, size = table_bytes(store, events_table, "StepRecorded")
                _, snapshot_size = table_bytes(store, snapshots_table, None)
            finally:
                store.close()
        per_step = size / rows
        results.append(Result.paired(
            "storage", f"{backend} {sizes.payload_bytes}-byte results", "bytes per step", "B", [per_step],
            "result JSON", [floor], steps=rows,
        ))
        results.append(Result.paired(
            "storage", f"{backend} snapshots, amortised", "snapshot bytes per step", "B", [snapshot_size / rows],
            "result JSON", [floor], steps=rows,
        ))
    return results
