"""(9) Scale: memory per waiting run, concurrency in one worker, the table lock, a follower's lag.

Four measurements, each in worker processes of its own (``python -m benchmarks.bench_scale``):

1. **Memory held per waiting run.** A store holds N suspended runs (half waiting for a
   signal, half sleeping until a far timer), seeded by copying the log of one run of each
   kind. One worker process polls it until its run index has read the whole log, then for
   ``idle_polls`` more poll intervals, and reports its RSS (and high-water mark) and its
   Python allocations (tracemalloc: held after a collection, and peak). Figures are taken
   against the same worker on an empty store (N = 0); a worker that keeps nothing per
   waiting run stays at about 0 bytes per run.
2. **Concurrent I/O-bound runs in one worker process.** K runs of ``steps`` steps, each
   awaiting ``io_seconds`` of ``asyncio.sleep``, are started without being driven; one
   worker with ``concurrency=K`` drives them until none is runnable. Steps per second are
   set against the ideal (every run's waits overlapped, no cost for durability), and the
   worker's CPU seconds (``getrusage`` of its own process, threads included) against wall
   seconds tell where it becomes CPU-bound.
3. **1, 2 and 4 worker processes on one PostgreSQL, and the table lock.** The throughput
   run of ``bench_workers`` (runs started while the workers run), with
   ``pg_stat_activity`` sampled every ``sample_interval``: of the store's backends inside
   the append function, what each waits for (the append takes ``LOCK TABLE ... IN
   EXCLUSIVE MODE``, so appends to one store run one at a time; see :data:`WAITS`). The
   share of append time spent waiting for that lock, and how often an append is in flight
   at all, say whether the lock is the ceiling.
4. **A report follower alongside.** During (3) a follower process (``Reports.follow()``)
   keeps the report tables up to date; the log's head and the tables' position are
   sampled, giving the lag in rows of the log and in seconds (from a row's being
   committed, as sampled, to the first sample where the tables include it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import math
import resource
import signal
import subprocess
import sys
import threading
import tracemalloc
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from benchmarks import bench_workers
from benchmarks._harness import Backends, Result, now, postgres_conninfo
from phaseledger import Context, Engine, Workflow

ROOT = Path(__file__).resolve().parents[1]
FAR = 10 * 365 * 86400.0
"""Seconds a timer-waiting run sleeps: far beyond any measurement."""
SEED_BATCH = 400
"""Runs whose copied events are inserted in one transaction when seeding."""


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    waiting: tuple[int, ...] = (0, 1_000, 10_000)
    idle_polls: int = 5
    poll_interval: float = 0.2
    concurrent: tuple[int, ...] = (1, 10, 100, 1_000)
    steps: int = 5
    io_seconds: float = 0.05
    processes: tuple[int, ...] = (1, 2, 4)
    workers: bench_workers.Sizes = field(
        default_factory=lambda: bench_workers.Sizes(runs=120, steps=10, io_seconds=0.02, concurrency=10))
    sample_interval: float = 0.02
    follow_interval: float = 0.2
    repeats: int = 1
    timeout: float = 600.0


# -- workflows --------------------------------------------------------------------------------


class Waiting(BaseModel):
    """Whether the run waits for a far timer rather than a signal."""

    timer: bool = False


waiting = Workflow("scale-waiting", state=Waiting)


@waiting.phase(initial=True, to="done")
async def wait(ctx: Context[Waiting]) -> str:
    if ctx.state.timer:
        await ctx.sleep(FAR)
    else:
        await ctx.wait_for_signal("go")
    return "done"


@waiting.phase(final=True)
async def done(ctx: Context[Waiting]) -> None:
    return None


jobs = bench_workers.jobs
"""Runs of ``steps`` steps, each awaiting ``io_seconds`` (shared with ``bench_workers``)."""


# -- child processes ----------------------------------------------------------------------------


def _child(mode: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.bench_scale", mode, *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _result_of(child: subprocess.Popen[bytes], out: Path, timeout: float) -> dict[str, Any]:
    try:
        _, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise RuntimeError(f"the worker process did not finish in {timeout} s") from None
    if child.returncode != 0 or not out.exists():
        raise RuntimeError(f"the worker process failed ({child.returncode}): {err.decode()[-2000:]}")
    document: dict[str, Any] = json.loads(out.read_text())
    return document


def _memory_now() -> tuple[int, int]:
    """``(RSS, peak RSS)`` of this process in bytes (Linux), else from getrusage."""
    rss = hwm = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except OSError:
        hwm = rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rss, hwm


def _cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _machine_busy() -> tuple[int, int]:
    """``(busy, total)`` CPU jiffies of the whole machine so far (Linux; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


async def _hold_main(url: str, expected: int, polls: int, interval: float, timeout: float, out: Path) -> None:
    """Poll the store with one worker until its index has read ``expected`` rows, then ``polls``
    more poll intervals; write this process's memory figures to ``out``."""
    tracemalloc.start()
    engine = Engine(url, workflows=[waiting])
    try:
        worker = engine.worker(concurrency=10, poll_interval=interval)
        task = asyncio.ensure_future(worker.run(handle_signals=False))
        await worker.wait_until_started()
        start, deadline = now(), now() + timeout
        while worker.stats.indexed < expected:
            if now() > deadline or task.done():
                raise RuntimeError(f"the worker indexed {worker.stats.indexed} of {expected} rows")
            await asyncio.sleep(interval / 4)
        indexed_in = now() - start
        await asyncio.sleep(polls * interval)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        rss, hwm = _memory_now()
        worker.stop()
        stats = await task
    finally:
        engine.close()
    out.write_text(json.dumps({
        "held": held, "peak": peak, "rss": rss, "rss_peak": hwm, "indexed": stats.indexed,
        "claimed": stats.claimed, "index_seconds": indexed_in,
    }))


async def _drive_main(url: str, concurrency: int, poll_interval: float, out: Path) -> None:
    """Drive every runnable run with one worker of ``concurrency``; write wall and CPU seconds."""
    engine = Engine(url, workflows=[jobs])
    try:
        worker = engine.worker(concurrency=concurrency, poll_interval=poll_interval)
        task = asyncio.ensure_future(worker.run(until_idle=True, handle_signals=False))
        await worker.wait_until_started()
        start, cpu, busy, rows = now(), _cpu_seconds(), _machine_busy(), engine.store.max_notification_id()
        stats = await task
        wall, cpu = now() - start, _cpu_seconds() - cpu
        busy_end, rows = _machine_busy(), engine.store.max_notification_id() - rows
    finally:
        engine.close()
    out.write_text(json.dumps({
        "wall": wall, "cpu": cpu, "completed": stats.completed, "claimed": stats.claimed, "rows": rows,
        "machine_busy": (busy_end[0] - busy[0]) / max(1, busy_end[1] - busy[1]),
    }))


def _follow_main(url: str, interval: float, ready: Path) -> None:
    """Follow the log into the report tables until SIGTERM."""
    from phaseledger.projections.reports import Reports

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Reports(url) as reports:
        reports.follow(interval)
        ready.touch()
        stop.wait()
        reports.stop()


# -- 1. memory per waiting run --------------------------------------------------------------------


def seed_waiting(url: str, runs: int) -> int:
    """``runs`` suspended runs, half waiting for a signal and half for a far timer; the log's size.

    One run of each kind is driven for real; the others are copies of its events (new run
    ids), inserted ``SEED_BATCH`` runs to a transaction.
    """
    if runs == 0:
        return 0
    engine = Engine(url, workflows=[waiting])
    try:
        store = engine.store
        templates: list[list[Any]] = []
        for n, timer in enumerate((False, True)):
            run_id = f"s{n}-0"
            view = asyncio.run(engine.run(waiting, Waiting(timer=timer), run_id=run_id))
            if view.status not in ("waiting", "sleeping"):
                raise RuntimeError(f"the seed run is {view.status}, not suspended")
            templates.append(store.events(run_id))
        batch: list[Any] = []
        for n in range(2, runs):
            kind = n % 2
            batch.extend(store.app.mapper.to_stored_event(dataclasses.replace(e, originator_id=f"s{kind}-{n}"))
                         for e in templates[kind])
            if n % SEED_BATCH == 0 or n == runs - 1:
                store.app.recorder.insert_events(batch)
                batch = []
        return store.max_notification_id()
    finally:
        engine.close()


def held_memory(url: str, expected: int, sizes: Sizes, tmp: Path) -> dict[str, Any]:
    """The memory figures of one worker process polling the store (see :func:`_hold_main`)."""
    out = tmp / f"hold-{uuid.uuid4().hex[:8]}.json"
    child = _child("hold", url, str(expected), str(sizes.idle_polls), str(sizes.poll_interval),
                   str(sizes.timeout), str(out))
    return _result_of(child, out, sizes.timeout)


def memory(backends: Backends, sizes: Sizes) -> list[Result]:
    """Worker memory with N waiting runs, against N = 0, per backend."""
    results = []
    for backend in backends.durable:
        figures: dict[int, dict[str, Any]] = {}
        for runs in sorted(set(sizes.waiting) | {0}):
            with backends.store_url(backend, "hold") as url:
                expected = seed_waiting(url, runs)
                figures[runs] = held_memory(url, expected, sizes, backends.tmpdir)
                if figures[runs]["claimed"]:
                    raise RuntimeError(f"the worker claimed {figures[runs]['claimed']} waiting runs")
        base = figures[0]
        for runs, got in figures.items():
            if not runs:
                continue
            per_run = {key: (got[key] - base[key]) / runs for key in ("rss", "rss_peak", "held", "peak")}
            for key, metric in (("rss", "RSS"), ("peak", "tracemalloc peak"), ("held", "tracemalloc held")):
                results.append(Result.paired(
                    "scale", f"{backend} worker, {runs:,} runs waiting", metric, "KiB", [got[key] / 1024],
                    "0 runs waiting", [base[key] / 1024], target="≈ 0 B per waiting run" if key != "peak" else None,
                    runs=runs, bytes_per_run=per_run[key], per_run=per_run, figures=got, baseline=base,
                ))
    return results


# -- 2. concurrent runs in one worker -----------------------------------------------------------


async def _start_jobs(url: str, runs: int, sizes: Sizes) -> None:
    engine = Engine(url, workflows=[jobs])
    try:
        for _ in range(runs):
            await engine.start(jobs, bench_workers.Job(steps=sizes.steps, io_seconds=sizes.io_seconds))
    finally:
        engine.close()


def concurrency(backends: Backends, sizes: Sizes) -> list[Result]:
    """Steps/s and CPU of one worker driving K concurrent I/O-bound runs, per backend."""
    results = []
    for backend in backends.durable:
        for level in sizes.concurrent:
            values, floors, loads, busy, rows = [], [], [], [], []
            for _ in range(sizes.repeats):
                with backends.store_url(backend, "conc") as url:
                    asyncio.run(_start_jobs(url, level, sizes))
                    out = backends.tmpdir / f"drive-{uuid.uuid4().hex[:8]}.json"
                    got = _result_of(_child("drive", url, str(level), str(sizes.poll_interval), str(out)),
                                     out, sizes.timeout)
                if got["completed"] != level:
                    raise RuntimeError(f"the worker completed {got['completed']} of {level} runs")
                values.append(level * sizes.steps / got["wall"])
                floors.append(level / sizes.io_seconds)
                loads.append(got["cpu"] / got["wall"])
                busy.append(got["machine_busy"])
                rows.append(got["rows"] / got["wall"])
            case = f"{backend} 1 worker x {level:,} concurrent runs"
            results.append(Result.paired(
                "scale", case, "steps/s", "steps/s", values, "ideal (no durability cost)", floors,
                higher_is_better=True, runs=level, steps=sizes.steps, io_seconds=sizes.io_seconds,
                log_rows_per_second=rows,
            ))
            results.append(Result.paired(
                "scale", case, "worker CPU s / wall s", "", loads, None, None, machine_busy=busy,
            ))
    return results


# -- 3 and 4. the table lock, and a follower ----------------------------------------------------

_ACTIVITY = """
    SELECT query LIKE '%%\\_append\\_v%%' AS appending, wait_event_type, wait_event, count(*)
      FROM pg_stat_activity
     WHERE state = 'active' AND pid <> pg_backend_pid() AND position(%(schema)s in query) > 0
     GROUP BY 1, 2, 3
"""
"""The store's busy backends by what they wait for (the append function's call names it)."""

WAITS = {
    ("Lock", "relation"): "table lock",
    ("Lock", "object"): "NOTIFY commit lock",
    ("IO", "WALSync"): "WAL flush",
    ("LWLock", "WALWrite"): "WAL flush",
    (None, None): "running",
}
"""What an append waiting on each ``(wait_event_type, wait_event)`` waits for; others are "other"."""


@dataclass
class Samples:
    """What the sampler saw, one entry per sample."""

    times: list[float] = field(default_factory=list)
    appending: list[int] = field(default_factory=list)
    """Backends inside the append function."""
    append_waits: dict[str, int] = field(default_factory=dict)
    """Over all samples: appends by what they were waiting for (see :data:`WAITS`)."""
    other_lock: list[int] = field(default_factory=list)
    """Backends outside the append waiting for a lock (leases, run index, report tables)."""
    head: list[int] = field(default_factory=list)
    position: list[int] = field(default_factory=list)


class Sampler(threading.Thread):
    """Samples ``pg_stat_activity`` for the store's schema, the log's head and the report
    tables' position every ``interval`` seconds until stopped."""

    def __init__(self, url: str, schema: str, interval: float) -> None:
        super().__init__(name="bench-scale-sampler", daemon=True)
        from phaseledger.projections.reports import Reports

        self.url, self.schema, self.interval = url, schema, interval
        self.reports = Reports(url)
        self.samples = Samples()
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(postgres_conninfo(self.url), autocommit=True) as conn:
            while not self.stopping.is_set():
                self.sample(conn)
                self.stopping.wait(self.interval)

    def sample(self, conn: Any) -> None:
        """Take one sample."""
        appending = other_lock = 0
        s = self.samples
        for in_append, kind, event, count in conn.execute(_ACTIVITY, {"schema": self.schema}):
            if in_append:
                appending += count
                label = WAITS.get((kind, event), "other")
                s.append_waits[label] = s.append_waits.get(label, 0) + count
            elif kind == "Lock":
                other_lock += count
        s.times.append(now())
        s.appending.append(appending)
        s.other_lock.append(other_lock)
        s.head.append(self.reports.store.max_notification_id())
        s.position.append(self.reports.position() or 0)

    def caught_up(self) -> bool:
        """Whether the last sample has the tables at the log's head."""
        s = self.samples
        return bool(s.head) and s.position[-1] >= s.head[-1]

    def close(self) -> None:
        """Stop sampling and close the reports."""
        self.stopping.set()
        self.join()
        self.reports.close()


def _window(s: Samples) -> range:
    """The samples taken while the log grew (all of them if it never grew between two)."""
    grew = [i for i in range(1, len(s.head)) if s.head[i] > s.head[i - 1]]
    return range(grew[0], grew[-1] + 1) if grew else range(len(s.head))


def rates(s: Samples) -> tuple[float, float]:
    """``(log, tables)``: rows per second appended to the log and applied to the report
    tables while the log grew."""
    window = _window(s)
    first, last = window[0], window[-1]
    elapsed = s.times[last] - s.times[first]
    if elapsed <= 0:
        return 0.0, 0.0
    return (s.head[last] - s.head[first]) / elapsed, (s.position[last] - s.position[first]) / elapsed


def lags(s: Samples) -> tuple[list[float], list[float]]:
    """``(rows, seconds)`` of lag for each sample taken while the log grew.

    The seconds are from a sample to the first later sample whose position reaches the
    head seen at the first: a bound, to within one sample interval, on how long a committed
    row waited for the report tables.
    """
    window = _window(s)
    rows = [float(max(0, s.head[i] - s.position[i])) for i in window]
    seconds = []
    j = 0
    for i in window:
        j = max(j, i)
        while j < len(s.head) and s.position[j] < s.head[i]:
            j += 1
        if j < len(s.head):
            seconds.append(s.times[j] - s.times[i])
    return rows, seconds or [0.0]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def table_lock(backends: Backends, sizes: Sizes) -> list[Result]:
    """W worker processes on one PostgreSQL store: throughput, lock waits and a follower's lag."""
    if not backends.postgres:
        return []
    results = []
    w = sizes.workers
    for processes in sizes.processes:
        with backends.postgres_schema("lock") as (url, schema):
            Engine(url, workflows=[jobs]).close()  # set the store up before anyone reads it
            sampler = Sampler(url, schema, sizes.sample_interval)  # and the report tables
            ready = backends.tmpdir / f"follow-{uuid.uuid4().hex[:8]}"
            follower = _child("follow", url, str(sizes.follow_interval), str(ready))
            try:
                deadline = now() + 60
                while not ready.exists():
                    if follower.poll() is not None or now() > deadline:
                        raise RuntimeError("the report follower did not start")
                    threading.Event().wait(0.02)
                cpu, busy = _cpu_seconds(resource.RUSAGE_CHILDREN), _machine_busy()
                sampler.start()
                elapsed = asyncio.run(bench_workers.throughput(
                    url, processes, w, backends.tmpdir / f"ready-{uuid.uuid4().hex[:8]}"))
                cpu, busy_end = _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu, _machine_busy()
                deadline = now() + 30
                while not sampler.caught_up() and now() < deadline:
                    threading.Event().wait(sizes.sample_interval)
            finally:
                sampler.close()
                follower.send_signal(signal.SIGTERM)
                try:
                    follower.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    follower.kill()
                    follower.wait()
        s = sampler.samples
        appending, taken = sum(s.appending), max(1, len(s.times))
        share = {label: 100 * n / max(1, appending) for label, n in sorted(s.append_waits.items())}
        steps = w.runs * w.steps
        ideal = w.steps * w.io_seconds * math.ceil(w.runs / (processes * w.concurrency))
        case = f"postgres {processes} worker process(es) x {w.concurrency}"
        results.append(Result.paired(
            "scale", case, "steps/s", "steps/s", [steps / elapsed], "ideal (no durability cost)",
            [steps / ideal], higher_is_better=True, runs=w.runs, steps=w.steps, io_seconds=w.io_seconds,
            workers_cpu_per_wall=cpu / elapsed,
            machine_busy=(busy_end[0] - busy[0]) / max(1, busy_end[1] - busy[1]),
        ))
        for label in ("table lock", "NOTIFY commit lock"):
            results.append(Result.paired(
                "scale", case, f"append on {label}", "%", [share.get(label, 0.0)], samples=len(s.times),
                appends_in_flight=appending / taken, append_share=share,
                wait_seconds=s.append_waits.get(label, 0) * sizes.sample_interval,
                other_lock_waits_per_sample=sum(s.other_lock) / taken, sample_interval=sizes.sample_interval,
            ))
        rows, seconds = lags(s)
        written, applied = rates(s)
        results.append(Result.paired(
            "scale", f"{case}, report follower", "lag (rows of the log)", "rows", rows,
            p99=_percentile(rows, 0.99), follow_interval=sizes.follow_interval,
            log_rows_per_second=written, applied_rows_per_second=applied,
        ))
        results.append(Result.paired(
            "scale", f"{case}, report follower", "lag (s)", "s", seconds, p99=_percentile(seconds, 0.99),
            sample_interval=sizes.sample_interval, log_rows=s.head[-1] if s.head else 0,
            log_rows_per_second=written, applied_rows_per_second=applied,
        ))
    return results


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure memory per waiting run, concurrency in one worker, the table lock and a follower."""
    return memory(backends, sizes) + concurrency(backends, sizes) + table_lock(backends, sizes)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "hold":
        asyncio.run(_hold_main(args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4]), Path(args[5])))
    elif mode == "drive":
        asyncio.run(_drive_main(args[0], int(args[1]), float(args[2]), Path(args[3])))
    elif mode == "follow":
        _follow_main(args[0], float(args[1]), Path(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
