"""The benchmarks of the suite, by name, each with its full and its quick (smoke) sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import (
    bench_agents,
    bench_dispatch,
    bench_effects,
    bench_gate,
    bench_projections,
    bench_resume,
    bench_scale,
    bench_steps,
    bench_storage,
    bench_transactions,
    bench_web,
    bench_workers,
)
from benchmarks._harness import Backends, Result
from benchmarks.compare import bench_compare


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: what it measures, how to run it, and when it cannot run here."""

    title: str
    runner: Callable[..., list[Result]]
    full: Any
    quick: Any
    requires: Callable[[], str | None] = lambda: None
    """Returns why the benchmark cannot run here (a missing optional package), or None."""

    def unavailable(self) -> str | None:
        """Why this benchmark is skipped here, or None."""
        return self.requires()

    def run(self, backends: Backends, *, quick: bool = False, repeats: int | None = None) -> list[Result]:
        """Run with the full or quick sizes (``repeats`` overrides theirs)."""
        sizes = self.quick if quick else self.full
        if repeats is not None:
            sizes = dataclasses.replace(sizes, repeats=repeats)
        return self.runner(backends, sizes)


BENCHMARKS: dict[str, Benchmark] = {
    "gate": Benchmark(
        "deploy gate over 10,000 waiting runs", bench_gate.run, bench_gate.Sizes(),
        bench_gate.Sizes(runs=20, steps=2, repeats=1),
    ),
    "steps": Benchmark(
        "journaled step cost (1,000 trivial steps)", bench_steps.run, bench_steps.Sizes(),
        bench_steps.Sizes(steps=20, floor_ops=10, repeats=1, checkpoints=(1, 10)),
    ),
    "effects": Benchmark(
        "an effect step (intent, then result) against a plain step, same run", bench_effects.run,
        bench_effects.Sizes(), bench_effects.Sizes(steps=10, block=5, repeats=1),
    ),
    "transactions": Benchmark(
        "a transactional step (one row, exactly once) against a plain step", bench_transactions.run,
        bench_transactions.Sizes(), bench_transactions.Sizes(steps=10, repeats=1),
    ),
    "resume": Benchmark(
        "resume to first new step, and full replay", bench_resume.run, bench_resume.Sizes(),
        bench_resume.Sizes(histories=(30,), replay_events=60, floor_ops=5, repeats=1, snapshot_every=10),
    ),
    "storage": Benchmark(
        "bytes stored per step", bench_storage.run, bench_storage.Sizes(),
        bench_storage.Sizes(steps=20, payload_bytes=50),
    ),
    "agents": Benchmark(
        "durable pydantic-ai agent overhead per journaled unit", bench_agents.run, bench_agents.Sizes(),
        bench_agents.Sizes(runs=3, repeats=1), requires=bench_agents.unavailable,
    ),
    "projections": Benchmark(
        "report projection rebuild: events/s and peak memory", bench_projections.run, bench_projections.Sizes(),
        bench_projections.Sizes(events=400, steps_per_run=20, repeats=1), requires=bench_projections.unavailable,
    ),
    "web": Benchmark(
        "the web view's runs list with 10,000 runs: a page served, against the run index query", bench_web.run,
        bench_web.Sizes(), bench_web.Sizes(runs=120, repeats=1), requires=bench_web.unavailable,
    ),
    "workers": Benchmark(
        "PostgreSQL workers: throughput with 1, 2, 4 processes; signal-to-wake delay", bench_workers.run,
        bench_workers.Sizes(), bench_workers.Sizes(runs=4, steps=2, io_seconds=0.005, processes=(1,), signals=2),
        requires=lambda: None,
    ),
    "scale": Benchmark(
        "worker memory per waiting run; 1 to 1,000 concurrent runs; the table lock; a follower's lag",
        bench_scale.run, bench_scale.Sizes(),
        bench_scale.Sizes(
            waiting=(0, 4), idle_polls=2, poll_interval=0.1, concurrent=(1, 4), steps=2, io_seconds=0.005,
            processes=(1,), workers=bench_workers.Sizes(runs=4, steps=2, io_seconds=0.005, concurrency=2),
            sample_interval=0.01, follow_interval=0.05, timeout=60.0,
        ),
    ),
    "dispatch": Benchmark(
        "DBOS, Temporal, Prefect and in-process dispatch against the native worker: runs/s, signal to next step",
        bench_dispatch.run, bench_dispatch.Sizes(),
        bench_dispatch.Sizes(runs=2, steps=2, signals=2, repeats=1), requires=bench_dispatch.unavailable,
    ),
    "compare": Benchmark(
        "phaseledger, naive eventsourcing, LangGraph and DBOS Transact: steps, recovery after a kill, state rebuild",
        bench_compare.run, bench_compare.Sizes(),
        bench_compare.Sizes(steps=12, view_steps=30, kill_at=6, floor_ops=5, repeats=1, timeout=300.0,
                            backends=("sqlite",)),
        requires=bench_compare.unavailable,
    ),
}
