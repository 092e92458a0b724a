"""Workflows that worker tests drive in child worker processes (imported by module path).

Every step execution is written, before the step's latency, to a side-effect table in
PostgreSQL (``$FLEET_EFFECTS_URL``, a store URL whose schema holds the table) or to a
file (``$FLEET_EFFECTS_FILE``), outside the event store, so a test can compare what
really ran with what the log recorded.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, RetryPolicy, Workflow

EFFECTS_URL_ENV = "FLEET_EFFECTS_URL"
EFFECTS_FILE_ENV = "FLEET_EFFECTS_FILE"
LATENCY_ENV = "FLEET_MAX_LATENCY"
SLOW_ENV = "FLEET_SLOW_STEP"

CREATE_EFFECTS = """
    CREATE TABLE IF NOT EXISTS fleet_effects (
        run_id     text NOT NULL,
        step       text NOT NULL,
        exec_id    text PRIMARY KEY,
        pid        integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )
"""

_conn: Any = None
_conn_lock = threading.Lock()


def _write_effect_pg(url: str, run_id: str, step: str, exec_id: str) -> None:
    global _conn
    import psycopg
    from psycopg import sql

    from phaseledger.store.eventstore import StoreURL

    parsed = StoreURL.parse(url)
    with _conn_lock:
        if _conn is None:
            _conn = psycopg.connect(parsed.postgres_conninfo or "", autocommit=True)
            _conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(parsed.postgres_schema or "public")))
        _conn.execute(
            "INSERT INTO fleet_effects (run_id, step, exec_id, pid) VALUES (%s, %s, %s, %s)",
            (run_id, step, exec_id, os.getpid()),
        )


def _write_effect_file(path: str, run_id: str, step: str, exec_id: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{run_id}\t{step}\t{exec_id}\t{os.getpid()}\n".encode())
    finally:
        os.close(fd)


async def side_effect(run_id: str, step: str, latency: float | None = None) -> dict[str, Any]:
    """Record one execution outside the store, then take ``latency`` (default: random) seconds."""
    exec_id = uuid.uuid4().hex
    if url := os.environ.get(EFFECTS_URL_ENV):
        await asyncio.to_thread(_write_effect_pg, url, run_id, step, exec_id)
    elif path := os.environ.get(EFFECTS_FILE_ENV):
        _write_effect_file(path, run_id, step, exec_id)
    if latency is None:
        latency = random.uniform(0.0, float(os.environ.get(LATENCY_ENV, "0.05")))
    await asyncio.sleep(latency)
    return {"exec": exec_id, "pid": os.getpid()}


class FleetState(BaseModel):
    execs: list[str] = []
    woke_at: str | None = None
    go: int | None = None


class Go(BaseModel):
    value: int


# A busy test database may refuse a connection now and then: the side effect is retried.
fleet = Workflow("fleet", state=FleetState, signals={"go": Go},
                 retry=RetryPolicy(max_attempts=5, initial_delay=0.05, max_delay=0.5))


@fleet.phase(initial=True, to="nap")
async def work(ctx: Context[FleetState]) -> None:
    for i in range(3):
        result = await ctx.step(f"s{i}", side_effect, ctx.run_id, f"s{i}")
        ctx.state.execs.append(result["exec"])


@fleet.phase(to="wait")
async def nap(ctx: Context[FleetState]) -> None:
    await ctx.sleep(0.2 + 0.6 * ctx.random())
    ctx.state.woke_at = ctx.now().isoformat()


@fleet.phase(to="finish")
async def wait(ctx: Context[FleetState]) -> None:
    go = await ctx.wait_for_signal("go")
    ctx.state.go = go.value
    result = await ctx.step("after", side_effect, ctx.run_id, "after")
    ctx.state.execs.append(result["exec"])


@fleet.phase(final=True)
async def finish(ctx: Context[FleetState]) -> dict[str, Any]:
    return {"steps": len(ctx.state.execs), "go": ctx.state.go}


class SlowState(BaseModel):
    done: list[str] = []


slow = Workflow("slow", state=SlowState)


@slow.phase(initial=True, to="end")
async def crawl(ctx: Context[SlowState]) -> None:
    """Five steps of ``$FLEET_SLOW_STEP`` seconds each (default 0.5)."""
    for i in range(5):
        await ctx.step(f"slow{i}", side_effect, ctx.run_id, f"slow{i}", float(os.environ.get(SLOW_ENV, "0.5")))
        ctx.state.done.append(f"slow{i}")


@slow.phase(final=True)
async def end(ctx: Context[SlowState]) -> list[str]:
    return ctx.state.done




class NapState(BaseModel):
    woke_at: str | None = None


napper = Workflow("napper", state=NapState)


@napper.phase(initial=True, to="awake")
async def doze(ctx: Context[NapState]) -> None:
    """Sleep ``$FLEET_NAP`` seconds (default 1), then record the time."""
    await ctx.sleep(float(os.environ.get("FLEET_NAP", "1.0")))
    ctx.state.woke_at = ctx.now().isoformat()


@napper.phase(final=True)
async def awake(ctx: Context[NapState]) -> str | None:
    return ctx.state.woke_at


workflows = [fleet, slow, napper]
