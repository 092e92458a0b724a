"""(8) What a transactional step costs: µs per ``ctx.transaction`` that inserts one row, against a plain step.

Two runs of ``steps`` steps in one phase, on SQLite and PostgreSQL, each step committed
before the next: one of trivial ``ctx.step`` calls (the floor: a plain step's own
commit), one of ``ctx.transaction`` calls that insert one row into a table of the store's
database and commit it with the step's record. Each repeat runs the plain run, the
transactional run and the plain run again, back to back; the ratio is taken within the
repeat. The difference is the price of exactly once: the row, the lease check, and the
hop to the thread that holds the transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from benchmarks._harness import Backends, Result, bracketed, postgres_conninfo
from benchmarks.bench_steps import run_steps
from benchmarks.workloads import Timings
from phaseledger import Context, Engine, Workflow


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    steps: int = 500
    repeats: int = 5


class Rows(BaseModel):
    """How many rows to write, and where (the table's qualified name)."""

    n: int
    table: str
    placeholder: str


def insert_row(conn: Any, table: str, placeholder: str, i: int) -> int:
    """The transactional step: one row into the user's table."""
    conn.execute(f"INSERT INTO {table} (i) VALUES ({placeholder})", (i,))
    return i + 1


def transactions_workflow(timings: Timings) -> Workflow[Rows]:
    """One phase of ``state.n`` transactional steps; marks after step 1 and step n (as ``steps_workflow``)."""
    wf = Workflow("bench-transactions", state=Rows)

    @wf.phase(initial=True, final=True)
    async def work(ctx: Context[Rows]) -> int:
        timings.mark(ctx.run_id)
        for i in range(ctx.state.n):
            await ctx.transaction("row", insert_row, ctx.state.table, ctx.state.placeholder, i)
        timings.mark(ctx.run_id)
        return ctx.state.n

    return wf


def create_table(backend: str, store_url: str) -> Rows:
    """The user's table in the store's database; what the workflow needs to write to it."""
    if backend == "sqlite":
        with sqlite3.connect(store_url.split("sqlite:///", 1)[1]) as db:
            db.execute("CREATE TABLE IF NOT EXISTS bench_rows (i INTEGER)")
        return Rows(n=0, table="bench_rows", placeholder="?")
    import psycopg

    schema = store_url.rsplit("schema=", 1)[1]
    with psycopg.connect(postgres_conninfo(store_url), autocommit=True) as conn:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{schema}".bench_rows (i integer)')
    return Rows(n=0, table=f'"{schema}".bench_rows', placeholder="%s")


async def run_transactions(store_url: str, rows: Rows) -> float:
    """Seconds per step of one run of transactional steps on a fresh engine."""
    timings = Timings()
    wf = transactions_workflow(timings)
    engine = Engine(store_url, workflows=[wf])
    try:
        run = await engine.run(wf, rows)
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
        first, last = timings.marks[run.run_id]
        return (last - first) / rows.n
    finally:
        engine.close()


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure the transactional step against the plain step on SQLite and (when reachable) PostgreSQL."""
    results = []
    for backend in backends.durable:
        values, floors = [], []
        for _ in range(sizes.repeats):
            with backends.store_url(backend, "tx") as url:
                rows = create_table(backend, url).model_copy(update={"n": sizes.steps})
                value, floor = bracketed(
                    lambda url=url: asyncio.run(run_steps(url, sizes.steps, 1)),
                    lambda url=url, rows=rows: asyncio.run(run_transactions(url, rows)),
                )
                values.append(value * 1e6)
                floors.append(floor * 1e6)
        results.append(Result.paired(
            "transactions", f"{backend} ctx.transaction (one row)", "per step", "µs", values,
            "plain step", floors, steps=sizes.steps,
        ))
    return results
