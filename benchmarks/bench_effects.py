"""(8) What declaring an external effect costs: µs per effect step against a plain step, same run.

One phase runs ``steps`` trivial plain steps and ``steps`` trivial steps declared with
``effect=True``, on each store (commits after every step, the default), in alternating
blocks of ``block`` steps. An effect step appends and commits its intent before it runs,
then its result: one more append than a plain step. The plain steps of the same run are
the floor, so the ratio is taken within the run, and each repeat is a fresh run. The
blocks alternate because a commit costs more while a fresh SQLite file and its WAL grow
(a plain step took ≈ 420 µs over a new file's first 300 steps, ≈ 300 over the next 300
and ≈ 225 after): run all plain steps first and they pay for that growth alone.
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
    """Plain steps, and as many effect steps, per run."""
    block: int = 50
    """Steps of one kind before the other kind's turn."""
    repeats: int = 5


class EffectState(BaseModel):
    n: int = 0


def trivial(i: int) -> int:
    return i


def effect_workflow(spent: dict[str, float], block: int) -> Workflow[EffectState]:
    """One phase: ``n`` plain and ``n`` effect steps in alternating blocks; the seconds each kind took go in ``spent``."""
    wf = Workflow("bench-effects", state=EffectState)

    @wf.phase(initial=True, final=True)
    async def work(ctx: Context[EffectState]) -> int:
        spent.update(plain=0.0, effect=0.0)
        for first in range(0, ctx.state.n, block):
            for kind in ("plain", "effect"):
                start = time.perf_counter()
                for i in range(first, min(first + block, ctx.state.n)):
                    if kind == "effect":
                        await ctx.step(kind, trivial, i, effect=True)
                    else:
                        await ctx.step(kind, trivial, i)
                spent[kind] += time.perf_counter() - start
        return ctx.state.n

    return wf


async def run_once(store_url: str, steps: int, block: int) -> tuple[float, float]:
    """Seconds per effect step and per plain step of one run."""
    spent: dict[str, float] = {}
    wf = effect_workflow(spent, block)
    engine = Engine(store_url, workflows=[wf])
    try:
        run = await engine.run(wf, EffectState(n=steps))
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
    finally:
        engine.close()
    return spent["effect"] / steps, spent["plain"] / steps


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure the effect step's cost against the plain step's on memory, SQLite and (when reachable) PostgreSQL."""
    results = []
    for backend in ["memory", *backends.durable]:
        values, floors = [], []
        for _ in range(sizes.repeats):
            with backends.store_url(backend, "effects") as url:
                effect, plain = asyncio.run(run_once(url, sizes.steps, sizes.block))
            values.append(effect * 1e6)
            floors.append(plain * 1e6)
        results.append(Result.paired(
            "effects", f"{backend} effect step", "per step", "µs", values, "plain step", floors,
            target=TARGETS.get(backend), steps=sizes.steps,
        ))
    return results
