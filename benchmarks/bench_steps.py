"""(1) What a journaled step costs: µs per ``ctx.step`` of a trivial function, against the floor.

A run of ``steps`` trivial steps in one phase, on each store, committing after every step
(``checkpoint_every_n_steps=1``, the default) and after every 10. Each repeat measures the
floor first, then the run, back to back; the ratio is taken within the repeat.

On memory and SQLite the process's CPU time per step is reported too (``time.process_time``
over the same steps, the store's writer thread included), and on SQLite the CPU of the
floor's own commits: the difference is what phaseledger spends between the engine and
SQLite's commit. (On PostgreSQL the server's CPU is in another process, so it is not.)
On PostgreSQL the store's append function is also timed alone, one call per step from an
event loop as a step sends it, against the same floor: the floor of a step that keeps
the append's guarantees.

On each durable store the floor's commits are also timed each after as much CPU as the
memory store's whole step took in the same run (a busy loop, :func:`~benchmarks.floors.busy`),
against the floor's back-to-back commits: what a commit costs once a process does a
step's worth of work before it. On machines whose commits are fast that costs well above
the back-to-back floor (the server or the disk is woken from idle each time), and no
journaled step can cost less than it.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass

from benchmarks._harness import Backends, Result, bracketed
from benchmarks.floors import (
    call_floor,
    postgres_append_floor,
    postgres_commit_floor,
    sqlite_commit_floor_times,
    store_sqlite_synchronous,
)
from benchmarks.workloads import StepsState, Timings, steps_workflow
from phaseledger import Engine

TARGETS = {"sqlite": "≤ 1.5x", "postgres": "≤ 1.4x"}
FLOOR_NAMES = {"memory": "call", "sqlite": "sqlite commit", "postgres": "postgres commit"}
CPU_BACKENDS = ("memory", "sqlite")
"""Where the CPU per step is reported: the whole step runs in this process."""
CPU_METRIC = "CPU per step"
CPU_FLOOR_NAME = "sqlite commit CPU"
APPEND_ALONE = "postgres append function alone, from an event loop"
"""The case of the PostgreSQL step's floor: the store's append function and nothing else."""
AFTER_WORK = "commit after the memory step's work"
"""The case (after the store's name) of a commit made after as much CPU as the memory store's step."""


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    steps: int = 1000
    floor_ops: int = 300
    """Commits per floor measurement (one before and one after each run)."""
    repeats: int = 5
    checkpoints: tuple[int, ...] = (1, 10)


async def run_steps_times(store_url: str, steps: int, checkpoint: int, **engine_options: object) -> tuple[float, float]:
    """``(wall, CPU)`` seconds per step of one run of ``steps`` trivial steps on a fresh engine."""
    timings = Timings()
    wf = steps_workflow(timings, checkpoint_every_n_steps=checkpoint)
    engine = Engine(store_url, workflows=[wf], **engine_options)  # type: ignore[arg-type]
    try:
        run = await engine.run(wf, StepsState(n=steps))
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
        first, last = timings.marks[run.run_id]
        cpu_first, cpu_last = timings.cpu_marks[run.run_id]
        return (last - first) / steps, (cpu_last - cpu_first) / steps
    finally:
        engine.close()


async def run_steps(store_url: str, steps: int, checkpoint: int, **engine_options: object) -> float:
    """Seconds per step of one run of ``steps`` trivial steps on a fresh engine."""
    return (await run_steps_times(store_url, steps, checkpoint, **engine_options))[0]


def floor_times(backends: Backends, backend: str, store_url: str, ops: int,
                synchronous: int | None, work: float = 0.0) -> tuple[float, float | None]:
    """One measurement of the floor of ``backend``: ``(wall, CPU or None)`` seconds per operation
    (on a durable store, each commit after ``work`` seconds of CPU: see ``AFTER_WORK``)."""
    if backend == "memory":
        return call_floor(ops * 100), None
    if backend == "sqlite":
        return sqlite_commit_floor_times(backends.sqlite_path("floor"), ops, synchronous or 2, work)
    schema = store_url.rsplit("schema=", 1)[1]
    return postgres_commit_floor(store_url, schema, ops, work), None


def floor_seconds(backends: Backends, backend: str, store_url: str, ops: int, synchronous: int | None,
                  work: float = 0.0) -> float:
    """One measurement of the floor of ``backend`` (seconds per operation; see :func:`floor_times`)."""
    return floor_times(backends, backend, store_url, ops, synchronous, work)[0]


def append_alone(backends: Backends, sizes: Sizes) -> Result:
    """The store's append function called alone from an event loop, against the commit floor
    of the same repeat: the floor of a journaled step on PostgreSQL (see ``postgres_append_floor``)."""
    values, floors = [], []
    for _ in range(sizes.repeats):
        with backends.store_url("postgres", "append") as url:
            Engine(url).close()  # sets the store up
            value, floor_value = bracketed(
                lambda url=url: floor_seconds(backends, "postgres", url, sizes.floor_ops, None),
                lambda url=url: postgres_append_floor(url, sizes.steps),
            )
        values.append(value * 1e6)
        floors.append(floor_value * 1e6)
    return Result.paired("steps", APPEND_ALONE, "per step", "µs", values, FLOOR_NAMES["postgres"], floors,
                         steps=sizes.steps)


def commit_after_work(backends: Backends, backend: str, sizes: Sizes, work: float,
                      synchronous: int | None) -> Result:
    """Commits each made after ``work`` seconds of CPU (the memory store's step), against the
    back-to-back commits of the same repeat (see the module)."""
    values, floors = [], []
    for _ in range(sizes.repeats):
        with backends.store_url(backend, "after-work") as url:
            value, floor_value = bracketed(
                lambda url=url: floor_seconds(backends, backend, url, sizes.floor_ops, synchronous),
                lambda url=url: floor_seconds(backends, backend, url, sizes.floor_ops, synchronous, work),
            )
        values.append(value * 1e6)
        floors.append(floor_value * 1e6)
    return Result.paired("steps", f"{backend} {AFTER_WORK}", "per step", "µs", values, FLOOR_NAMES[backend],
                         floors, work_us=work * 1e6)


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure step cost on memory, SQLite and (when reachable) PostgreSQL."""
    results = []
    synchronous = None
    memory_step = 0.0
    for backend in ["memory", *backends.durable]:
        for checkpoint in sizes.checkpoints:
            values, floors, cpus, floor_cpus = [], [], [], []
            for _ in range(sizes.repeats):
                with backends.store_url(backend, "steps") as url:
                    if backend == "sqlite" and synchronous is None:
                        synchronous = store_sqlite_synchronous(url)
                    pair_cpu: list[float] = []
                    run_cpu: list[float] = []

                    def floor(url: str = url) -> float:
                        wall, cpu = floor_times(backends, backend, url, sizes.floor_ops, synchronous)
                        if cpu is not None:
                            pair_cpu.append(cpu)
                        return wall

                    def subject(url: str = url) -> float:
                        wall, cpu = asyncio.run(run_steps_times(url, sizes.steps, checkpoint))
                        run_cpu.append(cpu)
                        return wall

                    value, floor_value = bracketed(floor, subject)
                    values.append(value * 1e6)
                    floors.append(floor_value * 1e6)
                    cpus.append(run_cpu[0] * 1e6)
                    if pair_cpu:
                        floor_cpus.append(sum(pair_cpu) / len(pair_cpu) * 1e6)
            case = f"{backend} checkpoint_every_n_steps={checkpoint}"
            results.append(Result.paired(
                "steps", case, "per step", "µs", values,
                FLOOR_NAMES[backend], floors, target=TARGETS.get(backend) if checkpoint == 1 else None,
                steps=sizes.steps, sqlite_synchronous=synchronous if backend == "sqlite" else None,
            ))
            if backend == "memory" and checkpoint == 1:
                memory_step = statistics.median(values) / 1e6
            if backend != "memory" and checkpoint == 1 and memory_step:
                results.append(commit_after_work(backends, backend, sizes, memory_step, synchronous))
            if backend == "postgres" and checkpoint == 1:
                results.append(append_alone(backends, sizes))
            if backend in CPU_BACKENDS:
                results.append(Result.paired(
                    "steps", case, CPU_METRIC, "µs", cpus, CPU_FLOOR_NAME if floor_cpus else None,
                    floor_cpus or None, steps=sizes.steps,
                ))
    return results
