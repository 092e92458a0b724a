"""Phaseledger runs dispatched on DBOS: timers, signals, a SIGKILL mid-phase, a queue.

DBOS is real (its system database on SQLite, or on PostgreSQL in a schema of its own);
the phaseledger store is on the same backend. Step executions are counted in a file
outside both stores, so what ran again after a crash is plain to see.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytest.importorskip("dbos")

from dbos import DBOS  # noqa: E402

from phaseledger import Engine, Workflow  # noqa: E402
from phaseledger.dispatch.dbos import PhaseledgerDBOS  # noqa: E402
from tests.conftest import POSTGRES_URL, fresh_postgres_url  # noqa: E402
from tests.integration.dbos_flows import (  # noqa: E402
    EFFECTS_ENV,
    HANG_ENV,
    crash_workflow,
    dbos_config,
    effects,
    order_workflow,
    queued_workflow,
)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0  # generous: a loaded machine is slow, a hung test is not


class Backend(NamedTuple):
    store_url: str
    system_url: str
    schema: str
    """DBOS's system schema on PostgreSQL ("" on SQLite)."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(f"sqlite:///{tmp_path}/runs.db", f"sqlite:///{tmp_path}/dbos.sqlite", "")
        return
    import psycopg
    from psycopg import sql

    from phaseledger.store.eventstore import StoreURL

    schema = f"dbos_{uuid.uuid4().hex[:12]}"
    for store_url in fresh_postgres_url():
        try:
            yield Backend(store_url, POSTGRES_URL.split("?", 1)[0], schema)
        finally:
            with psycopg.connect(StoreURL.parse(POSTGRES_URL).postgres_conninfo or "", autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def effects_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "effects.txt"
    monkeypatch.setenv(EFFECTS_ENV, str(path))
    return path


@asynccontextmanager
async def launched(backend: Backend, workflows: list[Workflow[Any]]) -> AsyncIterator[PhaseledgerDBOS]:
    """DBOS launched in this event loop, with a dispatcher over a fresh engine."""
    engine = Engine(backend.store_url, workflows=workflows, max_inline_wait=0)
    DBOS(config=dbos_config(backend.system_url, backend.schema or None))  # type: ignore[arg-type]
    dispatcher = PhaseledgerDBOS(engine)
    DBOS.launch()
    try:
        yield dispatcher
    finally:
        DBOS.destroy()
        dispatcher.close()
        engine.close()


async def test_a_run_with_steps_a_timer_and_a_signal_completes_through_dbos(
        backend: Backend, effects_file: Path) -> None:
    wf = order_workflow()
    async with launched(backend, [wf]) as dispatcher:
        run = await dispatcher.start(wf, run_id="order-1")
        again = await dispatcher.start(wf, run_id="order-1")  # idempotent, like a DBOS workflow id
        assert again.run_id == run.run_id

        async def waiting() -> None:
            while (await dispatcher.engine.get_async(run.run_id)).status != "waiting":
                await asyncio.sleep(0.05)

        await asyncio.wait_for(waiting(), TIMEOUT)  # past the durable timer, at the signal
        await dispatcher.send_signal(run.run_id, "approve", {"ok": True}, signal_id="approval-1")
        await dispatcher.send_signal(run.run_id, "approve", {"ok": True}, signal_id="approval-1")  # no-op
        done = await asyncio.wait_for(dispatcher.result(run.run_id), TIMEOUT)

        assert (done.status, done.output) == ("completed", 42)
        assert effects(str(effects_file)) == ["price", "ship"]
        history = [e.type for e in dispatcher.engine.history(run.run_id)]
        assert history.count("SignalReceived") == 1

        status = await DBOS.get_workflow_status_async(run.run_id)  # DBOS's tools see the run by its id
        assert status is not None and status.status == "SUCCESS" and status.name == "phaseledger.run"
        steps = [s["function_name"] for s in await DBOS.list_workflow_steps_async(run.run_id)]
        assert steps.count("phaseledger.advance") >= 3 and "DBOS.sleep" in steps and "DBOS.recv" in steps
        assert steps.count("phaseledger.signal") == 1


def _child(mode: str, backend: Backend, run_id: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.dbos_flows", mode, backend.store_url, backend.system_url,
         backend.schema, run_id],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_process_killed_mid_phase_is_recovered_by_dbos_launch(backend: Backend, effects_file: Path) -> None:
    env = {**os.environ, EFFECTS_ENV: str(effects_file), "PYTHONPATH": str(REPO)}
    first = _child("start", backend, "crash-1", {**env, HANG_ENV: "1"})
    try:
        deadline = time.monotonic() + TIMEOUT
        while "hanging" not in effects(str(effects_file)):
            assert first.poll() is None, f"the first child ended early: {first.communicate()}"
            assert time.monotonic() < deadline, "the first child never reached the slow step"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # in the middle of phase "second", inside step "slow"
        first.wait(TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert effects(str(effects_file)) == ["a", "b", "slow", "hanging"]

    second = _child("recover", backend, "crash-1", env)  # no start: DBOS.launch() recovers the run
    try:
        out, err = second.communicate(timeout=TIMEOUT)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"status": "completed", "output": "b+slow+c"}
    # the interrupted step ran again (it was never recorded); no recorded step did
    assert effects(str(effects_file)) == ["a", "b", "slow", "hanging", "slow", "c"]


async def test_a_queue_with_concurrency_one_runs_two_runs_one_after_the_other(backend: Backend) -> None:
    log: list[tuple[str, str]] = []
    wf = queued_workflow(log)
    async with launched(backend, [wf]) as dispatcher:
        queue = await DBOS.register_queue_async(f"runs-{uuid.uuid4().hex[:8]}", global_concurrency=1,
                                                polling_interval_sec=0.1)
        dispatcher.queue = queue.name  # a queue is registered once DBOS runs; the dispatcher takes its name
        first = await dispatcher.start(wf, {"label": "one"}, run_id="queued-1")
        second = await dispatcher.start(wf, {"label": "two"}, run_id="queued-2")
        outputs = [(await asyncio.wait_for(dispatcher.result(r.run_id), TIMEOUT)).output for r in (first, second)]
    assert outputs == ["one", "two"]
    assert log == [("one", "begin"), ("one", "end"), ("two", "begin"), ("two", "end")]


async def test_a_plain_dbos_send_reaches_the_run_once(backend: Backend, effects_file: Path) -> None:
    wf = order_workflow()
    async with launched(backend, [wf]) as dispatcher:
        run = await dispatcher.start(wf, run_id="order-2")

        async def waiting() -> None:
            while (await dispatcher.engine.get_async(run.run_id)).status != "waiting":
                await asyncio.sleep(0.05)

        await asyncio.wait_for(waiting(), TIMEOUT)
        await DBOS.send_async(run.run_id, {"ok": False}, topic="approve")  # DBOS's own API, no signal id
        done = await asyncio.wait_for(dispatcher.result(run.run_id), TIMEOUT)
        assert (done.status, done.output) == ("completed", 0)
        received = [e for e in dispatcher.engine.history(run.run_id) if e.type == "SignalReceived"]
        assert [e.data["signal_id"] for e in received] == ["dbos:order-2:1"]  # derived from the workflow's receipt
