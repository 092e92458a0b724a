"""phaseledger against LangGraph (SqliteSaver / PostgresSaver), DBOS Transact (SQLite /
PostgreSQL) and eventsourcing used naively (one event and one ``save()`` per step, see
:mod:`benchmarks.compare.naive`).

The same workload on each: a run of ``steps`` trivial steps, each made durable before the
next starts (phaseledger ``checkpoint_every_n_steps=1``; LangGraph ``durability="sync"``,
one node execution per step; DBOS one ``@DBOS.step`` per step). Three figures:

- per step: seconds per step of the whole run, against the commit floor measured in the
  same process just before and after, and against phaseledger in the same repeat;
- recovery: the run is killed (SIGKILL) when step ``kill_at`` starts; a new process opens
  the store and recovers the run; the clock stops when that step starts again;
- state rebuild: a new process opens the store and rebuilds the finished run's state
  (phaseledger ``Store.load``, LangGraph ``get_state``, DBOS ``list_workflow_steps``,
  eventsourcing ``repository.get``).

Beside phaseledger's recovery and its reading of a long run's state, the same repeat
times the statements alone that each sends, on one new connection with nothing else
(:mod:`benchmarks.compare.floor`): what its guarantees cost in statements, set apart
from what its code costs.

Each measurement runs in a process of its own (:mod:`benchmarks.compare.peer`); the
systems take turns within each repeat, on fresh databases.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import Backends, Result

PEERS = {"langgraph": ("langgraph", "langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres"), "dbos": ("dbos",)}
ROOT = Path(__file__).resolve().parents[2]
BASELINES = ["eventsourcing"]
"""Systems compared whenever the comparison runs (eventsourcing is phaseledger's own dependency)."""
TARGETS = {
    "eventsourcing": "phaseledger faster",
    "langgraph": "phaseledger ≥ 4x cheaper",
    "dbos": "phaseledger ≥ 5x cheaper",
}
"""The per-step target against each system (phaseledger's figure beside theirs, same repeat)."""
STATEMENTS_ALONE = "phaseledger's statements alone"
"""The case name of the floors of phaseledger's recovery and first read (benchmarks.compare.floor)."""


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    steps: int = 1000
    view_steps: int = 10_000
    """Steps of the one-phase run whose state phaseledger (``engine.get``) and LangGraph
    (``get_state``) read back in a new process."""
    kill_at: int = 500
    floor_ops: int = 200
    repeats: int = 5
    timeout: float = 900.0
    backends: tuple[str, ...] = ("sqlite", "postgres")
    """Which of the available durable backends to compare on."""


def installed_peers() -> list[str]:
    """The peers whose packages are importable here."""
    return [name for name, modules in PEERS.items() if all(importlib.util.find_spec(m) for m in modules)]


def unavailable() -> str | None:
    """Why the comparison cannot run here, or None."""
    if not installed_peers():
        return 'LangGraph and DBOS are not installed: pip install -e ".[compare]"'
    return None


def _peer(system: str, backend: str, task: str, store: str, sizes: Sizes) -> dict[str, Any]:
    steps = sizes.view_steps if task == "view" else sizes.steps
    command = [sys.executable, "-m", "benchmarks.compare.peer", system, backend, task, store,
               "--steps", str(steps), "--kill-at", str(sizes.kill_at), "--floor-ops", str(sizes.floor_ops)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=sizes.timeout, check=False)
    if task == "crash":
        if done.returncode != -9:
            raise RuntimeError(f"{system} on {backend} was not killed (exit {done.returncode}): {done.stderr[-2000:]}")
        return {}
    if done.returncode != 0:
        raise RuntimeError(f"{system} {task} on {backend} failed (exit {done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _store(backends: Backends, backend: str, stack: Any, label: str) -> str:
    if backend == "sqlite":
        return str(backends.sqlite_path(label))
    url, _schema = stack.enter_context(backends.postgres_schema(label))
    return url


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure phaseledger and each installed peer on SQLite and (when reachable) PostgreSQL."""
    import contextlib

    systems = ["phaseledger", *BASELINES, *installed_peers()]
    results = []
    for backend in [b for b in backends.durable if b in sizes.backends]:
        per_step: dict[str, list[float]] = {s: [] for s in systems}
        floors: dict[str, list[float]] = {s: [] for s in systems}
        recover: dict[str, list[float]] = {s: [] for s in systems}
        recover_floors: dict[str, list[float]] = {s: [] for s in systems}
        rebuild: dict[str, list[float]] = {s: [] for s in systems}
        viewers = [s for s in systems if s in ("phaseledger", "langgraph")]
        view: dict[str, list[float]] = {s: [] for s in viewers}
        alone: dict[str, list[float]] = {"recover to first step": [], "state of a long run": []}
        """phaseledger's statements alone (see benchmarks.compare.floor), by the metric they floor."""
        for _ in range(sizes.repeats):
            for system in viewers:
                with contextlib.ExitStack() as stack:
                    measured = _peer(system, backend, "view", _store(backends, backend, stack, f"{system}_view"), sizes)
                view[system].append(measured["rebuild"] * 1e3)
                if "statements_alone" in measured:
                    alone["state of a long run"].append(measured["statements_alone"] * 1e3)
            for system in systems:
                with contextlib.ExitStack() as stack:
                    measured = _peer(system, backend, "steps", _store(backends, backend, stack, system), sizes)
                per_step[system].append(measured["per_step"] * 1e6)
                floors[system].append(measured["floor"] * 1e6)
                with contextlib.ExitStack() as stack:
                    store = _store(backends, backend, stack, system)
                    _peer(system, backend, "crash", store, sizes)
                    measured = _peer(system, backend, "recover", store, sizes)
                recover[system].append(measured["recover_to_first_step"] * 1e3)
                recover_floors[system].append(measured["floor"] * 1e3)
                rebuild[system].append(measured["rebuild"] * 1e3)
                if system == "phaseledger":
                    with contextlib.ExitStack() as stack:
                        store = _store(backends, backend, stack, "phaseledger_floor")
                        _peer(system, backend, "crash", store, sizes)
                        measured = _peer(system, backend, "floor", store, sizes)
                    alone["recover to first step"].append(measured["recover_to_first_step"] * 1e3)
        floor_name = f"{backend} commit"
        for system in systems:
            extra: dict[str, Any] = {"system": system, "backend": backend, "steps": sizes.steps}
            if system != "phaseledger":
                extra["x_phaseledger"] = _ratios(per_step[system], per_step["phaseledger"])
            results.append(Result.paired(
                "compare", f"{system} on {backend}", "per step", "µs", per_step[system], floor_name, floors[system],
                target=TARGETS.get(system), **extra,
            ))
        for system in systems:
            extra = {"system": system, "backend": backend, "kill_at": sizes.kill_at}
            if system != "phaseledger":
                extra["x_phaseledger"] = _ratios(recover[system], recover["phaseledger"])
            results.append(Result.paired(
                "compare", f"{system} on {backend}, killed at step {sizes.kill_at}", "recover to first step", "ms",
                recover[system], floor_name, recover_floors[system], **extra,
            ))
        for system in systems:
            extra = {"system": system, "backend": backend, "steps": sizes.steps}
            if system != "phaseledger":
                extra["x_phaseledger"] = _ratios(rebuild[system], rebuild["phaseledger"])
            results.append(Result.paired(
                "compare", f"{system} on {backend}, {sizes.steps:,}-step run", "state rebuild", "ms",
                rebuild[system], floor_name, recover_floors[system], **extra,
            ))
        for system in viewers:
            extra = {"system": system, "backend": backend, "steps": sizes.view_steps}
            if system != "phaseledger":
                extra["x_phaseledger"] = _ratios(view[system], view["phaseledger"])
            results.append(Result.paired(
                "compare", f"{system} on {backend}, {sizes.view_steps:,} steps in one phase", "state of a long run",
                "ms", view[system], **extra,
            ))
        where = {"recover to first step": f"killed at step {sizes.kill_at}",
                 "state of a long run": f"{sizes.view_steps:,} steps in one phase"}
        ours = {"recover to first step": recover["phaseledger"], "state of a long run": view.get("phaseledger", [])}
        for metric, values in alone.items():
            if values:
                results.append(Result.paired(
                    "compare", f"{STATEMENTS_ALONE} on {backend}, {where[metric]}", metric, "ms", values,
                    system="phaseledger", backend=backend, x_phaseledger=_ratios(values, ours[metric]),
                ))
    return results


def _ratios(values: list[float], reference: list[float]) -> dict[str, float]:
    """Paired ratios (same repeat) of a peer's figure to phaseledger's: median, min, max."""
    ratios = [v / r for v, r in zip(values, reference, strict=True) if r]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)} if ratios else {}
