"""(8) The deploy gate: ``check_deploy`` over a store of 10,000 runs waiting for a signal.

Each run recorded a few steps and waits for a signal, as runs wait in production. The gate
loads every run and replays its current phase against the workflow code, serving the
recorded steps from the log and stopping at the signal. Its floor, measured in the same
repeat on the same store, is loading the same runs (``Store.load`` of each): the part of
the gate no cleverness can avoid. The ratio says what the replay adds to reading the runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from benchmarks._harness import Backends, Result, bracketed, now
from phaseledger import Context, Engine, Workflow, check_deploy
from phaseledger.store.eventstore import Store


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    runs: int = 10_000
    steps: int = 3
    repeats: int = 3


class Order(BaseModel):
    """The state of a waiting run."""

    item: str = "book"
    checked: list[str] = []


def waiting_workflow(steps: int) -> Workflow[Order]:
    """A phase of ``steps`` steps that then waits for an approval signal."""
    wf = Workflow("gate-bench", state=Order)

    @wf.phase(initial=True, to="ship")
    async def check(ctx: Context[Order]) -> None:
        for n in range(steps):
            ctx.state.checked.append(await ctx.step(f"check {n}", lambda n=n: f"ok {n}"))
        await ctx.wait_for_signal("approved")

    @wf.phase(final=True)
    async def ship(ctx: Context[Order]) -> str:
        return "shipped"

    return wf


def seed(url: str, sizes: Sizes) -> list[str]:
    """``sizes.runs`` waiting runs: one driven for real, the others copies of its log."""
    workflow = waiting_workflow(sizes.steps)
    engine = Engine(url, workflows=[workflow])
    try:
        asyncio.run(engine.run(workflow, run_id="w00000"))
        events = engine.store.events("w00000")
        ids = ["w00000"]
        for n in range(1, sizes.runs):
            run_id = f"w{n:05d}"
            engine.store.append([dataclasses.replace(e, originator_id=run_id) for e in events])
            ids.append(run_id)
        return ids
    finally:
        engine.close()


def _load_all(store: Store, ids: list[str]) -> float:
    start = now()
    for run_id in store.run_ids():
        store.load(run_id)
    return now() - start


def _gate(store: Store, workflow: Workflow[Any], runs: int) -> float:
    start = now()
    report = asyncio.run(check_deploy(store, [workflow]))
    elapsed = now() - start
    if not report.ok or report.counts["compatible"] != runs:
        raise RuntimeError(f"the gate found {report.counts}, not {runs} compatible runs")
    return elapsed


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Time the gate on SQLite and (when reachable) PostgreSQL, against loading the same runs."""
    results = []
    workflow = waiting_workflow(sizes.steps)
    for backend in backends.durable:
        with backends.store_url(backend, "gate") as url:
            ids = seed(url, sizes)
            store = Store(url)
            try:
                values, floors = [], []
                for _ in range(sizes.repeats):
                    value, floor = bracketed(lambda: _load_all(store, ids),
                                             lambda: _gate(store, workflow, len(ids)))
                    values.append(value)
                    floors.append(floor)
            finally:
                store.close()
        results.append(Result.paired(
            "gate", f"{backend} {len(ids):,} waiting runs", "check_deploy", "s", values,
            f"{backend} load the runs", floors, target="≤ 3x loading the runs", runs=len(ids),
        ))
    return results
