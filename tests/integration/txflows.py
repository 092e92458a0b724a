"""Workflows with transactional steps, driven in-process and in child processes by
``tests/integration/test_transactional_steps.py``.

The step ``save`` inserts a row into the user's table ``reports`` (in the store's own
database: the SQLite file, or the store's schema on PostgreSQL) and records each execution
in the file named by ``$CRASHFLOW_EFFECTS``. With ``$TXFLOW_WROTE`` and ``$TXFLOW_GATE`` set,
it then creates the file ``$TXFLOW_WROTE`` (its row is written, not committed) and waits
until ``$TXFLOW_GATE`` exists: a test kills the process there, between the user's write
and the commit.

``python -m tests.integration.txflows STORE RUN_ID [start|resume]`` drives the run and
prints one JSON line: ``{"status": ..., "output": ...}`` or ``{"error": type}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, PhaseledgerError, RetryPolicy, Workflow, idempotency_key
from phaseledger.store.eventstore import StoreURL
from tests.integration.crashflows import effect

WROTE_ENV = "TXFLOW_WROTE"
GATE_ENV = "TXFLOW_GATE"


def table(store_url: str) -> str:
    """The user's table in the store's database: in the store's schema on PostgreSQL."""
    url = StoreURL.parse(store_url)
    return f"{url.postgres_schema}.reports" if url.backend == "postgresql" else "reports"


def create_table(store_url: str) -> None:
    """The user's migration: create ``reports`` next to the store's tables."""
    url = StoreURL.parse(store_url)
    if url.backend == "postgresql":
        import psycopg

        with psycopg.connect(url.postgres_conninfo or "", autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {url.postgres_schema}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table(store_url)} "
                         "(run_id text, body text, step_key text UNIQUE)")
    else:
        Path(url.sqlite_path or "").parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(url.sqlite_path or "") as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS reports (run_id TEXT, body TEXT, step_key TEXT UNIQUE)")


def rows(store_url: str, run_id: str) -> list[str]:
    """The bodies of the run's rows in ``reports``, committed ones only."""
    url = StoreURL.parse(store_url)
    if url.backend == "postgresql":
        import psycopg

        with psycopg.connect(url.postgres_conninfo or "", autocommit=True) as conn:
            found = conn.execute(f"SELECT body FROM {table(store_url)} WHERE run_id = %s ORDER BY body",
                                 (run_id,)).fetchall()
    else:
        with sqlite3.connect(url.sqlite_path or "") as conn:
            found = conn.execute("SELECT body FROM reports WHERE run_id = ? ORDER BY body", (run_id,)).fetchall()
    return [row[0] for row in found]


def insert(conn: Any, name: str, run_id: str, body: str) -> None:
    """Insert one row with the step's idempotency key (a DB-API connection of either database)."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("INSERT INTO reports (run_id, body, step_key) VALUES (?, ?, ?)", (run_id, body, idempotency_key()))
    else:
        conn.execute(f"INSERT INTO {name} (run_id, body, step_key) VALUES (%s, %s, %s)",
                     (run_id, body, idempotency_key()))


def count(conn: Any, name: str, run_id: str) -> int:
    """The run's rows as the transaction sees them (its own uncommitted row included)."""
    if isinstance(conn, sqlite3.Connection):
        return int(conn.execute("SELECT count(*) FROM reports WHERE run_id = ?", (run_id,)).fetchone()[0])
    row = conn.execute(f"SELECT count(*) AS n FROM {name} WHERE run_id = %s", (run_id,)).fetchone()
    return int(row["n"])


def save(conn: Any, store_url: str, run_id: str, body: str) -> int:
    """The transactional step: insert the row, then (when the test asks) wait at the gate."""
    effect("save")
    name = table(store_url)
    insert(conn, name, run_id, body)
    wrote, gate = os.environ.get(WROTE_ENV), os.environ.get(GATE_ENV)
    if wrote and gate:
        Path(wrote).touch()
        deadline = time.monotonic() + 120  # a test that failed never opens it
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {gate} was never opened")
            time.sleep(0.02)
    return count(conn, name, run_id)


class Report(BaseModel):
    store: str = ""
    saved: int = 0
    after: bool = False


reporting = Workflow("reporting", state=Report, retry=RetryPolicy(max_attempts=3, initial_delay=0.01))


def prepare() -> str:
    effect("prepare")
    return "report"


@reporting.phase(initial=True, to="done")
async def write(ctx: Context[Report]) -> None:
    body = await ctx.step("prepare", prepare)
    ctx.state.saved = await ctx.transaction("save", save, ctx.state.store, ctx.run_id, body)
    ctx.state.after = await ctx.step("after", lambda: effect("after") >= 0)


@reporting.phase(final=True)
async def done(ctx: Context[Report]) -> int:
    return ctx.state.saved


async def _main(store: str, run_id: str, how: str) -> dict[str, object]:
    async with Engine(store, workflows=[reporting]) as engine:
        try:
            if how == "start":
                run = await engine.run(reporting, {"store": store}, run_id=run_id)
            else:
                run = await engine.resume(run_id)
        except PhaseledgerError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"status": run.status, "output": run.output}


if __name__ == "__main__":
    store_url, run, mode = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "start"
    print(json.dumps(asyncio.run(_main(store_url, run, mode))), flush=True)
