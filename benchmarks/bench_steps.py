"""(1) What a journaled step costs: µs per ``ctx.step`` of a trivial function, against the floor.

A run of ``steps`` trivial steps in one phase, on each store, committing after every step
(``checkpoint_every_n_steps=1``, the default) and after every 10. Each repeat measures the
floor first, then the run, back to back; the ratio is taken within the repeat.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from benchmarks._harness import Backends, Result, bracketed
from benchmarks.floors import call_floor, postgres_commit_floor, sqlite_commit_floor, store_sqlite_synchronous
from benchmarks.workloads import StepsState, Timings, steps_workflow
from phaseledger import Engine

TARGETS = {"sqlite": "≤ 2x", "postgres": "≤ 2.5x"}
FLOOR_NAMES = {"memory": "call", "sqlite": "sqlite commit", "postgres": "postgres commit"}


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    steps: int = 1000
    floor_ops: int = 300
    """Commits per floor measurement (one before and one after each run)."""
    repeats: int = 5
    checkpoints: tuple[int, ...] = (1, 10)


async def run_steps(store_url: str, steps: int, checkpoint: int, **engine_options: object) -> float:
    """Seconds per step of one run of ``steps`` trivial steps on a fresh engine."""
    timings = Timings()
    wf = steps_workflow(timings, checkpoint_every_n_steps=checkpoint)
    engine = Engine(store_url, workflows=[wf], **engine_options)  # type: ignore[arg-type]
    try:
        run = await engine.run(wf, StepsState(n=steps))
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
        first, last = timings.marks[run.run_id]
        return (last - first) / steps
    finally:
        engine.close()


def floor_seconds(backends: Backends, backend: str, store_url: str, ops: int, synchronous: int | None) -> float:
    """One measurement of the floor of ``backend`` (seconds per operation)."""
    if backend == "memory":
        return call_floor(ops * 100)
    if backend == "sqlite":
        return sqlite_commit_floor(backends.sqlite_path("floor"), ops, synchronous or 2)
    schema = store_url.rsplit("schema=", 1)[1]
    return postgres_commit_floor(store_url, schema, ops)


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure step cost on memory, SQLite and (when reachable) PostgreSQL."""
    results = []
    synchronous = None
    for backend in ["memory", *backends.durable]:
        for checkpoint in sizes.checkpoints:
            values, floors = [], []
            for _ in range(sizes.repeats):
                with backends.store_url(backend, "steps") as url:
                    if backend == "sqlite" and synchronous is None:
                        synchronous = store_sqlite_synchronous(url)
                    value, floor = bracketed(
                        lambda url=url: floor_seconds(backends, backend, url, sizes.floor_ops, synchronous),
                        lambda url=url: asyncio.run(run_steps(url, sizes.steps, checkpoint)),
                    )
                    values.append(value * 1e6)
                    floors.append(floor * 1e6)
            results.append(Result.paired(
                "steps", f"{backend} checkpoint_every_n_steps={checkpoint}", "per step", "µs", values,
                FLOOR_NAMES[backend], floors, target=TARGETS.get(backend) if checkpoint == 1 else None,
                steps=sizes.steps, sqlite_synchronous=synchronous if backend == "sqlite" else None,
            ))
    return results
