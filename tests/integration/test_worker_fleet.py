"""Several real worker processes on the real PostgreSQL server, killed and restarted at random.

200 runs of ``worker_fleet.fleet`` (three steps with random latency, a durable sleep, a
wait for a ``go`` signal, one more step) are driven by four worker processes while the
test SIGKILLs a random worker at ten random points of progress (starting a new one each
time) and sends the signals (a third of them before the run waits). Then, from the event
log and the side-effect table written outside the store:

- every run completed;
- no recorded step ran again after the execution that was recorded (the recorded
  execution is the last one that started: a step re-runs only when it was in flight
  when its worker died or lost the run);
- no run was advanced by two workers: every driver session (from a ``RunResumed`` to the
  next) recorded steps from one process only, and versions are gapless;
- every timer fired no earlier than its recorded wake time;
- every signal was received and consumed exactly once.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from phaseledger import Engine
from phaseledger.store.eventstore import StoreURL
from phaseledger.store.runindex import open_run_index
from tests.integration import worker_fleet

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUNS = 200
WORKERS = 4
KILLS = 10
EVENTS_PER_RUN = 20  # at least: start, phases, steps, timer, suspension, resume, signal, end
DEADLINE = 100.0

# SIGTERM before the worker runs (still importing) ends the process cleanly; once it runs,
# the worker's own handler makes SIGTERM graceful.
WORKER_CODE = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
import asyncio
from phaseledger.workers.service import run_worker
asyncio.run(run_worker(sys.argv[1], "tests.integration.worker_fleet", concurrency=8, lease_seconds=2.0,
                       poll_interval=0.1, error_backoff=1.0, engine_options={"max_inline_wait": 0}))
"""


def start_worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, worker_fleet.EFFECTS_URL_ENV: url, worker_fleet.LATENCY_ENV: "0.08",
           "PYTHONPATH": str(ROOT)}
    store = f"{url}&pool_size=2"  # four workers and their restarts stay well within max_connections
    return subprocess.Popen([sys.executable, "-c", WORKER_CODE, store], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def connect(url: str) -> psycopg.Connection:
    parsed = StoreURL.parse(url)
    conn = psycopg.connect(parsed.postgres_conninfo or "", autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(parsed.postgres_schema or "public")))
    return conn


async def test_fleet_of_workers_killed_at_random(postgres_url: str) -> None:
    rng = random.Random(5)
    engine = Engine(postgres_url, workflows=[worker_fleet.fleet], max_inline_wait=0)
    open_run_index(engine.store)  # tables exist before the workers race to create them
    db = connect(postgres_url)
    db.execute(worker_fleet.CREATE_EFFECTS)
    run_ids = [f"fleet-{i:03d}" for i in range(RUNS)]
    for run_id in run_ids:
        await engine.start(worker_fleet.fleet, run_id=run_id)
    early = set(run_ids[::3])
    for run_id in early:  # kept in the inbox until the run waits for it
        await engine.signal(run_id, "go", {"value": 1}, signal_id=f"go-{run_id}")

    workers = [start_worker(postgres_url) for _ in range(WORKERS)]
    # Kill points: random amounts of progress (events appended), so the kills land while the
    # runs are in every stage, however fast or slow the machine is.
    kill_at = sorted(rng.uniform(0.05, 0.85) * RUNS * EVENTS_PER_RUN for _ in range(KILLS))
    kills = 0
    signalled = set(early)
    started = time.monotonic()
    try:
        while time.monotonic() - started < DEADLINE:
            rows = db.execute("SELECT run_id, status, version FROM phaseledger_runindex").fetchall()
            if sum(1 for _, state, _ in rows if state == "completed") == RUNS:
                break
            for run_id, state, _ in rows:
                if state == "waiting" and run_id not in signalled:
                    await engine.signal(run_id, "go", {"value": 2}, signal_id=f"go-{run_id}")
                    signalled.add(run_id)
            if kill_at and sum(version for _, _, version in rows) >= kill_at[0]:
                kill_at.pop(0)
                victim = rng.randrange(len(workers))
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                kills += 1
                workers[victim] = start_worker(postgres_url)
            await asyncio.sleep(0.1)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        errors = []
        for worker in workers:
            try:
                _, stderr = worker.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                _, stderr = worker.communicate()
            if worker.returncode not in (0, -signal.SIGKILL):
                errors.append(stderr.decode()[-2000:])
    assert not errors, errors[0]
    assert kills == KILLS

    # Every run completed.
    views = {run_id: engine.get(run_id) for run_id in run_ids}
    unfinished = {r: (v.status, v.error) for r, v in views.items() if v.status != "completed"}
    assert not unfinished, f"{len(unfinished)} runs did not complete: {list(unfinished.items())[:3]}"

    effects: dict[tuple[str, str], list[tuple[str, datetime, int]]] = defaultdict(list)
    for run_id, step, exec_id, started_at, pid in db.execute(
            "SELECT run_id, step, exec_id, started_at, pid FROM fleet_effects"):
        effects[(run_id, step)].append((exec_id, started_at, pid))

    reruns = 0
    for run_id in run_ids:
        history = engine.history(run_id)
        assert [e.version for e in history] == list(range(1, len(history) + 1))
        steps = [e for e in history if e.type == "StepRecorded" and e.data["kind"] == "step"]
        assert sorted(e.data["name"] for e in steps) == ["after", "s0", "s1", "s2"]

        # The recorded execution of a step is the last one that started.
        for event in steps:
            executions = effects[(run_id, event.data["name"])]
            recorded = event.data["result"]["exec"]
            starts = {exec_id: at for exec_id, at, _ in executions}
            assert recorded in starts, f"{run_id} recorded an execution that never ran"
            later = [e for e, at in starts.items() if at > starts[recorded]]
            assert not later, f"{run_id} step {event.data['name']} ran again after it was recorded"
            reruns += len(executions) - 1

        # One process per driver session.
        session: set[int] = set()
        for event in history:
            if event.type == "RunResumed":
                session = set()
            elif event.type == "StepRecorded" and event.data["kind"] == "step":
                session.add(event.data["result"]["pid"])
                assert len(session) == 1, f"{run_id}: two workers advanced one session at v{event.version}"

        # Timers fire no earlier than due; the signal is taken exactly once.
        wake_at = next(datetime.fromisoformat(e.data["wake_at"]) for e in history if e.type == "TimerStarted")
        assert datetime.fromisoformat(views[run_id].state.woke_at) >= wake_at
        assert sum(1 for e in history if e.type == "SignalReceived") == 1
        assert [e.data["name"] for e in history if e.type == "StepRecorded" and e.data["kind"] == "signal"] == ["go"]
        assert views[run_id].output == {"steps": 4, "go": 1 if run_id in early else 2}

    print(f"\n{RUNS} runs, {kills} workers killed, {reruns} in-flight step executions re-run, "
          f"{time.monotonic() - started:.1f}s")
    db.close()
    engine.close()
