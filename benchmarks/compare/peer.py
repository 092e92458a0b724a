"""One measurement of one system in a process of its own: ``python -m benchmarks.compare.peer``.

    python -m benchmarks.compare.peer SYSTEM BACKEND TASK STORE [--steps N] [--kill-at K] [--floor-ops F]

SYSTEM is ``phaseledger``, ``eventsourcing`` (used naively, see
:mod:`benchmarks.compare.naive`), ``langgraph`` or ``dbos``; BACKEND ``sqlite`` or ``postgres``;
STORE a SQLite file path or a PostgreSQL store URL with ``?schema=``. Tasks:

- ``steps``: the commit floor (before and after) and a run of N trivial steps, committing
  every step; prints seconds per step and the floor.
- ``crash``: the same run, killed with SIGKILL when step K starts (prints nothing).
- ``recover``: after a ``crash``: opens the store, recovers the run and notes when step
  K starts again (the first new step); lets the run finish, checks its result, then
  rebuilds the run's state from a freshly opened store (phaseledger: ``engine.get`` on a
  new engine; LangGraph: ``get_state`` on a new saver).
- ``view``: a run of N steps, then the same rebuild of its state (phaseledger: also the
  statements alone, see :func:`~benchmarks.compare.floor.view_floor`).
- ``floor`` (phaseledger only): after a ``crash``, the statements its recovery sends and
  nothing else (see :mod:`benchmarks.compare.floor`), timed as ``recover`` is.

Each system runs in its own process because DBOS keeps process-wide state, and because a
kill must kill a real process. Output is one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._harness import now, postgres_conninfo
from benchmarks.floors import postgres_commit_floor, sqlite_commit_floor
from benchmarks.workloads import trivial

RUN_ID = "bench-run"


class StepHook:
    """Called as each step starts: kills the process at ``kill_at``, notes when ``watch`` starts."""

    def __init__(self, kill_at: int | None = None, watch: int | None = None) -> None:
        self.kill_at = kill_at
        self.watch = watch
        self.seen_at: float | None = None
        self.calls = 0

    def __call__(self, i: int) -> None:
        self.calls += 1
        if self.watch == i and self.seen_at is None:
            self.seen_at = now()
        if self.kill_at == i:
            os.kill(os.getpid(), signal.SIGKILL)


# -- phaseledger ------------------------------------------------------------------------------


def _phaseledger_url(backend: str, store: str) -> str:
    return f"sqlite:///{store}" if backend == "sqlite" else store


def phaseledger_steps(backend: str, store: str, steps: int, hook: StepHook) -> float:
    import asyncio

    from pydantic import BaseModel

    from phaseledger import Context, Engine, Workflow

    class Steps(BaseModel):
        n: int

    wf = Workflow("compare-steps", state=Steps)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[Steps]) -> str:
        for i in range(ctx.state.n):
            await ctx.step("s", _hooked(hook), i)
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Steps]) -> int:
        return ctx.state.n

    async def main() -> float:
        engine = Engine(_phaseledger_url(backend, store), workflows=[wf])
        try:
            if hook.watch is None:
                start = now()
                run = await engine.run(wf, Steps(n=steps), run_id=RUN_ID)
                elapsed = now() - start
            else:
                start = now()
                run = await engine.resume(RUN_ID)
                elapsed = now() - start
            if run.status != "completed" or run.output != steps:
                raise RuntimeError(f"phaseledger run ended {run.status} with {run.output!r}")
            return elapsed
        finally:
            engine.close()

    return asyncio.run(main())


def _hooked(hook: StepHook) -> Callable[[int], int]:
    def step(i: int) -> int:
        hook(i)
        return trivial(i)

    return step


def phaseledger_rebuild(backend: str, store: str, steps: int) -> float:
    from phaseledger import Engine

    start = now()
    engine = Engine(_phaseledger_url(backend, store))
    view = engine.get(RUN_ID)
    elapsed = now() - start
    engine.close()
    if view.output != steps:
        raise RuntimeError(f"rebuilt phaseledger run has output {view.output!r}")
    return elapsed


# -- LangGraph --------------------------------------------------------------------------------


def _langgraph_graph(saver: Any, hook: StepHook) -> Any:
    from typing import TypedDict

    from langgraph.graph import END, StateGraph

    class State(TypedDict):
        i: int
        n: int
        last: int

    def step(state: State) -> dict[str, int]:
        i = state["i"]
        hook(i)
        return {"i": i + 1, "last": trivial(i)}

    graph = StateGraph(State)
    graph.add_node("step", step)
    graph.set_entry_point("step")
    graph.add_conditional_edges("step", lambda s: "step" if s["i"] < s["n"] else END)
    return graph.compile(checkpointer=saver)


def _langgraph_saver(backend: str, store: str) -> Any:
    if backend == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver.from_conn_string(store)
    from langgraph.checkpoint.postgres import PostgresSaver

    schema = store.rsplit("schema=", 1)[1]
    return PostgresSaver.from_conn_string(f"{postgres_conninfo(store)} options='-c search_path={schema}'")


def langgraph_steps(backend: str, store: str, steps: int, hook: StepHook) -> float:
    config = {"configurable": {"thread_id": RUN_ID}, "recursion_limit": steps + 10}
    start = now()
    with _langgraph_saver(backend, store) as saver:
        if hook.watch is None:
            saver.setup()
            graph = _langgraph_graph(saver, hook)
            start = now()
            result = graph.invoke({"i": 0, "n": steps, "last": 0}, config, durability="sync")
        else:
            graph = _langgraph_graph(saver, hook)
            result = graph.invoke(None, config, durability="sync")
        elapsed = now() - start
    if result["i"] != steps:
        raise RuntimeError(f"LangGraph run ended at step {result['i']}")
    return elapsed


def langgraph_rebuild(backend: str, store: str, steps: int) -> float:
    start = now()
    with _langgraph_saver(backend, store) as saver:
        state = _langgraph_graph(saver, StepHook()).get_state({"configurable": {"thread_id": RUN_ID}})
        elapsed = now() - start
    if state.values["i"] != steps:
        raise RuntimeError(f"rebuilt LangGraph state is at step {state.values['i']}")
    return elapsed


# -- naive eventsourcing ---------------------------------------------------------------------


def eventsourcing_steps(backend: str, store: str, steps: int, hook: StepHook) -> float:
    from benchmarks.compare.naive import NaiveRun, application

    app = application(backend, store)
    try:
        start = now()
        if hook.watch is None:
            run = NaiveRun(RUN_ID, steps)
            app.save(run)
        else:
            run = app.repository.get(NaiveRun.create_id(RUN_ID))
        for i in range(run.done, run.n):
            hook(i)
            run.record(i, trivial(i))
            app.save(run)
        elapsed = now() - start
    finally:
        app.close()
    if run.done != steps or run.last != steps:
        raise RuntimeError(f"the naive run ended at step {run.done}")
    return elapsed


def eventsourcing_rebuild(backend: str, store: str, steps: int) -> float:
    from benchmarks.compare.naive import NaiveRun, application

    start = now()
    app = application(backend, store)
    try:
        run = app.repository.get(NaiveRun.create_id(RUN_ID))
        elapsed = now() - start
    finally:
        app.close()
    if run.done != steps:
        raise RuntimeError(f"the rebuilt naive run is at step {run.done}")
    return elapsed


# -- DBOS Transact ----------------------------------------------------------------------------


def _dbos_launch(backend: str, store: str, hook: StepHook) -> tuple[Any, Callable[[int], int]]:
    from dbos import DBOS

    @DBOS.step()
    def dbos_step(i: int) -> int:
        hook(i)
        return trivial(i)

    @DBOS.workflow()
    def dbos_workflow(n: int) -> int:
        last = 0
        for i in range(n):
            last = dbos_step(i)
        return n if last == n else -1

    config: dict[str, Any] = {"name": "phaseledger-bench", "run_admin_server": False}
    if backend == "sqlite":
        config["system_database_url"] = f"sqlite:///{store}"
    else:
        base, schema = store.rsplit("?schema=", 1)
        config["system_database_url"] = base
        config["dbos_system_schema"] = schema
    DBOS(config=config)  # type: ignore[arg-type]
    DBOS.launch()
    return DBOS, dbos_workflow


def dbos_steps(backend: str, store: str, steps: int, hook: StepHook) -> float:
    from dbos import SetWorkflowID

    start = now()
    dbos, workflow = _dbos_launch(backend, store, hook)
    try:
        if hook.watch is None:
            start = now()
            with SetWorkflowID(RUN_ID):
                result = workflow(steps)
        else:  # launch() recovers the pending run in the background
            result = dbos.retrieve_workflow(RUN_ID).get_result()
        elapsed = now() - start
    finally:
        dbos.destroy()
    if result != steps:
        raise RuntimeError(f"DBOS run returned {result!r}")
    return elapsed


def dbos_rebuild(backend: str, store: str, steps: int) -> float:
    start = now()
    dbos, _ = _dbos_launch(backend, store, StepHook())
    try:
        recorded = dbos.list_workflow_steps(RUN_ID)
        elapsed = now() - start
    finally:
        dbos.destroy()
    if len(recorded) != steps:
        raise RuntimeError(f"DBOS recorded {len(recorded)} steps, expected {steps}")
    return elapsed


IMPORTS = {
    "phaseledger": ("phaseledger", "phaseledger.store.eventstore", "pydantic", "benchmarks.compare.floor"),
    "langgraph": ("langgraph.graph", "langgraph.checkpoint.sqlite", "langgraph.checkpoint.postgres"),
    "dbos": ("dbos",),
    "eventsourcing": ("eventsourcing.application", "benchmarks.compare.naive"),
}
"""Imported before any clock starts: a restarted service has its code loaded already."""

SYSTEMS: dict[str, tuple[Callable[..., float], Callable[..., float]]] = {
    "phaseledger": (phaseledger_steps, phaseledger_rebuild),
    "langgraph": (langgraph_steps, langgraph_rebuild),
    "dbos": (dbos_steps, dbos_rebuild),
    "eventsourcing": (eventsourcing_steps, eventsourcing_rebuild),
}


def _floor(backend: str, store: str, ops: int) -> float:
    if backend == "sqlite":
        return sqlite_commit_floor(Path(f"{store}.floor"), ops, 2)
    return postgres_commit_floor(store, store.rsplit("schema=", 1)[1], ops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare.peer")
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("backend", choices=["sqlite", "postgres"])
    parser.add_argument("task", choices=["steps", "crash", "recover", "view", "floor"])
    parser.add_argument("store")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kill-at", type=int, default=500)
    parser.add_argument("--floor-ops", type=int, default=200)
    args = parser.parse_args(argv)
    run_steps, rebuild = SYSTEMS[args.system]
    for module in IMPORTS[args.system]:
        importlib.import_module(module)
    # A restarted service has collected its import-time garbage long before it recovers a run;
    # left to chance, that full collection (10-20 ms) lands inside whichever clock runs first.
    gc.collect()
    out: dict[str, Any] = {}
    if args.task == "steps":
        before = _floor(args.backend, args.store, args.floor_ops)
        out["per_step"] = run_steps(args.backend, args.store, args.steps, StepHook()) / args.steps
        out["floor"] = (before + _floor(args.backend, args.store, args.floor_ops)) / 2
    elif args.task == "view":
        run_steps(args.backend, args.store, args.steps, StepHook())
        out["rebuild"] = rebuild(args.backend, args.store, args.steps)
        if args.system == "phaseledger":
            from benchmarks.compare.floor import view_floor

            out["statements_alone"] = view_floor(args.backend, args.store, RUN_ID)
    elif args.task == "floor":  # of phaseledger's recovery, on a store its crash left
        from benchmarks.compare.floor import resume_floor

        out["recover_to_first_step"] = resume_floor(args.backend, args.store, RUN_ID)
    elif args.task == "crash":
        run_steps(args.backend, args.store, args.steps, StepHook(kill_at=args.kill_at))
        raise RuntimeError("the run was not killed")
    else:
        out["floor"] = _floor(args.backend, args.store, args.floor_ops)
        hook = StepHook(watch=args.kill_at)
        start = now()
        run_steps(args.backend, args.store, args.steps, hook)
        if hook.seen_at is None:
            raise RuntimeError(f"step {args.kill_at} did not run again on recovery")
        out["recover_to_first_step"] = hook.seen_at - start
        out["steps_run_again"] = hook.calls
        out["rebuild"] = rebuild(args.backend, args.store, args.steps)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
