"""Workers on every store: what they pick up, leases, ownership, shutdown, cancel from afar."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, PhaseledgerError, RunBusy, WorkerAlreadyRunning, Workflow
from phaseledger.domain.journal import PendingSignal
from phaseledger.domain.schedule import is_due, runnable_at
from phaseledger.store.leasebook import DriverId
from phaseledger.store.runindex import IndexRow, open_run_index
from phaseledger.workers.claims import PostgresLeases
from tests.integration import worker_fleet

ROOT = Path(__file__).resolve().parents[2]

WORKER_CODE = """
import asyncio, sys
from phaseledger.workers.service import run_worker
asyncio.run(run_worker(sys.argv[1], "tests.integration.worker_fleet", concurrency=4, lease_seconds=1.0,
                       poll_interval=0.05, engine_options={"max_inline_wait": 0}))
"""


def start_worker(url: str, effects: Path, slow_step: float = 0.3) -> subprocess.Popen[bytes]:
    env = {**os.environ, worker_fleet.EFFECTS_FILE_ENV: str(effects), worker_fleet.SLOW_ENV: str(slow_step),
           "PYTHONPATH": str(ROOT)}
    env.pop(worker_fleet.EFFECTS_URL_ENV, None)
    return subprocess.Popen([sys.executable, "-c", WORKER_CODE, url], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def executions(effects: Path) -> Counter[str]:
    """How often each step function ran, by step name."""
    if not effects.exists():
        return Counter()
    return Counter(line.split("\t")[1] for line in effects.read_text().splitlines())


def recorded(engine: Engine, run_id: str) -> list[str]:
    return [e.data["name"] for e in engine.history(run_id) if e.type == "StepRecorded"]


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def stop(child: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        _, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        _, stderr = child.communicate()
    return stderr.decode()


class Count(BaseModel):
    n: int = 0


def counting_workflow(name: str, in_flight: list[int]) -> Workflow[Count]:
    wf = Workflow(name, state=Count)

    async def slow_add(n: int) -> int:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        await asyncio.sleep(0.02)
        in_flight[0] -= 1
        return n + 1

    @wf.phase(initial=True, to="end")
    async def add(ctx: Context[Count]) -> None:
        for _ in range(3):
            ctx.state.n = await ctx.step("add", slow_add, ctx.state.n)

    @wf.phase(final=True)
    async def end(ctx: Context[Count]) -> int:
        return ctx.state.n

    return wf


# -- one process ------------------------------------------------------------------------

async def test_a_worker_drives_many_runs_at_once_and_only_its_workflows(store_url: str) -> None:
    in_flight = [0, 0]
    mine, other = counting_workflow("mine", in_flight), counting_workflow("other", in_flight)
    engine = Engine(store_url, workflows=[mine])
    for i in range(12):
        await engine.start(mine, run_id=f"m{i}")
    await Engine(engine.store).start(other, run_id="not-mine")  # started by another service
    stats = await engine.worker(concurrency=6, poll_interval=0.01).run(until_idle=True)
    assert stats.completed == 12 and stats.claimed == 12 and stats.errors == 0
    assert all(engine.get(f"m{i}").output == 3 for i in range(12))
    assert in_flight[1] > 1  # several runs were in a step at the same time on one loop
    assert engine.get("not-mine").status == "running"  # another worker's workflow: left alone


async def test_signals_wake_waiting_runs_for_a_worker(store_url: str) -> None:
    class Box(BaseModel):
        got: int = 0

    class Item(BaseModel):
        value: int

    wf = Workflow("inbox", state=Box, signals={"item": Item})

    @wf.phase(initial=True, to="end")
    async def take(ctx: Context[Box]) -> None:
        ctx.state.got = (await ctx.wait_for_signal("item")).value

    @wf.phase(final=True)
    async def end(ctx: Context[Box]) -> int:
        return ctx.state.got

    engine = Engine(store_url, workflows=[wf])
    for i in range(4):
        await engine.start(wf, run_id=f"i{i}")
    await engine.signal("i0", "item", {"value": 10})  # early: taken on the first drive
    first = await engine.worker(poll_interval=0.01).run(until_idle=True)
    assert first.completed == 1 and first.suspended == 3
    again = await engine.worker(poll_interval=0.01).run(until_idle=True)
    assert again.claimed == 0  # waiting runs are not runnable: nothing to do
    for i in range(1, 4):
        await engine.signal(f"i{i}", "item", {"value": i})
    last = await engine.worker(poll_interval=0.01).run(until_idle=True)
    assert last.completed == 3
    assert [engine.get(f"i{i}").output for i in range(4)] == [10, 1, 2, 3]


async def test_the_run_index_rebuilds_to_the_same_rows(store_url: str) -> None:
    in_flight = [0, 0]
    wf = counting_workflow("idx", in_flight)
    engine = Engine(store_url, workflows=[wf])
    await engine.run(wf, run_id="done")
    await engine.start(wf, run_id="new")
    await engine.start(wf, run_id="gone")
    await engine.cancel("gone")
    index = open_run_index(engine.store)
    index.catch_up_fully()
    incremental = index.rows()
    assert {r.run_id: (r.status, r.runnable_at is not None) for r in incremental} == {
        "done": ("completed", False), "new": ("running", True), "gone": ("cancelled", False)}
    assert index.caught_up()
    assert index.rebuild() == engine.store.app.recorder.max_notification_id()
    assert index.rows() == incremental
    assert index.catch_up() == 0  # nothing new: a pass reads nothing and writes nothing


def test_runnable_at_agrees_with_is_due() -> None:
    from phaseledger.domain.run import WorkflowRun

    now = datetime.now(UTC)
    run = WorkflowRun._create(WorkflowRun.RunStarted, id="x", workflow="w", workflow_version=1, input={}, parent=None)
    cases = []
    for reason, until, signal_name, inbox in [
        ("signal", None, "go", []), ("signal", None, "go", ["go"]), ("signal", None, "go", ["other"]),
        ("signal", now + timedelta(seconds=5), "go", []), ("sleep", now - timedelta(seconds=1), None, []),
        ("sleep", now + timedelta(seconds=1), None, []), ("retry", now, None, []),
    ]:
        run.status = {"signal": "waiting", "sleep": "sleeping", "retry": "retrying"}[reason]
        run.suspended = {"reason": reason, "until": until, "signal": signal_name}
        run.inbox = [PendingSignal(n, n, None) for n in inbox]
        when = runnable_at(run)
        cases.append((is_due(run, now), when is not None and (bool(inbox == ["go"]) or when <= now)))
    run.status, run.suspended = "running", None
    cases.append((is_due(run, now), runnable_at(run) is not None))
    run.status = "cancelled"
    cases.append((is_due(run, now), runnable_at(run) is not None))
    assert all(due == expected for due, expected in cases), cases
    assert [due for due, _ in cases] == [False, True, False, False, True, False, True, True, False]
    assert IndexRow.of(run).finished


async def test_a_second_worker_on_a_memory_store_says_so() -> None:
    wf = counting_workflow("one", [0, 0])
    engine = Engine("memory://", workflows=[wf])
    first = engine.worker(poll_interval=0.01)
    background = asyncio.ensure_future(first.run(handle_signals=False))
    await asyncio.wait_for(first.wait_until_started(), 10)
    with pytest.raises(WorkerAlreadyRunning, match="one worker"):
        await engine.worker().run(until_idle=True)
    second = engine.worker()
    refused = asyncio.ensure_future(second.run(handle_signals=False))
    with pytest.raises(PhaseledgerError, match="stopped before it started"):
        await second.wait_until_started()
    with pytest.raises(WorkerAlreadyRunning):
        await refused
    first.stop()
    await background
    assert (await engine.worker().run(until_idle=True)).claimed == 0  # free again once stopped


# -- worker processes ---------------------------------------------------------------------

async def test_a_second_worker_process_on_sqlite_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    engine = Engine(url, workflows=worker_fleet.workflows)
    child = start_worker(url, tmp_path / "effects")
    try:
        lock = Path(f"{tmp_path}/runs.db.worker-lock")
        await wait_for(lambda: lock.exists() and str(child.pid) in lock.read_text(), what="the worker's lock")
        with pytest.raises(WorkerAlreadyRunning) as caught:
            await engine.worker().run(until_idle=True)
        assert str(child.pid) in str(caught.value) and "PostgreSQL" in str(caught.value)
    finally:
        stop(child)
    stats = await engine.worker(poll_interval=0.01).run(until_idle=True)  # the lock went with the process
    assert stats.errors == 0
    engine.close()


async def test_a_killed_worker_s_run_is_finished_by_the_next(durable_store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    engine = Engine(durable_store_url, workflows=worker_fleet.workflows)
    await engine.start(worker_fleet.slow, run_id="slow")
    child = start_worker(durable_store_url, effects, slow_step=0.2)
    try:
        await wait_for(lambda: len(recorded(engine, "slow")) >= 2, what="two recorded steps")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    successor = start_worker(durable_store_url, effects, slow_step=0.01)
    try:  # on PostgreSQL it waits for the dead worker's lease (1 s) to expire
        await wait_for(lambda: engine.get("slow").status == "completed", what="the run to complete")
    finally:
        assert "Traceback" not in stop(successor)
    assert recorded(engine, "slow") == [f"slow{i}" for i in range(5)]
    ran = executions(effects)
    assert all(ran[f"slow{i}"] >= 1 for i in range(5))
    assert sum(ran.values()) <= 6  # only the step in flight at the kill may have run twice
    engine.close()


async def test_sigterm_releases_the_run_at_the_next_boundary(durable_store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    engine = Engine(durable_store_url, workflows=worker_fleet.workflows)
    await engine.start(worker_fleet.slow, run_id="slow")
    child = start_worker(durable_store_url, effects, slow_step=0.3)
    await wait_for(lambda: len(recorded(engine, "slow")) >= 1, what="a recorded step")
    stderr = stop(child)
    assert child.returncode == 0, stderr  # it finished the step in flight, then left
    left_at = recorded(engine, "slow")
    assert 1 <= len(left_at) < 5 and engine.get("slow").status == "running"
    assert sum(executions(effects).values()) == len(left_at)  # the step in flight was recorded
    if durable_store_url.startswith("postgresql"):
        leases = PostgresLeases(engine.store.lease_book(), DriverId.here()).leases()  # type: ignore[arg-type]
        assert [lease["owner"] for lease in leases] == [None]  # released, not left to expire
    successor = start_worker(durable_store_url, effects, slow_step=0.01)
    try:
        await wait_for(lambda: engine.get("slow").status == "completed", timeout=5, what="a prompt takeover")
    finally:
        stop(successor)
    assert executions(effects) == Counter({f"slow{i}": 1 for i in range(5)})  # nothing ran twice
    engine.close()


async def test_a_cancel_from_another_process_stops_the_worker_s_run(durable_store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    engine = Engine(durable_store_url, workflows=worker_fleet.workflows)
    await engine.start(worker_fleet.slow, run_id="slow")
    child = start_worker(durable_store_url, effects, slow_step=0.3)
    try:
        await wait_for(lambda: len(recorded(engine, "slow")) >= 1, what="a recorded step")
        await engine.cancel("slow", "stop that")
        steps_at_cancel = len(recorded(engine, "slow"))
        await asyncio.sleep(1.2)  # the worker notices at its next boundary
        history = engine.history("slow")
        assert history[-1].type == "RunCancelled"
        assert len(recorded(engine, "slow")) == steps_at_cancel
        assert sum(executions(effects).values()) <= steps_at_cancel + 1  # at most the step in flight
        assert child.poll() is None  # the worker goes on with other work
    finally:
        assert "Traceback" not in stop(child)
    assert engine.get("slow").status == "cancelled"
    engine.close()


# -- PostgreSQL leases --------------------------------------------------------------------

async def test_leases_expire_fence_and_hold(postgres_url: str) -> None:
    wf = counting_workflow("leased", [0, 0])
    engine = Engine(postgres_url, workflows=[wf])
    await engine.start(wf, run_id="r")
    index = open_run_index(engine.store)
    index.catch_up_fully()
    leases = PostgresLeases(engine.store.lease_book(), DriverId.here())  # type: ignore[arg-type]
    keys = ["leased@1"]
    (claim,) = leases.claim("A", 5, 0.3, keys)
    assert claim.run_id == "r" and claim.version == 2
    assert leases.claim("B", 5, 0.3, keys) == []  # held by A
    assert leases.claim("B", 5, 0.3, ["other@1"]) == []
    await asyncio.sleep(0.4)
    assert [c.run_id for c in leases.claim("B", 5, 5.0, keys)] == ["r"]  # A's lease expired
    assert leases.renew("A", ["r"], 5.0).kept == frozenset()  # A learns it lost the run
    assert leases.renew("B", ["r"], 5.0).kept == {"r"}

    leases.release("B", "r", fence=3)  # B saw version 3; the index still says 2
    assert leases.claim("C", 5, 5.0, keys) == []
    await engine.resume("r")
    index.catch_up_fully()
    assert index.get("r").status == "completed"
    assert leases.claim("C", 5, 5.0, keys) == []  # finished runs are never runnable

    await engine.start(wf, run_id="held")
    index.catch_up_fully()
    (held,) = leases.claim("A", 5, 5.0, keys)
    leases.release("A", "held", fence=held.version, hold_seconds=0.3)
    assert leases.claim("B", 5, 5.0, keys) == []  # held back after an error
    await asyncio.sleep(0.35)
    assert [c.run_id for c in leases.claim("B", 5, 5.0, keys)] == ["held"]
    engine.close()


async def test_two_engines_racing_on_one_run_one_drives_the_other_is_told(postgres_url: str) -> None:
    """Two engines resuming one run at once: one drives it, the other gets RunBusy naming it."""
    ran: list[int] = []
    wf = Workflow("race", state=Count)

    async def bump(n: int) -> int:
        ran.append(n)
        await asyncio.sleep(0.05)
        return n + 1

    @wf.phase(initial=True, to="end")
    async def go(ctx: Context[Count]) -> None:
        for _ in range(3):
            ctx.state.n = await ctx.step("bump", bump, ctx.state.n)

    @wf.phase(final=True)
    async def end(ctx: Context[Count]) -> int:
        return ctx.state.n

    first, second = Engine(postgres_url, workflows=[wf]), Engine(postgres_url, workflows=[wf])
    await first.start(wf, run_id="race")
    outcomes = await asyncio.gather(first.resume("race"), second.resume("race"), return_exceptions=True)
    busy = [o for o in outcomes if isinstance(o, RunBusy)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(busy) == 1 and len(done) == 1, outcomes
    assert done[0].status == "completed" and done[0].output == 3
    winner = first if done[0] is outcomes[0] else second
    assert busy[0].owner == winner.driver_id.owner and busy[0].pid == os.getpid()
    history = first.history("race")
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert [e.data["name"] for e in history if e.type == "StepRecorded"] == ["bump"] * 3
    assert ran == [0, 1, 2]  # no step ran twice
    first.close()
    second.close()


async def test_stop_releases_runs_at_their_next_boundary(store_url: str) -> None:
    gate, ran = asyncio.Event(), Counter()
    wf = Workflow("gated", state=Count)

    async def step(i: int) -> int:
        ran[i] += 1
        if i == 0:
            await gate.wait()
        return i

    @wf.phase(initial=True, to="end")
    async def work(ctx: Context[Count]) -> None:
        for i in range(3):
            ctx.state.n += await ctx.step(f"step{i}", step, i)

    @wf.phase(final=True)
    async def end(ctx: Context[Count]) -> int:
        return ctx.state.n

    engine = Engine(store_url, workflows=[wf])
    for i in range(3):
        await engine.start(wf, run_id=f"g{i}")
    worker = engine.worker(poll_interval=0.01)
    background = asyncio.ensure_future(worker.run(handle_signals=False))
    await wait_for(lambda: ran[0] == 3, what="three runs in their first step")
    worker.stop()  # each run finishes the step in flight, records it, and is released
    gate.set()
    stats = await background
    assert stats.released == 3 and stats.completed == 0
    for i in range(3):
        assert engine.get(f"g{i}").status == "running" and recorded(engine, f"g{i}") == ["step0"]
    assert (await engine.worker(poll_interval=0.01).run(until_idle=True)).completed == 3
    assert ran == Counter({0: 3, 1: 3, 2: 3})  # nothing ran twice


async def test_a_run_that_raises_is_held_back_not_retried_in_a_loop(store_url: str) -> None:
    old = Workflow("changing", state=Count)

    @old.phase(initial=True, to="end")
    async def work(ctx: Context[Count]) -> None:
        ctx.state.n = await ctx.step("old_name", lambda: 1)
        await ctx.wait_for_signal("go")

    @old.phase(final=True)
    async def end(ctx: Context[Count]) -> int:
        return ctx.state.n

    first = Engine(store_url, workflows=[old])
    assert (await first.run(old, run_id="nd")).status == "waiting"
    await first.signal("nd", "go", {})
    before = len(first.history("nd"))

    changed = Workflow("changing", state=Count)  # same name and version, other code: a mistake

    @changed.phase("work", initial=True, to="end")
    async def work2(ctx: Context[Count]) -> None:
        ctx.state.n = await ctx.step("new_name", lambda: 2)

    @changed.phase("end", final=True)
    async def end2(ctx: Context[Count]) -> int:
        return ctx.state.n

    engine = Engine(first.store if store_url == "memory://" else store_url, workflows=[changed])
    stats = await engine.worker(poll_interval=0.01, error_backoff=60).run(until_idle=True)
    assert stats.errors == 1 and stats.claimed == 1  # NonDeterminismError, logged; held back
    assert len(engine.history("nd")) == before  # nothing appended
