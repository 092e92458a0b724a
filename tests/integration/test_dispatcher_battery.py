"""One battery of guarantees, the same on every dispatcher.

Whatever drives a run — a loop over ``engine.advance`` in this process, the native worker,
DBOS, Temporal or Prefect — the same invariants hold, on SQLite and PostgreSQL stores:

* every run completes, with the output its inputs determine;
* no step recorded in the log runs again, also across a SIGKILL in the middle of a phase
  (only the step that was in flight runs twice: it was never recorded);
* each run's log is gapless (versions 1..n) and replays to the state it shows;
* a signal sent twice under one signal id is delivered once.

Each dispatcher runs against its real engine (Temporal's dev server, DBOS with its system
database, a Prefect API server from Prefect's test harness); see ``tests/integration/battery.py`` for the dispatchers under one interface.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from phaseledger import Engine
from phaseledger.testing.dispatchers import DISPATCHERS, DispatchSetup, available
from tests.integration.battery import (
    EFFECTS_ENV,
    HANG_ENV,
    STEPS,
    TIMEOUT,
    battery_workflow,
    dispatch,
    effects,
    expected_output,
)

REPO = Path(__file__).resolve().parents[2]
RUNS = 3
"""Runs driven at once by each dispatcher in the invariants test."""


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.skipif(bool(available(kind)), reason=available(kind) or ""))
                        for kind in DISPATCHERS])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def setup(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> DispatchSetup:
    """Where the dispatcher's outside pieces live: a Temporal server, a DBOS system database."""
    address = request.getfixturevalue("temporal_address") if kind == "temporal" else ""
    prefect = request.getfixturevalue("prefect_api") if kind == "prefect" else ""
    return DispatchSetup(dbos_system_url=f"sqlite:///{tmp_path}/dbos.sqlite", temporal_address=address,
                         task_queue=f"battery-{uuid.uuid4().hex[:8]}", prefect_api_url=prefect)


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(path))
    monkeypatch.delenv(HANG_ENV, raising=False)
    return path


async def _until_waiting(engine: Engine, run_id: str) -> None:
    async def waiting() -> None:
        while (await engine.get_async(run_id)).status != "waiting":
            await asyncio.sleep(0.05)

    await asyncio.wait_for(waiting(), TIMEOUT)


def _assert_log_is_whole(engine: Engine, run_id: str) -> None:
    """Gapless versions 1..n, one signal received, and the log replays to the view's state."""
    history = engine.history(run_id)
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert [e.type for e in history].count("SignalReceived") == 1
    final = engine.get(run_id)
    assert engine.state_at(run_id, final.version).state == final.state


async def test_every_run_completes_each_recorded_step_runs_once_and_signals_arrive_once(
        kind: str, durable_store_url: str, setup: DispatchSetup, effects_file: Path) -> None:
    run_ids = [f"{kind}-{i}" for i in range(RUNS)]
    async with dispatch(kind, durable_store_url, setup) as dispatcher:
        for run_id in run_ids:
            await dispatcher.start(battery_workflow(), {"label": run_id}, run_id=run_id)
        for run_id in run_ids:
            await _until_waiting(dispatcher.engine, run_id)
            await dispatcher.signal(run_id, "approve", {"ok": True}, signal_id=f"approval-{run_id}")
            try:  # the same signal again: kept once
                await dispatcher.signal(run_id, "approve", {"ok": True}, signal_id=f"approval-{run_id}")
            except Exception:
                if not dispatcher.engine.get(run_id).finished:
                    raise  # refused for another reason than the run having finished meanwhile
        done = {run_id: await dispatcher.result(run_id, TIMEOUT) for run_id in run_ids}

        for run_id, run in done.items():
            assert (run.status, run.output) == ("completed", expected_output(run_id))
            _assert_log_is_whole(dispatcher.engine, run_id)
    assert effects(effects_file) == {run_id: Counter(STEPS) for run_id in run_ids}


def _child(kind: str, store_url: str, setup: DispatchSetup, run_id: str, effects_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), EFFECTS_ENV: str(effects_file), HANG_ENV: "1"}
    log = effects_file.with_suffix(".log").open("wb")  # the child's output, for a failing test's reader
    args = [kind, store_url, run_id, setup.temporal_address, setup.task_queue, setup.dbos_system_url,
            setup.prefect_api_url]
    return subprocess.Popen([sys.executable, "-m", "tests.integration.battery", *args],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


async def test_a_process_killed_mid_phase_resumes_on_the_same_dispatcher_without_rerunning_recorded_steps(
        kind: str, durable_store_url: str, setup: DispatchSetup, effects_file: Path) -> None:
    run_id = f"{kind}-killed"
    child = _child(kind, durable_store_url, setup, run_id, effects_file)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "hanging" not in effects(effects_file).get(run_id, {}):
            assert child.poll() is None, f"the child ended early: {effects_file.with_suffix('.log').read_text()}"
            assert time.monotonic() < deadline, "the child never reached step slow"
            await asyncio.sleep(0.05)
        child.send_signal(signal.SIGKILL)  # in phase execute, inside step slow
        assert child.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert effects(effects_file)[run_id] == Counter({"plan": 1, "work": 1, "slow": 1, "hanging": 1})

    async with dispatch(kind, durable_store_url, setup) as dispatcher:
        # idempotent: the run exists, and the dispatcher picks it up where it stopped
        await dispatcher.start(battery_workflow(), {"label": "killed"}, run_id=run_id)
        await _until_waiting(dispatcher.engine, run_id)
        await dispatcher.signal(run_id, "approve", {"ok": True}, signal_id="approval")
        run = await dispatcher.result(run_id, TIMEOUT)
        assert (run.status, run.output) == ("completed", expected_output("killed"))
        _assert_log_is_whole(dispatcher.engine, run_id)
        assert battery_workflow().name == run.workflow
    # step slow was in flight when the process died (never recorded): it alone ran again
    assert effects(effects_file)[run_id] == Counter(STEPS) + Counter({"slow": 1, "hanging": 1})
