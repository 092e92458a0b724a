"""Workers and drivers outlive the database: server restarts, killed connections, outages.

These tests run a private PostgreSQL cluster of their own (:mod:`tests.pgcluster`), which
they stop, restart and cut off while work is in flight; the shared test server is never
touched. The fleet test drives ``worker_fleet.fleet`` runs (three steps, a durable sleep,
a wait for a ``go`` signal, one more step) with two ``phaseledger worker`` processes
through twelve disruptions, then checks from the log and a side-effect file written outside
the store that every run completed, that no worker exited, and that no step ran again
after the execution that was recorded (a step in flight may run again: at least once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from phaseledger import Context, Engine, RunExists, StoreUnavailable, Workflow
from tests.integration import worker_fleet
from tests.pgcluster import PgCluster, private_cluster

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# (what, shutdown mode, seconds the server stays down)
DISRUPTIONS: list[tuple[str, str, float]] = [
    ("restart", "fast", 2.0),
    ("terminate", "", 0.0),
    ("restart", "immediate", 1.5),
    ("terminate", "", 0.0),
    ("restart", "fast", 3.0),
    ("terminate", "", 0.0),
    ("restart", "immediate", 2.0),
    ("terminate", "", 0.0),
    ("restart", "immediate", 6.0),  # an outage of several seconds: longer than a lease
    ("restart", "fast", 0.0),
    ("terminate", "", 0.0),
    ("restart", "immediate", 1.0),
]
WAVE = 8
"""Runs started before each disruption, so that every disruption meets work in flight."""
PROGRESS = 1.2
"""Seconds of work between disruptions."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    yield from private_cluster()


@pytest.fixture
def url(cluster: PgCluster) -> str:
    """A store URL in a schema of its own on the private cluster."""
    return cluster.url(schema=f"t_{uuid.uuid4().hex[:10]}")


async def until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


# -- two worker processes through restarts, terminations and an outage ------------------


def start_worker(url: str, effects: Path, log: Path) -> subprocess.Popen[bytes]:
    """``phaseledger worker`` in a process of its own, logging to ``log``."""
    env = {**os.environ, worker_fleet.EFFECTS_FILE_ENV: str(effects), worker_fleet.LATENCY_ENV: "0.3",
           "PYTHONPATH": str(ROOT)}
    env.pop(worker_fleet.EFFECTS_URL_ENV, None)
    command = [sys.executable, "-m", "phaseledger.cli", "--store", url, "--workflows", "tests.integration.worker_fleet",
               "worker", "--concurrency", "10", "--lease", "3", "--poll", "0.2", "--verbose"]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out)


async def attempt(call: Callable[[], Awaitable[T]]) -> T | None:
    """``call()``, or None when the store is unavailable (the test's own engine meets the outages too)."""
    try:
        return await call()
    except StoreUnavailable:
        return None


def index_statuses(cluster: PgCluster, url: str) -> dict[str, str] | None:
    """Run id -> status as the workers' run index has it (None while the server is down)."""
    schema = url.rsplit("schema=", 1)[1]
    try:
        with psycopg.connect(cluster.conninfo(), connect_timeout=2) as conn:
            rows = conn.execute(
                sql.SQL("SELECT run_id, status FROM {}.phaseledger_runindex").format(sql.Identifier(schema))
            ).fetchall()
    except psycopg.Error:
        return None
    return dict(rows)


