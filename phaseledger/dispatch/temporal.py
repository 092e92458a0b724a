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
from collections.abc import Mapping, Sequence
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
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.advance import RunWait
from phaseledger.engine.engine import Engine

try:
    from temporalio import activity
    from temporalio.client import Client, WorkflowHandle
    from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions
except ImportError as missing:  # pragma: no cover - exercised only without the extra
    raise DispatcherUnavailable("Temporal", "temporal", "temporalio") from missing

from phaseledger.dispatch.temporal_workflow import (
    ADVANCE,
    CANCEL,
    DELIVER_SIGNAL,
    SIGNAL,
    WORKFLOW_NAME,
    Outcome,
    PhaseledgerRun,
    RunInput,
    SignalDelivery,
    Wait,
)

__all__ = [
    "SIGNAL",
    "WORKFLOW_NAME",
    "Outcome",
    "PhaseledgerActivities",
    "PhaseledgerRun",
    "RunInput",
    "Wait",
    "cancel_run",
    "phaseledger_worker",
    "signal_run",
    "start_run",
]

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


def phaseledger_worker(client: Client, engine: Engine, task_queue: str, *,
                       workflows: Sequence[Workflow[Any]] = (), heartbeat_every: float = 1.0,
                       **options: Any) -> Worker:
    """A Temporal worker that runs phaseledger runs' workflows and activities on ``task_queue``.

    ``engine`` drives the runs (its workflows, plus ``workflows``, registered now); build it
    with ``max_inline_wait=0`` so that sleeps become Temporal timers instead of blocking an
    activity. ``options`` go to :class:`temporalio.worker.Worker`. Use it as
    ``async with phaseledger_worker(...):`` or ``await worker.run()``.
    """
    for workflow in workflows:
        engine.register(workflow)
    restrictions = SandboxRestrictions.default.with_passthrough_modules("phaseledger")
    options.setdefault("workflow_runner", SandboxedWorkflowRunner(restrictions=restrictions))
    return Worker(client, task_queue=task_queue, workflows=[PhaseledgerRun],
                  activities=PhaseledgerActivities(engine, heartbeat_every).all(), **options)


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
