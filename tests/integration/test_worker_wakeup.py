"""Workers wake when events are committed, not at their next poll; polling stays the fallback.

The poll intervals here are far longer than the bounds the tests wait, so a run that
finishes in time was found through a wake-up (a PostgreSQL notification, or an append by
the worker's own engine), never through a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from phaseledger.store.eventstore import StoreURL
from phaseledger.workers.worker import Worker

LONG_POLL = 30.0
BOUND = 10.0
"""How long a wake-up may take here: generous, yet a third of the poll interval."""


class Gate(BaseModel):
    opened: bool = False


gate = Workflow("wakeup-gate", state=Gate)


@gate.phase(initial=True, to="done")
async def wait(ctx: Context[Gate]) -> str:
    await ctx.wait_for_signal("open")
    ctx.state.opened = True
    return "done"


@gate.phase(final=True)
async def done(ctx: Context[Gate]) -> bool:
    return ctx.state.opened


async def until(predicate: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_worker(engine: Engine, poll_interval: float) -> AsyncIterator[Worker]:
    worker = engine.worker(poll_interval=poll_interval, lease_seconds=30.0)
    task = asyncio.ensure_future(worker.run(handle_signals=False))
    await worker.wait_until_started()
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def wake_through_signal(sender: Engine) -> str:
    """Start a gated run from ``sender``, wait until a worker suspends it, signal it, return its id."""
    run_id = (await sender.start(gate)).run_id
    await until(lambda: sender.get(run_id).status == "waiting", "the worker to suspend the run")
    await sender.signal(run_id, "open")
    await until(lambda: sender.get(run_id).status == "completed", "the worker to resume the signalled run")
    return run_id


def terminate(url: str, pid: int) -> None:
    with psycopg.connect(StoreURL.parse(url).postgres_conninfo or "", autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)


@pytest.mark.postgres
async def test_a_signal_from_another_engine_wakes_an_idle_worker_through_listen(postgres_url: str) -> None:
    async with Engine(postgres_url, workflows=[gate]) as engine, Engine(postgres_url, workflows=[gate]) as sender:
        async with running_worker(engine, LONG_POLL) as worker:
            assert worker.listener is not None
            await until(worker.listener.listening.is_set, "the worker to listen")
            run_id = await wake_through_signal(sender)
            assert sender.get(run_id).output is True
            assert worker.listener.received >= 3  # the start, the suspension, the signal (at least)
            await until(lambda: worker.stats.completed == 1, "the worker to count the run it completed")
            assert worker.stats.notified >= 2
            listener = worker.listener
        assert worker.listener is None and not listener.listening.is_set()  # closed on stop


@pytest.mark.postgres
async def test_a_killed_listener_leaves_polling_to_find_runs(postgres_url: str) -> None:
    async with (
        Engine(postgres_url, workflows=[gate]) as engine,
        Engine(postgres_url, workflows=[gate]) as sender,
        running_worker(engine, poll_interval=0.3) as worker,
    ):
        listener = worker.listener
        assert listener is not None
        await until(listener.listening.is_set, "the worker to listen")
        listener.retry_initial = listener.retry_max = 600.0  # no reconnection during this test
        assert listener.backend_pid is not None
        terminate(postgres_url, listener.backend_pid)
        await until(lambda: not listener.listening.is_set(), "the listener to see its connection die")
        received = listener.received
        run_id = await wake_through_signal(sender)
        assert sender.get(run_id).output is True
        assert listener.received == received and listener.connections == 1  # found by polling alone


@pytest.mark.postgres
async def test_the_listener_reconnects_after_its_connection_is_killed(postgres_url: str) -> None:
    async with (
        Engine(postgres_url, workflows=[gate]) as engine,
        Engine(postgres_url, workflows=[gate]) as sender,
        running_worker(engine, LONG_POLL) as worker,
    ):
        listener = worker.listener
        assert listener is not None
        await until(listener.listening.is_set, "the worker to listen")
        first = listener.backend_pid
        assert first is not None
        terminate(postgres_url, first)
        await until(lambda: listener.connections == 2 and listener.listening.is_set(), "a reconnection")
        assert listener.backend_pid not in (None, first)
        run_id = await wake_through_signal(sender)
        assert sender.get(run_id).output is True


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
async def test_appends_by_the_workers_own_engine_wake_it(url: str, tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db" if url == "sqlite" else url
    async with Engine(url, workflows=[gate]) as engine, running_worker(engine, LONG_POLL) as worker:
        assert worker.listener is None  # no cross-process wake-ups on SQLite and memory://
        run_id = await wake_through_signal(engine)
        assert engine.get(run_id).output is True
        assert worker.stats.notified >= 2 and worker.stats.completed == 1
