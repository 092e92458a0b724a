"""Phaseledger runs dispatched on Prefect: steps, a timer, signals, a flow-run process SIGKILLed mid-phase.

Prefect is real: ``prefect_test_harness()`` runs a Prefect API server (its own temporary
SQLite database, on loopback) once per test session (``tests/integration/conftest.py``); a flow that runs in a subprocess is
pointed at it with ``$PREFECT_API_URL``. The phaseledger store is a SQLite file or the
PostgreSQL server. Step executions are counted in a file outside both stores, so what ran
again after a crash is plain to see.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from phaseledger.testing.dispatchers import PREFECT_QUIET

for _name, _value in PREFECT_QUIET.items():  # offline and quiet, here and in the processes started
    os.environ.setdefault(_name, _value)

pytest.importorskip("prefect", reason="the Prefect dispatcher tests need the prefect extra")

from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.client.schemas.objects import StateType  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402
from prefect.input.run_input import asend_input  # noqa: E402

from phaseledger import Engine  # noqa: E402
from phaseledger.dispatch.prefect import (  # noqa: E402
    FLOW_NAME,
    INPUT_KEY_PREFIX,
    PhaseledgerPrefect,
    send_signal_input,
)
from phaseledger.testing.crash import check_log  # noqa: E402
from tests.integration.prefect_flows import (  # noqa: E402
    EFFECTS_ENV,
    ENGINE_REF,
    HANG_ENV,
    STORE_ENV,
    crash_workflow,
    effects,
    failing_workflow,
    order_workflow,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 90.0  # generous: a loaded machine is slow, a hung test is not


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(path))
    monkeypatch.delenv(HANG_ENV, raising=False)
    return path


async def _until(what: str, check: Callable[[], object], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _waiting(engine: Engine, run_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (await engine.get_async(run_id)).status != "waiting":
        assert time.monotonic() < deadline, f"run {run_id} never came to wait for its signal"
        await asyncio.sleep(0.05)


async def test_a_run_with_steps_a_timer_and_a_signal_completes_as_a_prefect_flow_run(
        prefect_api: str, durable_store_url: str, effects_file: Path) -> None:
    wf = order_workflow()
    engine = Engine(durable_store_url, workflows=[wf], max_inline_wait=0)
    dispatcher = PhaseledgerPrefect(engine, poll_seconds=0.05)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    try:
        await dispatcher.start(wf, run_id=run_id)
        await dispatcher.start(wf, run_id=run_id)  # idempotent: the flow run under way is the run's
        await _waiting(engine, run_id)  # past the durable timer, at the signal
        await dispatcher.send_signal(run_id, "approve", {"ok": True}, signal_id="approval-1")
        await engine.signal(run_id, "approve", {"ok": True}, signal_id="approval-1")  # the same: a no-op
        done = await asyncio.wait_for(dispatcher.result(run_id), TIMEOUT)

        assert (done.status, done.output) == ("completed", 42)
        assert effects(effects_file) == ["price", "ship"]
        received = [e.data["signal_id"] for e in engine.history(run_id) if e.type == "SignalReceived"]
        assert received == ["approval-1"]
        assert check_log(engine.store.events(run_id), run_id) == []  # gapless, nothing recorded twice

        flow_run = await dispatcher.flow_run(run_id)  # Prefect's UI and CLI find it by the run id
        assert flow_run is not None and flow_run.name == run_id
        assert flow_run.state_type == StateType.COMPLETED
        assert {"phaseledger", "workflow:prefect-order"} <= set(flow_run.tags)
        async with get_client() as client:
            assert (await client.read_flow(flow_run.flow_id)).name == FLOW_NAME
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        assert len(runs) == 1  # started twice, one flow run
        advances = [t for t in tasks if t.name == f"advance {run_id}"]  # one task run per stretch of the run
        assert len(advances) >= 3 and all(t.state_type == StateType.COMPLETED for t in advances), \
            [t.name for t in tasks]
        assert (await dispatcher.result(run_id)).version == done.version  # its outcome, again
    finally:
        dispatcher.close()
        engine.close()


async def test_signals_sent_as_prefect_flow_run_inputs_reach_the_run_once(
        prefect_api: str, tmp_path: Path, effects_file: Path) -> None:
    wf = order_workflow()
    engine = Engine(f"sqlite:///{tmp_path}/runs.db", workflows=[wf], max_inline_wait=0)
    dispatcher = PhaseledgerPrefect(engine, poll_seconds=0.05)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    try:
        await dispatcher.start(wf, run_id=run_id)
        await _waiting(engine, run_id)
        flow_run = await dispatcher.flow_run(run_id)
        assert flow_run is not None
        # Prefect's own send_input: something that is no signal (ignored), a signal refused for its id
        # (dropped), then a plain dict carrying the signal (its id derived from the input's key)
        await asend_input({"note": "no signal here"}, flow_run.id, key_prefix=INPUT_KEY_PREFIX)
        await send_signal_input(flow_run.id, "approve", {"ok": True}, signal_id="bad id\n")
        await asend_input({"name": "approve", "payload": {"ok": False}}, flow_run.id, key_prefix=INPUT_KEY_PREFIX)
        done = await asyncio.wait_for(dispatcher.result(run_id), TIMEOUT)

        assert (done.status, done.output) == ("completed", 0)
        received = [e.data["signal_id"] for e in engine.history(run_id) if e.type == "SignalReceived"]
        assert len(received) == 1 and received[0].startswith(f"prefect:{INPUT_KEY_PREFIX}-")
        assert effects(effects_file) == ["price"]
    finally:
        dispatcher.close()
        engine.close()


async def test_a_failed_run_fails_its_prefect_flow_run(prefect_api: str, tmp_path: Path) -> None:
    wf = failing_workflow()
    engine = Engine(f"sqlite:///{tmp_path}/runs.db", workflows=[wf], max_inline_wait=0)
    dispatcher = PhaseledgerPrefect(engine, poll_seconds=0.05)
    try:
        run = await dispatcher.start(wf, run_id="doomed-1")
        done = await asyncio.wait_for(dispatcher.result(run.run_id), TIMEOUT)
        assert done.status == "failed"
        flow_run = await dispatcher.flow_run(run.run_id)
        assert flow_run is not None and flow_run.state_type == StateType.FAILED
        assert flow_run.state is not None and "phaseledger run doomed-1 failed" in (flow_run.state.message or "")
    finally:
        dispatcher.close()
        engine.close()


async def test_cancelling_a_waiting_run_cancels_its_prefect_flow_run(prefect_api: str, tmp_path: Path,
                                                                     effects_file: Path) -> None:
    wf = order_workflow()
    engine = Engine(f"sqlite:///{tmp_path}/runs.db", workflows=[wf], max_inline_wait=0)
    dispatcher = PhaseledgerPrefect(engine, poll_seconds=0.05)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    try:
        await dispatcher.start(wf, run_id=run_id)
        await _waiting(engine, run_id)
        await engine.cancel(run_id, reason="customer left")  # the waiting flow run sees the log grow
        done = await asyncio.wait_for(dispatcher.result(run_id), TIMEOUT)
        assert done.status == "cancelled"
        flow_run = await dispatcher.flow_run(run_id)
        assert flow_run is not None and flow_run.state_type == StateType.CANCELLED
        assert effects(effects_file) == ["price"]
    finally:
        dispatcher.close()
        engine.close()


def _serve(api_url: str, deployment: str, store_url: str, effects_file: Path, hang: bool) -> subprocess.Popen[bytes]:
    """A process serving the flow as a deployment; each flow run it starts runs in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": api_url, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           STORE_ENV: store_url, EFFECTS_ENV: str(effects_file)}
    if hang:
        env[HANG_ENV] = "1"
    else:
        env.pop(HANG_ENV, None)
    log = effects_file.with_name(f"serve-{deployment}-{int(hang)}.log")  # the child's output, for a failing test
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.integration.prefect_flows", deployment],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_flow_run_killed_mid_phase_is_retried_in_a_new_process_and_no_recorded_step_runs_again(
        prefect_api: str, durable_store_url: str, effects_file: Path) -> None:
    wf = crash_workflow()
    engine = Engine(durable_store_url, workflows=[wf], max_inline_wait=0)
    deployment = f"crash-{uuid.uuid4().hex[:8]}"
    dispatcher = PhaseledgerPrefect(engine, deployment=f"{FLOW_NAME}/{deployment}", engine_ref=ENGINE_REF,
                                    poll_seconds=0.1)
    first = _serve(prefect_api, deployment, durable_store_url, effects_file, hang=True)
    second: subprocess.Popen[bytes] | None = None
    try:
        await _until("the deployment to be served", lambda: first.poll() is None and _deployed(deployment))
        run = await dispatcher.start(wf, {"label": "x"}, run_id=f"crash-{uuid.uuid4().hex[:8]}")
        await _until("the flow run's process to hang in step slow",
                     lambda: first.poll() is None and any(e.startswith("hanging:") for e in effects(effects_file)))
        hanging = next(e for e in effects(effects_file) if e.startswith("hanging:"))
        os.kill(int(hanging.split(":")[1]), signal.SIGKILL)  # the flow run's process, in the middle of phase "second"

        async def crashed() -> None:
            while True:
                flow_run = await dispatcher.flow_run(run.run_id)
                if flow_run is not None and flow_run.state_type == StateType.CRASHED:
                    return
                await asyncio.sleep(0.1)

        await asyncio.wait_for(crashed(), TIMEOUT)  # the serving process saw its flow run die
        assert effects(effects_file) == ["a", "b", "slow", hanging]
        _stop(first)

        second = _serve(prefect_api, deployment, durable_store_url, effects_file, hang=False)  # a new worker
        await dispatcher.retry(run.run_id)
        done = await asyncio.wait_for(dispatcher.result(run.run_id), TIMEOUT * 2)

        assert (done.status, done.output) == ("completed", "b+slow+c")
        # the interrupted step ran again (it was never recorded); no recorded step did
        assert effects(effects_file) == ["a", "b", "slow", hanging, "slow", "c"]
        flow_run = await dispatcher.flow_run(run.run_id)
        assert flow_run is not None and flow_run.state_type == StateType.COMPLETED and flow_run.run_count >= 2
        history = [e.type for e in engine.history(run.run_id)]
        assert history.count("RunResumed") >= 1  # the new process resumed it from its log
        assert check_log(engine.store.events(run.run_id), run.run_id) == []  # gapless, nothing recorded twice
    finally:
        _stop(first)
        if second is not None:
            _stop(second)
        dispatcher.close()
        engine.close()


def _deployed(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return False
        return True