async def test_two_workers_carry_on_through_restarts_terminations_and_an_outage(
        cluster: PgCluster, url: str, tmp_path: Path) -> None:
    effects, logs = tmp_path / "effects.tsv", [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    engine = Engine(url, workflows=[worker_fleet.fleet])
    workers = [start_worker(url, effects, log) for log in logs]
    run_ids: list[str] = []
    signalled: set[str] = set()

    async def start_wave() -> None:
        for _ in range(WAVE):
            run_id = f"fleet-{len(run_ids):03d}"
            while True:  # started once: a start whose reply was lost raises RunExists when sent again
                try:
                    await engine.start(worker_fleet.fleet, run_id=run_id)
                    break
                except RunExists:
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.2)
            run_ids.append(run_id)
            if len(run_ids) % 3 == 0:  # sent before the run waits: kept in its inbox
                await signal_run(run_id)

    async def signal_run(run_id: str) -> None:
        sent = await attempt(lambda: engine.signal(run_id, "go", {"value": 1}, signal_id=f"go-{run_id}"))
        if sent is not None:
            signalled.add(run_id)

    async def signal_waiting() -> dict[str, str]:
        statuses = index_statuses(cluster, url) or {}
        for run_id, status in statuses.items():
            if status == "waiting" and run_id not in signalled:
                await signal_run(run_id)
        return statuses

    started = time.monotonic()
    try:
        await until(lambda: all(" started on " in log.read_text(errors="replace") for log in logs),
                    "both workers to start", timeout=60.0)
        for what, mode, down in DISRUPTIONS:
            await start_wave()
            progress_until = time.monotonic() + PROGRESS
            while time.monotonic() < progress_until:
                await signal_waiting()
                await asyncio.sleep(0.2)
            if what == "terminate":
                await asyncio.to_thread(cluster.terminate_backends)
            else:
                await asyncio.to_thread(cluster.restart, mode, down_for=down)
            assert [w.poll() for w in workers] == [None, None], "a worker exited during the disruptions"

        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            statuses = await signal_waiting()
            if len(statuses) == len(run_ids) and all(s == "completed" for s in statuses.values()):
                break
            await asyncio.sleep(0.2)
        assert [w.poll() for w in workers] == [None, None], "a worker exited"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = []
        for worker in workers:
            try:
                codes.append(worker.wait(timeout=30))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(worker.wait())
    elapsed = time.monotonic() - started
    texts = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], f"workers ended with {codes}: {texts[0][-3000:]}\n{texts[1][-3000:]}"

    # Every run completed, each step recorded once, each signal taken once, versions gapless.
    views = {run_id: engine.get(run_id) for run_id in run_ids}
    unfinished = {r: v.status for r, v in views.items() if v.status != "completed"}
    assert not unfinished, f"{len(unfinished)} of {len(run_ids)} runs did not complete: {unfinished}"

    lines = [line.split("\t") for line in effects.read_text().splitlines()]
    executions: dict[tuple[str, str], list[str]] = defaultdict(list)  # in the order they started
    for run_id, step, exec_id, _pid in lines:
        executions[(run_id, step)].append(exec_id)
    reruns = 0
    for run_id in run_ids:
        history = engine.history(run_id)
        assert [e.version for e in history] == list(range(1, len(history) + 1))
        steps = [e for e in history if e.type == "StepRecorded" and e.data["kind"] == "step"]
        assert sorted(e.data["name"] for e in steps) == ["after", "s0", "s1", "s2"]
        for event in steps:
            ran = executions[(run_id, event.data["name"])]
            # The recorded execution is the last one that started: nothing ran after its commit.
            assert ran and ran[-1] == event.data["result"]["exec"], (
                f"{run_id} step {event.data['name']} ran again after it was recorded ({len(ran)} executions)")
            reruns += len(ran) - 1
        assert sum(1 for e in history if e.type == "SignalReceived") == 1
        assert views[run_id].output == {"steps": 4, "go": 1}

    # The workers said so in their logs: an outage is one warning when it starts and one
    # line when it ends (per worker, and per LISTEN connection), not a line per attempt.
    for text in texts:
        assert "Traceback" not in text, text[-3000:]
        warned = text.count("store unavailable,")
        assert 1 <= warned <= 2 * len(DISRUPTIONS), f"{warned} outage warnings:\n{text[-3000:]}"
        assert "store available again" in text
    print(f"\n{len(run_ids)} runs, {cluster.restarts} restarts, {cluster.terminated} backends terminated, "
          f"{reruns} in-flight step executions re-run, {elapsed:.1f}s")
    engine.close()


# -- a run driven in-process while the server goes away ----------------------------------


class Steps(BaseModel):
    done: list[str] = []


GATE: dict[str, Any] = {}
"""Set by a test: ``started`` (an event set when step s1 starts), ``down`` (awaited by s1 before it
returns) and ``runs`` (the step executions, in order)."""


async def gated_step(name: str) -> str:
    GATE["runs"].append(name)
    if name == "s1" and "started" in GATE:
        GATE["started"].set()
        await GATE["down"].wait()  # returns once the server is down: its commit meets the outage
    return name


steady = Workflow("steady", state=Steps)


@steady.phase(initial=True, to="end")
async def work(ctx: Context[Steps]) -> None:
    for name in ("s0", "s1", "s2", "s3"):
        ctx.state.done.append(await ctx.step(name, gated_step, name))


@steady.phase(final=True)
async def end(ctx: Context[Steps]) -> list[str]:
    return ctx.state.done


def recorded_steps(engine: Engine, run_id: str) -> list[str]:
    history = engine.history(run_id)
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    return [e.data["name"] for e in history if e.type == "StepRecorded"]


async def stop_server_during_step_s1(cluster: PgCluster) -> None:
    """Once step s1 has started, stop the server and let the step return (its commit meets the outage)."""
    await GATE["started"].wait()
    await asyncio.to_thread(cluster.stop, "immediate")
    GATE["down"].set()


