"""(8) What declaring an external effect costs: µs per effect step against a plain step, same run.

One phase runs ``steps`` trivial plain steps, then ``steps`` trivial steps declared with
``effect=True``, on each store (commits after every step, the default). An effect step
appends and commits its intent before it runs, then its result: one more append than a
plain step. The plain steps of the same run are the floor, so the ratio is taken within
the run, and each repeat is a fresh run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pydantic import BaseModel

from benchmarks._harness import Backends, Result
from phaseledger import Context, Engine, Workflow

TARGETS = {"sqlite": "≤ 2.5x", "postgres": "≤ 2.5x"}


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    steps: int = 300
    """Plain steps, then as many effect steps, per run."""
    repeats: int = 5


class EffectState(BaseModel):
    n: int = 0


def trivial(i: int) -> int:
    return i


def effect_workflow(marks: list[float]) -> Workflow[EffectState]:
    """One phase: ``n`` plain steps then ``n`` effect steps, marking the clock before, between and after."""
    wf = Workflow("bench-effects", state=EffectState)

    @wf.phase(initial=True, final=True)
    async def work(ctx: Context[EffectState]) -> int:
        marks.append(time.perf_counter())
        for i in range(ctx.state.n):
            await ctx.step("plain", trivial, i)
        marks.append(time.perf_counter())
        for i in range(ctx.state.n):
            await ctx.step("effect", trivial, i, effect=True)
        marks.append(time.perf_counter())
        return ctx.state.n

    return wf


async def run_once(store_url: str, steps: int) -> tuple[float, float]:
    """Seconds per effect step and per plain step of one run."""
    marks: list[float] = []
    wf = effect_workflow(marks)
    engine = Engine(store_url, workflows=[wf])
    try:
        run = await engine.run(wf, EffectState(n=steps))
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
    finally:
        engine.close()
    start, between, end = marks[-3:]
    return (end - between) / steps, (between - start) / steps


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure the effect step's cost against the plain step's on memory, SQLite and (when reachable) PostgreSQL."""
    results = []
    for backend in ["memory", *backends.durable]:
        values, floors = [], []
        for _ in range(sizes.repeats):
            with backends.store_url(backend, "effects") as url:
                effect, plain = asyncio.run(run_once(url, sizes.steps))
            values.append(effect * 1e6)
            floors.append(plain * 1e6)
        results.append(Result.paired(
            "effects", f"{backend} effect step", "per step", "µs", values, "plain step", floors,
            target=TARGETS.get(backend), steps=sizes.steps,
        ))
    return results
