"""(4) Rebuilding the report projections: events per second, and peak memory against log size.

A log of about ``events`` events (runs of ``steps_per_run`` steps, committed in batches) is
built once per store. Each repeat times ``Reports.rebuild()`` (drop the tables, refill them
from position 0) against the floor of reading the whole notification log with the
recorder (pages of 1,000, no decoding), back to back. Peak Python memory (tracemalloc)
during a rebuild is measured on the log at a tenth of its size and at full size: memory
that does not grow with the log keeps the two close.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from dataclasses import dataclass

from benchmarks._harness import Backends, Result, bracketed, now
from benchmarks.workloads import StepsState, Timings, steps_workflow
from phaseledger import Engine
from phaseledger.store.eventstore import Store


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    events: int = 100_000
    steps_per_run: int = 500
    repeats: int = 3


async def add_runs(url: str, events: int, steps_per_run: int) -> int:
    """Append runs of ``steps_per_run`` steps until about ``events`` more events are stored."""
    wf = steps_workflow(Timings(), checkpoint_every_n_steps=100)
    engine = Engine(url, workflows=[wf])
    try:
        added = 0
        while added < events:
            run = await engine.run(wf, StepsState(n=steps_per_run))
            added += run.version
        return added
    finally:
        engine.close()


def read_log_seconds(store: Store) -> float:
    """The floor: read every notification with the recorder, in pages of 1,000."""
    start = now()
    position = 0
    while True:
        page = store.app.recorder.select_notifications(start=position, limit=1000, inclusive_of_start=False)
        if not page:
            return now() - start
        position = page[-1].id


def rebuild_seconds(url: str) -> tuple[float, int]:
    """``(seconds, events applied)`` of one rebuild of the report tables."""
    from phaseledger.projections.reports import Reports

    with Reports(url) as reports:
        start = now()
        applied = reports.rebuild()
        return now() - start, applied


def peak_rebuild_bytes(url: str) -> int:
    """Peak Python memory allocated during one rebuild."""
    from phaseledger.projections.reports import Reports

    with Reports(url) as reports:
        tracemalloc.start()
        try:
            reports.rebuild()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def unavailable() -> str | None:
    """Why the projection benchmark cannot run here, or None."""
    try:
        from phaseledger.projections.reports import Reports  # noqa: F401
    except ImportError as exc:
        return f"report projections are not available: {exc}"
    return None


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure projection rebuilds on SQLite and (when reachable) PostgreSQL."""
    results = []
    for backend in backends.durable:
        with backends.store_url(backend, "projections") as url:
            small = asyncio.run(add_runs(url, sizes.events // 10, sizes.steps_per_run))
            small_peak = peak_rebuild_bytes(url)
            total = small + asyncio.run(add_runs(url, sizes.events - small, sizes.steps_per_run))
            full_peak = peak_rebuild_bytes(url)
            store = Store(url, snapshot_every=None)
            values, floors = [], []
            try:
                for _ in range(sizes.repeats):
                    applied: list[int] = []

                    def subject(url: str = url) -> float:
                        seconds, count = rebuild_seconds(url)
                        applied.append(count)
                        return seconds

                    value, floor = bracketed(lambda: read_log_seconds(store), subject)
                    values.append(applied[0] / value)
                    floors.append(applied[0] / floor)
            finally:
                store.close()
        results.append(Result.paired(
            "projections", f"{backend} rebuild, {total:,} events", "rebuild", "events/s", values,
            f"{backend} log read", floors, target="≥ 50,000 events/s", higher_is_better=True, events=total,
        ))
        results.append(Result.paired(
            "projections", f"{backend} peak memory, {small:,} → {total:,} events", "peak memory", "KiB",
            [full_peak / 1024], f"peak at {small:,} events", [small_peak / 1024],
            target="flat (ratio ≈ 1)", events=total,
        ))
    return results
