"""(8) The web view's runs list with many runs: the time to serve a page, against the run index.

A store gets ``runs`` runs (started, not driven: each is two events) and the report tables
are brought up to date. Each repeat serves, through the ASGI app in process (Starlette's
TestClient: routing, the catch-up check, the page query and its count, the template), the
first page of the list, a page deep in it, and a filtered page (status and text in the run
id), each bracketed by the floor: the run index's own query of every run's row, the
cheapest listing of runs the store has. Target: a page under a second with 10,000 runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from benchmarks._harness import Backends, Result, bracketed, now
from benchmarks.workloads import StepsState, Timings, steps_workflow
from phaseledger import Engine
from phaseledger.store.eventstore import Store


@dataclass(frozen=True)
class Sizes:
    """How many runs, and how often."""

    runs: int = 10_000
    repeats: int = 5


async def add_runs(url: str, runs: int) -> None:
    """Start ``runs`` runs (two events each) in batches of concurrent starts."""
    wf = steps_workflow(Timings())
    engine = Engine(url, workflows=[wf])
    try:
        for first in range(0, runs, 100):
            await asyncio.gather(*(engine.start(wf, StepsState(n=1), run_id=f"bench-{i:06d}")
                                   for i in range(first, min(first + 100, runs))))
    finally:
        engine.close()


def index_seconds(store: Store) -> float:
    """The floor: the run index's query of every run's row."""
    index = store.run_index()
    start = now()
    index.rows()
    return now() - start


def unavailable() -> str | None:
    """Why the web benchmark cannot run here (the ``web`` extra is missing), or None."""
    try:
        from phaseledger.web import require_web

        require_web()
        import httpx  # noqa: F401  (Starlette's TestClient)
    except ImportError as exc:
        return f"the web view is not installed: {exc}"
    return None


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Serve pages of the runs list on SQLite and (when reachable) PostgreSQL."""
    from starlette.testclient import TestClient

    from phaseledger.web import create_app

    results = []
    for backend in backends.durable:
        with backends.store_url(backend, "web") as url:
            asyncio.run(add_runs(url, sizes.runs))
            store = Store(url, snapshot_every=None)
            store.run_index().catch_up_fully()
            last = max(sizes.runs // 50, 1)
            cases = {"first page": "/runs", f"page {last}": f"/runs?page={last}",
                     "filtered": "/runs?status=running&q=bench-00"}
            samples: dict[str, tuple[list[float], list[float]]] = {case: ([], []) for case in cases}
            try:
                with TestClient(create_app(url)) as client:
                    client.get("/runs").raise_for_status()  # brings the report tables up to date
                    for _ in range(sizes.repeats):
                        for case, path in cases.items():
                            def serve(path: str = path) -> float:
                                start = now()
                                client.get(path).raise_for_status()
                                return now() - start

                            value, floor = bracketed(lambda store=store: index_seconds(store), serve)
                            samples[case][0].append(value * 1000)
                            samples[case][1].append(floor * 1000)
            finally:
                store.close()
            for case, (values, floors) in samples.items():
                results.append(Result.paired(
                    "web", f"{backend} runs list, {case}, {sizes.runs:,} runs", "page served", "ms", values,
                    f"{backend} run index query", floors, target="< 1,000 ms", runs=sizes.runs,
                ))
    return results
