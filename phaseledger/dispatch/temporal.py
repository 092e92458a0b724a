"""Dispatch phaseledger runs on Temporal: one Temporal workflow per run, advanced by activities.

Install the extra first: ``pip install 'phaseledger[temporal]'``. Then, in a worker
process::

    engine = Engine(store_url, workflows=[orders], max_inline_wait=0)
    client = await Client.connect("localhost:7233")
    async with phaseledger_worker(client, engine, task_queue="orders"):
        handle = await start_run(client, engine, orders, {"sku": "a1"}, run_id="order-7", task_queue="orders")
        await handle.signal(SIGNAL, {"name": "approve", "payload": {"ok": True}})
        outcome = await handle.result()

The Temporal workflow id is the run id. The workflow itself lives in
:mod:`phaseledger.dispatch.temporal_workflow` (see there for what it does); this module
holds the activities that call the engine, the worker and the helpers to start, signal
and cancel runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from phaseledger.dispatch.errors import DispatcherUnavailable
from phaseledger.domain.errors import (
    ConcurrencyConflict,
    LeaseLost,
    PhaseledgerError,
    RunBusy,
    RunFinished,
    StoreUnavailable,
)
from phaseledger.domain.status import CANCELLED
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.advance import RunWait
from phaseledger.engine.engine import Engine
from phaseledger.store.leasebook import LeaseBook, open_lease_book
from phaseledger.store.runindex import RunIndex, open_run_index, workflow_key

try:
    from temporalio import activity
    from temporalio.client import Client, WorkflowHandle
    from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
    from temporalio.service import RPCError, RPCStatusCode
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
except ImportError as missing:  # pragma: no cover - exercised only without the extra
    raise DispatcherUnavailable("Temporal", "temporal", "temporalio") from missing

from phaseledger.dispatch.temporal_workflow import (
    ADVANCE,
    CANCEL,
    DELIVER_SIGNAL,
    SIGNAL,
    WAKE,
    WORKFLOW_NAME,
    Outcome,
    PhaseledgerRun,
    RunInput,
    SignalDelivery,
    Wait,
)

__all__ = [
    "SIGNAL",
    "WAKE",
    "WORKFLOW_NAME",
    "Outcome",
    "PhaseledgerActivities",
    "PhaseledgerRun",
    "RunInput",
    "Wait",
    "WakeBridge",
    "cancel_run",
    "phaseledger_worker",
    "signal_run",
    "start_run",
]

log = logging.getLogger("phaseledger.dispatch")

RETRYABLE = (RunBusy, StoreUnavailable, ConcurrencyConflict, LeaseLost)
"""Errors after which Temporal retries the activity (with the run's retry policy); any other
:class:`PhaseledgerError` fails it for good (a non-retryable ``ApplicationError``)."""


def summary(wait: RunWait) -> Wait:
    """The serialisable summary of a :class:`RunWait` an activity returns to the workflow."""
    run = wait.run
    dumped = run.model_dump(mode="json", include={"output", "error"})
    return Wait(run_id=run.run_id, status=run.status, finished=wait.finished, reason=wait.reason,
                signal=wait.signal, until=wait.until, output=dumped.get("output"), error=dumped.get("error"))


def _final(error: PhaseledgerError) -> ApplicationError:
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=True)


class PhaseledgerActivities:
    """The activities of the phaseledger workflow, bound to the engine of this worker process."""

    def __init__(self, engine: Engine, heartbeat_every: float = 1.0) -> None:
        self.engine = engine
        self.heartbeat_every = heartbeat_every
        """Seconds between heartbeats while an advance runs (keep it below the heartbeat timeout)."""

    @activity.defn(name=ADVANCE)
    async def advance(self, run_id: str) -> Wait:
        """Drive the run until it must wait (``engine.advance``), heartbeating meanwhile."""
        task = asyncio.ensure_future(self.engine.advance(run_id))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.heartbeat_every)
                if done:
                    break
                activity.heartbeat()
            return summary(task.result())
        except RETRYABLE:
            raise
        except PhaseledgerError as error:
            raise _final(error) from error
        finally:
            if not task.done():  # the activity was cancelled: stop driving at the next journal boundary
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    @activity.defn(name=DELIVER_SIGNAL)
    async def deliver_signal(self, delivery: SignalDelivery) -> bool:
        """Append the signal to the run's log once (its id makes retries idempotent); False if the run finished."""
        try:
            await self.engine.signal(delivery.run_id, delivery.name, delivery.payload, signal_id=delivery.signal_id)
        except RunFinished:
            return False
        except RETRYABLE:
            raise
        except PhaseledgerError as error:
            raise _final(error) from error
        return True

    @activity.defn(name=CANCEL)
    async def cancel(self, run_id: str) -> bool:
        """Cancel the run because its Temporal workflow was cancelled; False if it had finished."""
        try:
            await self.engine.cancel(run_id, reason="temporal workflow cancelled")
        except RunFinished:
            return False
        return True

    def all(self) -> list[Any]:
        """The activity callables to register with a Temporal worker."""
        return [self.advance, self.deliver_signal, self.cancel]


class WakeBridge:
    """Wakes the Temporal workflows of runs that phaseledger itself changed.

    A signal appended with ``engine.signal`` (or ``phaseledger signal``, from any process)
    or a run cancelled with ``engine.cancel`` is in the log, but the run's Temporal
    workflow waits on a Temporal timer or signal and would only see it at its next wake-up.
    The bridge follows the store's run index every ``every`` seconds and sends such a run's
    workflow (id = run id) the ``phaseledger_wake`` signal: the workflow advances the run,
    which takes the signal, or ends as the run is cancelled. A run that has no Temporal
    workflow (driven by another dispatcher) is left alone. Every worker runs one; a run
    woken twice advances once more, for nothing.
    """

    OVERLAP = timedelta(seconds=5)
    """How far back each look reaches again: an event is stamped before it commits."""
    BATCH = 1000

    def __init__(self, client: Client, engine: Engine, every: float = 1.0) -> None:
        self.client = client
        self.engine = engine
        self.every = every
        self._woken: dict[str, tuple[int, datetime]] = {}
        """Run id -> the version it was woken at, and when (forgotten once past the overlap)."""
        self._lease_book: LeaseBook | None = None

    def _leases(self) -> LeaseBook:
        if self._lease_book is None:
            self._lease_book = open_lease_book(self.engine.store)
        return self._lease_book

    async def run(self) -> None:
        """Follow the index and wake workflows until cancelled (store outages are waited out)."""
        index = await self.engine.store.call(open_run_index, self.engine.store)
        since = datetime.now(UTC) - self.OVERLAP
        while True:
            looked = datetime.now(UTC)
            try:
                await self.wake_changed(index, since)
                since = looked - self.OVERLAP
            except StoreUnavailable as exc:
                log.warning("phaseledger wake bridge: %s; trying again", exc)
            await asyncio.sleep(self.every)

    async def wake_changed(self, index: RunIndex, since: datetime) -> list[str]:
        """Wake the workflows of runs changed since ``since`` that got a signal or were cancelled."""
        store = self.engine.store
        await store.call(index.catch_up)
        keys = [workflow_key(name, version) for (name, version) in self.engine.registry.workflows]
        rows = await store.call(index.changed_since, since, keys, self.BATCH)
        now = datetime.now(UTC)
        # A signal makes a suspended run due (runnable now, no driver); a run being driven holds
        # its lease and takes what arrives itself.
        candidates = [row for row in rows if self._woken.get(row.run_id, (None,))[0] != row.version and (
            row.status == CANCELLED
            or (not row.finished and row.runnable_at is not None and row.runnable_at <= now))]
        driven = await store.call(self._leases().held, [row.run_id for row in candidates]) if candidates else {}
        woken = []
        for row in candidates:
            if row.run_id in driven and driven[row.run_id].live:
                continue
            self._woken[row.run_id] = (row.version, now)
            if await self._wake(row.run_id):
                woken.append(row.run_id)
        for run_id, (_, when) in list(self._woken.items()):
            if when < since - self.OVERLAP:
                del self._woken[run_id]
        return woken

    async def _wake(self, run_id: str) -> bool:
        try:
            await self.client.get_workflow_handle(run_id).signal(WAKE)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # not found: no Temporal workflow, or it ended
                log.warning("phaseledger wake bridge: cannot wake run %s: %s", run_id, exc)
            return False
        return True


class PhaseledgerWorker(Worker):
    """A Temporal worker for phaseledger runs, with its :class:`WakeBridge` running beside it."""

    def __init__(self, *args: Any, bridge: WakeBridge | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bridge = bridge

    async def run(self) -> None:
        """Run the worker (and the bridge) until shut down."""
        if self.bridge is None:
            await super().run()
            return
        bridge = asyncio.ensure_future(self.bridge.run())
        try:
            await super().run()
        finally:
            bridge.cancel()
            with contextlib.suppress(BaseException):
                await bridge


def phaseledger_worker(client: Client, engine: Engine, task_queue: str, *,
                       workflows: Sequence[Workflow[Any]] = (), heartbeat_every: float = 1.0,
                       wake_every: float | None = 1.0, **options: Any) -> PhaseledgerWorker:
    """A Temporal worker that runs phaseledger runs' workflows and activities on ``task_queue``.

    ``engine`` drives the runs (its workflows, plus ``workflows``, registered now); build it
    with ``max_inline_wait=0`` so that sleeps become Temporal timers instead of blocking an
    activity. Every ``wake_every`` seconds its :class:`WakeBridge` wakes the workflows of
    runs signalled or cancelled through phaseledger (None: only Temporal signals and timers
    wake them). ``options`` go to :class:`temporalio.worker.Worker`. Use it as
    ``async with phaseledger_worker(...):`` or ``await worker.run()``.
    """
    for workflow in workflows:
        engine.register(workflow)
    # rich and beartype: a console handler on the root logger (Prefect installs one in any process
    # that imports prefect) renders a workflow's log lines with rich, which would otherwise be
    # imported again inside the sandbox, slowly enough to trip Temporal's deadlock detector.
    restrictions = SandboxRestrictions.default.with_passthrough_modules("phaseledger", "rich", "beartype")
    options.setdefault("workflow_runner", SandboxedWorkflowRunner(restrictions=restrictions))
    bridge = WakeBridge(client, engine, wake_every) if wake_every is not None else None
    return PhaseledgerWorker(client, task_queue=task_queue, workflows=[PhaseledgerRun],
                             activities=PhaseledgerActivities(engine, heartbeat_every).all(), bridge=bridge,
                             **options)


async def start_run(client: Client, engine: Engine, workflow: Workflow[Any],
                    input: BaseModel | Mapping[str, Any] | None = None, *, run_id: str | None = None,
                    task_queue: str, activity_timeout: float = 3600.0, heartbeat_timeout: float = 30.0,
                    retry_initial: float = 1.0, retry_maximum: float = 30.0) -> WorkflowHandle[Any, Outcome]:
    """Record a phaseledger run and start its Temporal workflow (workflow id = run id).

    Idempotent: starting a run id again with the same workflow and input returns the
    handle of the workflow already started (``engine.start(..., if_exists="return")``).
    """
    run = await engine.start(workflow, input, run_id=run_id, if_exists="return")
    params = RunInput(run.run_id, activity_timeout, heartbeat_timeout, retry_initial, retry_maximum)
    try:
        return await client.start_workflow(
            PhaseledgerRun.run, params, id=run.run_id, task_queue=task_queue,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(run.run_id, result_type=Outcome)


async def signal_run(client: Client, run_id: str, name: str, payload: Any = None, *,
                     signal_id: str | None = None) -> None:
    """Send a phaseledger signal through Temporal (what ``handle.signal(SIGNAL, {...})`` does)."""
    message: dict[str, Any] = {"name": name, "payload": payload}
    if signal_id is not None:
        message["signal_id"] = signal_id
    await client.get_workflow_handle(run_id).signal(SIGNAL, message)


async def cancel_run(client: Client, run_id: str) -> None:
    """Cancel the run's Temporal workflow; the workflow then cancels the phaseledger run."""
    await client.get_workflow_handle(run_id).cancel()