async def test_an_in_process_run_waits_out_an_outage_and_completes(
        cluster: PgCluster, url: str, caplog: pytest.LogCaptureFixture) -> None:
    GATE.update(started=asyncio.Event(), down=asyncio.Event(), runs=[])
    caplog.set_level(logging.INFO, logger="phaseledger")
    engine = Engine(url, workflows=[steady], append_retry_seconds=120.0)
    try:
        running = asyncio.ensure_future(engine.run(steady, run_id="steady-1"))
        await stop_server_during_step_s1(cluster)
        try:
            await until(lambda: engine.outage.out, "the driver to meet the outage")
        finally:
            await asyncio.to_thread(cluster.start)
        view = await asyncio.wait_for(running, 60)
        assert view.status == "completed" and view.output == ["s0", "s1", "s2", "s3"]
        assert GATE["runs"] == ["s0", "s1", "s2", "s3"]  # the commit was retried: nothing ran twice
        assert recorded_steps(engine, "steady-1") == ["s0", "s1", "s2", "s3"]
        outage_lines = [r for r in caplog.records if r.name == "phaseledger.store"]
        assert [r.levelno for r in outage_lines] == [logging.WARNING, logging.INFO], caplog.text
        assert "append events of run 'steady-1'" in outage_lines[0].getMessage()
        assert "available again" in outage_lines[1].getMessage()
    finally:
        GATE.clear()
        engine.close()


async def test_a_run_gives_up_after_its_retry_window_and_resumes_cleanly(cluster: PgCluster, url: str) -> None:
    GATE.update(started=asyncio.Event(), down=asyncio.Event(), runs=[])
    engine = Engine(url, workflows=[steady], append_retry_seconds=1.0)
    try:
        running = asyncio.ensure_future(engine.run(steady, run_id="steady-2"))
        await stop_server_during_step_s1(cluster)
        try:
            with pytest.raises(StoreUnavailable, match="append events of run 'steady-2'") as raised:
                await asyncio.wait_for(running, 60)
            assert raised.value.transient
        finally:
            await asyncio.to_thread(cluster.start)
        del GATE["started"]
        view = await engine.resume("steady-2")
        assert view.status == "completed" and view.output == ["s0", "s1", "s2", "s3"]
        # s1's result was never committed, so it ran again (at least once); s0 was committed: once.
        assert GATE["runs"] == ["s0", "s1", "s1", "s2", "s3"]
        assert recorded_steps(engine, "steady-2") == ["s0", "s1", "s2", "s3"]
    finally:
        GATE.clear()
        engine.close()


async def test_a_report_follower_carries_on_after_a_restart(
        cluster: PgCluster, url: str, caplog: pytest.LogCaptureFixture) -> None:
    GATE.update(runs=[])
    caplog.set_level(logging.INFO, logger="phaseledger")
    engine = Engine(url, workflows=[steady])
    try:
        follower = engine.reports.follow(interval=0.1)
        await engine.run(steady, run_id="reported-1")
        engine.reports.wait(timeout=30)
        await asyncio.to_thread(cluster.restart, "immediate", down_for=2.0)
        while await attempt(lambda: engine.run(steady, run_id="reported-2")) is None:
            await asyncio.sleep(0.2)

        def caught_up() -> bool:
            try:
                return engine.reports.lag() == 0
            except StoreUnavailable:  # the reports' own connections met the restart too
                return False

        await until(caught_up, "the follower to apply the events appended after the restart")
        assert follower.running
        assert [r.run_id for r in engine.reports.runs()] == ["reported-1", "reported-2"]
        lines = [r for r in caplog.records if r.name == "phaseledger.projections.follow"]
        assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], caplog.text
    finally:
        GATE.clear()
        engine.close()


# -- SQLite: a file locked past its timeout ----------------------------------------------


async def test_a_locked_sqlite_file_is_store_unavailable_and_a_worker_waits_it_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    GATE.update(runs=[])
    caplog.set_level(logging.INFO, logger="phaseledger")
    path = tmp_path / "runs.db"
    engine = Engine(f"sqlite:///{path}?lock_timeout=1", workflows=[steady])
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        await engine.worker().run(until_idle=True)  # creates the run index
        await engine.start(steady, run_id="locked-1")
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable, match="database is locked") as raised:
            await engine.start(steady, run_id="locked-2")
        assert raised.value.transient and isinstance(raised.value.__cause__, Exception)

        worker = engine.worker(poll_interval=0.05)
        task = asyncio.ensure_future(worker.run(handle_signals=False))
        await until(lambda: worker.outage.out, "the worker to meet the lock")
        blocker.execute("COMMIT")
        await until(lambda: engine.get("locked-1").status == "completed", "the worker to finish the run")
        assert worker.running
        worker.stop()
        stats = await task
        assert stats.completed == 1
        outage_lines = [r for r in caplog.records if r.name == "phaseledger.store"]
        assert [r.levelno for r in outage_lines] == [logging.WARNING, logging.INFO], caplog.text
        assert "database is locked" in outage_lines[0].getMessage()
    finally:
        GATE.clear()
        blocker.close()
        engine.close()
