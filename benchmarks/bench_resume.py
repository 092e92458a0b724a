"""(2) What resuming costs: time from ``engine.resume`` to the first new step, and replay speed.

Runs with about 100, 1,000 and 10,000 recorded events are built by a loop phase of 10
steps (see :func:`benchmarks.workloads.history_workflow`), then stopped the way a crash
stops them. Each repeat opens a fresh engine on the store (as a restarted process would),
calls ``resume`` and stops the clock when the first new step starts. With snapshots the
figure must stay flat as the history grows; without them it grows with the history.

Full replay: folding a 10,000-event run from its events alone (no snapshot), in events
per second, against the floor of reading the same rows with the database driver.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from dataclasses import dataclass

from benchmarks._harness import Backends, Result, bracketed, now, postgres_conninfo
from benchmarks.floors import postgres_commit_floor, sqlite_commit_floor, store_sqlite_synchronous
from benchmarks.workloads import HistoryState, SimulatedCrash, Timings, history_workflow
from phaseledger import Engine
from phaseledger.store.eventstore import Store

PER_VISIT = 10
EVENTS_PER_VISIT = PER_VISIT + 1  # the steps and the PhaseEntered of the next visit


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    histories: tuple[int, ...] = (100, 1_000, 10_000)
    replay_events: int = 10_000
    floor_ops: int = 100
    repeats: int = 7
    snapshot_every: int = 100


async def build_run(url: str, events: int, snapshot_every: int | None, timings: Timings) -> str:
    """Record a run of about ``events`` events on ``url`` and leave it as a crash would."""
    wf = history_workflow(timings, per_visit=PER_VISIT, batch=PER_VISIT)
    engine = Engine(url, workflows=[wf], snapshot_every=snapshot_every)
    try:
        visits = max(1, math.ceil((events - 2) / EVENTS_PER_VISIT))
        started = await engine.start(wf, HistoryState(target_visits=visits))
        try:
            await engine.resume(started.run_id)
        except SimulatedCrash:
            pass
        return started.run_id
    finally:
        engine.close()


async def resume_once(url: str, run_id: str, snapshot_every: int | None, timings: Timings) -> float:
    """Seconds from ``resume`` on a fresh engine to the start of the first new step."""
    wf = history_workflow(timings, per_visit=PER_VISIT, batch=PER_VISIT)
    engine = Engine(url, workflows=[wf], snapshot_every=snapshot_every)
    try:
        engine.store.exists("warm-up")  # open the connection: a restarted process has one too
        start = now()
        try:
            await engine.resume(run_id)
        except SimulatedCrash:
            pass
        return timings.marks[run_id][-1] - start
    finally:
        engine.close()


def _floor(backends: Backends, backend: str, url: str, ops: int, synchronous: int) -> float:
    if backend == "sqlite":
        return sqlite_commit_floor(backends.sqlite_path("floor"), ops, synchronous)
    return postgres_commit_floor(url, url.rsplit("schema=", 1)[1], ops)


def raw_read_seconds(store: Store, run_id: str) -> float:
    """The floor of replay: reading the run's rows with the database driver alone."""
    table = store.app.recorder.events_table_name  # type: ignore[attr-defined]
    if store.url.backend == "sqlite":
        conn = sqlite3.connect(store.url.sqlite_path or "")
        try:
            start = now()
            rows = conn.execute(
                f"SELECT originator_version, topic, state FROM {table} WHERE originator_id=? "  # noqa: S608
                "ORDER BY originator_version", (run_id,),
            ).fetchall()
            elapsed = now() - start
        finally:
            conn.close()
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(postgres_conninfo(store.url.url)) as conn:
            query = sql.SQL(
                "SELECT originator_version, topic, state FROM {} WHERE originator_id=%s ORDER BY originator_version"
            ).format(sql.Identifier(store.url.postgres_schema or "public", table))
            start = now()
            rows = conn.execute(query, (run_id,)).fetchall()
            elapsed = now() - start
    if not rows:
        raise RuntimeError(f"run {run_id!r} has no rows in {table}")
    return elapsed


def _load_seconds(store: Store, run_id: str) -> float:
    start = now()
    run = store.load(run_id)
    elapsed = now() - start
    if run.version != len(store.events(run_id)):
        raise RuntimeError(f"replay of {run_id!r} stopped at version {run.version}")
    return elapsed


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure resume cost and replay throughput on SQLite and (when reachable) PostgreSQL."""
    results = []
    for backend in backends.durable:
        synchronous = 2
        for snapshot_every in (sizes.snapshot_every, None):
            for events in sizes.histories:
                timings = Timings()
                with backends.store_url(backend, "resume") as url:
                    if backend == "sqlite":
                        synchronous = store_sqlite_synchronous(url)
                    run_id = asyncio.run(build_run(url, events, snapshot_every, timings))
                    values, floors = [], []
                    for _ in range(sizes.repeats):
                        value, floor = bracketed(
                            lambda url=url: _floor(backends, backend, url, sizes.floor_ops, synchronous),
                            lambda url=url: asyncio.run(resume_once(url, run_id, snapshot_every, timings)),
                        )
                        values.append(value * 1e3)
                        floors.append(floor * 1e3)
                label = f"every {snapshot_every}" if snapshot_every else "none"
                target = "≤ 20 ms" if backend == "sqlite" and snapshot_every and events >= 10_000 else None
                results.append(Result.paired(
                    "resume", f"{backend} {events:,} events, snapshots {label}", "resume to first step", "ms",
                    values, f"{backend} commit", floors, target=target, events=events, snapshot_every=snapshot_every,
                ))
        results.append(_replay(backends, backend, sizes))
    return results


def _replay(backends: Backends, backend: str, sizes: Sizes) -> Result:
    """Full replay throughput of a run with no snapshot, against a raw read of its rows."""
    timings = Timings()
    with backends.store_url(backend, "replay") as url:
        run_id = asyncio.run(build_run(url, sizes.replay_events, None, timings))
        store = Store(url, snapshot_every=None)
        try:
            count = len(store.events(run_id))
            values, floors = [], []
            for _ in range(sizes.repeats):
                value, floor = bracketed(lambda: raw_read_seconds(store, run_id), lambda: _load_seconds(store, run_id))
                values.append(count / value)
                floors.append(count / floor)
        finally:
            store.close()
    return Result.paired(
        "replay", f"{backend} {count:,} events, no snapshot", "full replay", "events/s", values,
        f"{backend} raw read", floors, target="≥ 100,000 events/s", higher_is_better=True, events=count,
    )
