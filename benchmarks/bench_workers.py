"""(5) Workers on PostgreSQL: throughput with 1, 2 and 4 processes, and signal-to-wake delay.

Throughput: ``runs`` runs of ``steps`` steps, each step waiting ``io_seconds`` (an I/O
call), are started without being driven; then W worker processes (``concurrency`` runs
each) drive them all. The clock runs from the moment every worker has started until the
last run completes. The floor is the ideal: every step's wait, with the runs spread over
W x concurrency slots and no cost for durability (a ratio of 1 would be perfect).

Signal-to-wake: runs suspended on ``wait_for_signal`` are woken one by one while one
worker runs; each run records the wall time it woke, and the delay from just before
``engine.signal`` to that time is reported as p50 and p99 (against the worker's
``poll_interval``, the bound when no notification arrives).

Worker processes run ``python -m benchmarks.bench_workers STORE_URL CONCURRENCY``.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from benchmarks._harness import Backends, Result, Stats, now
from phaseledger import Context, Engine, Workflow

ROOT = Path(__file__).resolve().parents[1]
POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    runs: int = 40
    steps: int = 10
    io_seconds: float = 0.02
    concurrency: int = 10
    processes: tuple[int, ...] = (1, 2, 4)
    signals: int = 30
    repeats: int = 1
    timeout: float = 300.0


class Job(BaseModel):
    """How many steps, each waiting how long."""

    steps: int
    io_seconds: float


async def _io(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return 1


def _woke() -> float:
    return time.time()


jobs = Workflow("bench-jobs", state=Job)


@jobs.phase(initial=True, to={"done": None, "wait": None})
async def work(ctx: Context[Job]) -> str:
    for _ in range(ctx.state.steps):
        await ctx.step("io", _io, ctx.state.io_seconds)
    return "done" if ctx.state.steps else "wait"


@jobs.phase(to="done")
async def wait(ctx: Context[Job]) -> str:
    await ctx.wait_for_signal("go")
    await ctx.step("woke", _woke)
    return "done"


@jobs.phase(final=True)
async def done(ctx: Context[Job]) -> int:
    return ctx.state.steps


def _spawn(url: str, processes: int, concurrency: int, ready: Path) -> list[subprocess.Popen[bytes]]:
    """Start worker processes; each creates a file in ``ready`` once it polls the store."""
    ready.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen([sys.executable, "-m", "benchmarks.bench_workers", url, str(concurrency), str(ready)],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(processes)
    ]


async def _until_ready(workers: list[subprocess.Popen[bytes]], ready: Path, timeout: float) -> None:
    deadline = now() + timeout
    while len(list(ready.iterdir())) < len(workers):
        if now() > deadline or any(w.poll() is not None for w in workers):
            raise RuntimeError("the worker processes did not start")
        await asyncio.sleep(0.02)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def _wait_for(engine: Engine, run_ids: list[str], status: str, timeout: float) -> None:
    """Return once every run has ``status``.

    The runs are looked at one at a time, in the order given (about the order they finish
    in), so waiting costs one read per 10 ms rather than one per pending run: on a small
    machine, reading a hundred runs every 10 ms took CPU from the workers measured.
    """
    deadline = now() + timeout
    for run_id in run_ids:
        while engine.get(run_id).status != status:
            if now() > deadline:
                pending = sum(engine.get(r).status != status for r in run_ids)
                raise RuntimeError(f"{pending} runs not {status} after {timeout} s")
            await asyncio.sleep(0.01)


async def throughput(url: str, processes: int, sizes: Sizes, ready: Path) -> float:
    """Seconds for W workers to drive every run to completion, from when they are all up."""
    engine = Engine(url, workflows=[jobs])
    workers = _spawn(url, processes, sizes.concurrency, ready)
    try:
        await _until_ready(workers, ready, sizes.timeout)
        start = now()
        run_ids = [(await engine.start(jobs, Job(steps=sizes.steps, io_seconds=sizes.io_seconds))).run_id
                   for _ in range(sizes.runs)]
        await _wait_for(engine, run_ids, "completed", sizes.timeout)
        return now() - start
    finally:
        _stop(workers)
        engine.close()


def shard_of(run_id: str, shards: int) -> int:
    """The shard a run lives in: a stable hash of its id (the same in every process and release)."""
    return zlib.crc32(run_id.encode()) % shards


async def sharded_throughput(urls: list[str], sizes: Sizes, ready: Path) -> float:
    """Seconds for one worker process per store to drive every run, the runs sharded over the stores by id."""
    engines = [Engine(url, workflows=[jobs]) for url in urls]
    workers = [w for i, url in enumerate(urls) for w in _spawn(url, 1, sizes.concurrency, ready / str(i))]
    try:
        for i in range(len(urls)):
            await _until_ready(workers[i:i + 1], ready / str(i), sizes.timeout)
        start = now()
        placed: list[list[str]] = [[] for _ in urls]
        for n in range(sizes.runs):
            run_id = f"job-{n}-{uuid.uuid4().hex[:6]}"
            shard = shard_of(run_id, len(urls))
            await engines[shard].start(jobs, Job(steps=sizes.steps, io_seconds=sizes.io_seconds), run_id=run_id)
            placed[shard].append(run_id)
        for engine, run_ids in zip(engines, placed, strict=True):
            await _wait_for(engine, run_ids, "completed", sizes.timeout)
        return now() - start
    finally:
        _stop(workers)
        for engine in engines:
            engine.close()


async def wake_delays(url: str, sizes: Sizes, ready: Path) -> list[float]:
    """Seconds from sending a signal to the woken run's first step, for ``signals`` runs."""
    engine = Engine(url, workflows=[jobs])
    workers = _spawn(url, 1, sizes.concurrency, ready)
    try:
        await _until_ready(workers, ready, sizes.timeout)
        run_ids = [(await engine.start(jobs, Job(steps=0, io_seconds=0))).run_id for _ in range(sizes.signals)]
        await _wait_for(engine, run_ids, "waiting", sizes.timeout)
        delays = []
        for run_id in run_ids:
            sent = time.time()
            await engine.signal(run_id, "go")
            await _wait_for(engine, [run_id], "completed", sizes.timeout)
            woke = next(e.data["result"] for e in engine.history(run_id)
                        if e.type == "StepRecorded" and e.data["name"] == "woke")
            delays.append(woke - sent)
        return delays
    finally:
        _stop(workers)
        engine.close()


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure worker throughput and wake delay on PostgreSQL (skipped without it)."""
    if not backends.postgres:
        return []
    results = []
    for processes in sizes.processes:
        values, floors = [], []
        for _ in range(sizes.repeats):
            with backends.store_url("postgres", "workers") as url:
                ready = backends.tmpdir / f"ready-{uuid.uuid4().hex[:8]}"
                elapsed = asyncio.run(throughput(url, processes, sizes, ready))
            ideal = sizes.steps * sizes.io_seconds * math.ceil(sizes.runs / (processes * sizes.concurrency))
            values.append(sizes.runs * sizes.steps / elapsed)
            floors.append(sizes.runs * sizes.steps / ideal)
        results.append(Result.paired(
            "workers", f"postgres {processes} worker process(es) x {sizes.concurrency}", "steps/s", "steps/s",
            values, "ideal (no durability cost)", floors, higher_is_better=True, runs=sizes.runs,
            steps=sizes.steps, io_seconds=sizes.io_seconds,
            runs_per_second=[v / sizes.steps for v in values],
        ))
    results.append(_sharded(backends, sizes))
    with backends.store_url("postgres", "wake") as url:
        ready = backends.tmpdir / f"ready-{uuid.uuid4().hex[:8]}"
        delays = sorted(d * 1e3 for d in asyncio.run(wake_delays(url, sizes, ready)))
    p50 = Stats.of(delays).median
    p99 = delays[min(len(delays) - 1, math.ceil(0.99 * len(delays)) - 1)]
    for name, value in (("p50", p50), ("p99", p99)):
        results.append(Result.paired(
            "workers", f"postgres signal to wake, {name} of {len(delays)}", f"wake delay {name}", "ms", [value],
            "poll interval", [POLL_INTERVAL * 1e3], signals=len(delays),
        ))
    return results


def _sharded(backends: Backends, sizes: Sizes) -> Result:
    """Two worker processes on one store against one worker process on each of two stores
    (runs sharded by id): what splitting the runs over databases changes, on one server."""
    values, floors = [], []
    for _ in range(sizes.repeats):
        ready = backends.tmpdir / f"ready-{uuid.uuid4().hex[:8]}"
        with backends.store_url("postgres", "one") as url:
            one = asyncio.run(throughput(url, 2, sizes, ready / "one"))
        with backends.store_url("postgres", "shard_a") as a, backends.store_url("postgres", "shard_b") as b:
            two = asyncio.run(sharded_throughput([a, b], sizes, ready / "two"))
        values.append(sizes.runs * sizes.steps / two)
        floors.append(sizes.runs * sizes.steps / one)
    return Result.paired(
        "workers", f"postgres 2 stores (runs sharded by id) x 1 worker x {sizes.concurrency}", "steps/s", "steps/s",
        values, "1 store x 2 workers", floors, higher_is_better=True, runs=sizes.runs, steps=sizes.steps,
    )


async def _worker_main(url: str, concurrency: int, ready: Path) -> None:
    engine = Engine(url, workflows=[jobs])
    try:
        worker = engine.worker(concurrency=concurrency, poll_interval=POLL_INTERVAL)
        task = asyncio.ensure_future(worker.run())
        await worker.wait_until_started()
        (ready / f"{os.getpid()}").touch()
        await task
    finally:
        engine.close()


if __name__ == "__main__":
    asyncio.run(_worker_main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
