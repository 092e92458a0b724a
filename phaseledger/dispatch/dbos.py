"""Phaseledger runs dispatched on DBOS: one DBOS workflow per run, one DBOS step per advance.

For a team already running DBOS: each phaseledger run gets a DBOS workflow whose id is
the run id, so DBOS's tools (``dbos workflow list``, Conductor) show it. The workflow
loops on :meth:`phaseledger.Engine.advance`, each call one DBOS step
(``phaseledger.advance``): a finished run ends the workflow with the run's outcome; a
run waiting for a time makes it ``DBOS.sleep`` until then; a run waiting for a signal
makes it ``DBOS.recv(topic=<signal name>)``, then deliver what arrived to phaseledger
(step ``phaseledger.signal``, with a stable signal id, so a replayed workflow delivers it
once) and advance again.

The phaseledger store stays the source of truth (state, recorded steps, signals); DBOS's
system database only schedules. A process killed mid-phase is recovered by DBOS at
``DBOS.launch()`` in a new process: DBOS replays the recorded advances from its
database, the interrupted advance runs again, and phaseledger resumes the run from its
log, so no recorded phaseledger step runs again.

Everything is async, like the engine: the DBOS workflow and steps are coroutines, and
:class:`PhaseledgerDBOS` offers ``await start(...)``, ``await send_signal(...)`` and
``await result(...)``. Call ``DBOS.launch()`` from inside the running event loop that
uses the engine, so workflows DBOS recovers at launch run on that loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import BaseModel

from phaseledger.dispatch.errors import DispatchError, DispatcherUnavailable
from phaseledger.domain.errors import RunBusy, RunFinished, StoreUnavailable
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.views import Run

try:
    from dbos import DBOS, Queue, SetWorkflowID, WorkflowHandleAsync
except ImportError as exc:  # the extra is missing: say which one to install
    raise DispatcherUnavailable("DBOS", "dbos", "dbos") from exc

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine

WORKFLOW_NAME = "phaseledger.run"
"""The DBOS name of the workflow that drives one phaseledger run."""
ADVANCE_STEP = "phaseledger.advance"
"""The DBOS name of the step that calls ``engine.advance``."""
SIGNAL_STEP = "phaseledger.signal"
"""The DBOS name of the step that delivers a received DBOS message to phaseledger."""

SIGNAL_WAIT_SECONDS = 24 * 3600.0
"""How long one ``DBOS.recv`` waits for a signal without a deadline before waiting again."""
MIN_WAIT_SECONDS = 0.001
"""The shortest DBOS sleep or receive: always positive, so each wait takes its place in the
workflow's step sequence even when a replay computes a wait already over."""


class Waited(TypedDict):
    """What one advance step recorded in DBOS: the run's wait, as plain JSON."""

    status: str
    finished: bool
    reason: str | None
    signal: str | None
    until: str | None
    """ISO-8601 time the run is due again without a signal; None when only a signal wakes it."""
    output: Any
    error: dict[str, Any] | None


class Outcome(TypedDict):
    """What the DBOS workflow returns: the finished run's status, output and error."""

    run_id: str
    status: str
    output: Any
    error: dict[str, Any] | None


_bound: list[Engine] = []
"""The engine the DBOS workflow of this process drives (set by :class:`PhaseledgerDBOS`)."""


def _engine() -> Engine:
    if not _bound:
        raise RuntimeError(
            "no phaseledger engine is bound to DBOS in this process: create "
            "PhaseledgerDBOS(engine) before DBOS.launch() so recovered workflows find it"
        )
    return _bound[-1]


def _transient(exc: BaseException) -> bool:
    """Whether waiting may help: another driver still holds the run, or the store is out for now."""
    return isinstance(exc, RunBusy) or (isinstance(exc, StoreUnavailable) and exc.transient)


@DBOS.step(name=ADVANCE_STEP, retries_allowed=True, interval_seconds=0.5, backoff_rate=2.0, max_attempts=8,
           should_retry=_transient)
async def _advance(run_id: str) -> Waited:
    """One DBOS step: drive the run until it finishes or must wait; record what it waits for."""
    wait = await _engine().advance(run_id)
    return Waited(status=wait.run.status, finished=wait.finished, reason=wait.reason, signal=wait.signal,
                  until=wait.until.isoformat() if wait.until else None,
                  output=wait.run.output if wait.finished else None, error=wait.run.error)


@DBOS.step(name=SIGNAL_STEP, retries_allowed=True, interval_seconds=0.5, backoff_rate=2.0, max_attempts=8,
           should_retry=_transient)
async def _deliver(run_id: str, name: str, payload: Any, signal_id: str) -> None:
    """One DBOS step: append a received signal to the run, once (its id makes it idempotent)."""
    try:
        await _engine().signal(run_id, name, payload, signal_id=signal_id)
    except RunFinished:
        pass  # finished meanwhile (cancelled, or timed out): the next advance returns its outcome


def _seconds_until(until: str | None, default: float) -> float:
    if until is None:
        return default
    left = (datetime.fromisoformat(until) - datetime.now(UTC)).total_seconds()
    return max(MIN_WAIT_SECONDS, left)


def _envelope(message: Any, run_id: str, receipt: int) -> tuple[Any, str]:
    """The payload and signal id of a received DBOS message.

    :meth:`PhaseledgerDBOS.send_signal` sends ``{"signal_id": ..., "payload": ...}``; a
    plain ``DBOS.send`` from elsewhere sends the payload alone and gets an id derived from
    the workflow and the receipt's place in it, which a replay derives again.
    """
    if isinstance(message, Mapping) and set(message) == {"signal_id", "payload"}:
        return message["payload"], str(message["signal_id"])
    return message, f"dbos:{run_id}:{receipt}"


@DBOS.workflow(name=WORKFLOW_NAME)
async def run_workflow(run_id: str) -> Outcome:
    """The DBOS workflow of one phaseledger run (its DBOS workflow id is the run id)."""
    receipt = 0
    while True:
        waited = await _advance(run_id)
        if waited["finished"]:
            return Outcome(run_id=run_id, status=waited["status"], output=waited["output"], error=waited["error"])
        if waited["reason"] == "signal" and waited["signal"] is not None:
            receipt += 1
            timeout = _seconds_until(waited["until"], SIGNAL_WAIT_SECONDS)
            message = await DBOS.recv_async(topic=waited["signal"], timeout_seconds=timeout)
            if message is not None:  # None: the wait timed out; advancing raises SignalTimeout in the handler
                payload, signal_id = _envelope(message, run_id, receipt)
                await _deliver(run_id, waited["signal"], payload, signal_id)
        else:  # a durable timer or a retry's backoff
            await DBOS.sleep_async(_seconds_until(waited["until"], MIN_WAIT_SECONDS))


class PhaseledgerDBOS:
    """Start phaseledger runs as DBOS workflows, signal them and read their results.

    Create it once per process, before ``DBOS.launch()``, with the engine the DBOS
    workflow drives (the workflow is registered with DBOS when this module is imported,
    the engine is bound here, the latest one winning). With ``queue`` (a DBOS queue, or
    its name, registered once DBOS is launched, e.g. ``await DBOS.register_queue_async("runs",
    global_concurrency=4)``) runs are enqueued on it, so its concurrency and rate limits
    apply across processes; without, each starts at once.
    """

    def __init__(self, engine: Engine, queue: Queue | str | None = None) -> None:
        self.engine = engine
        self.queue = queue
        _bound.append(engine)

    def close(self) -> None:
        """Unbind the engine (DBOS workflows of this process then find none, or the previous one)."""
        if self.engine in _bound:
            _bound.remove(self.engine)

    async def start(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                    *, run_id: str | None = None) -> Run:
        """Record a run in phaseledger and start (or enqueue) its DBOS workflow; return the run's view.

        Idempotent per ``run_id``, like DBOS workflow ids: starting the same run again with
        the same workflow and input returns it and starts no second DBOS workflow.
        """
        run = await self.engine.start(workflow, input, run_id=run_id, if_exists="return")
        await self.dispatch(run.run_id)
        return run

    async def dispatch(self, run_id: str) -> None:
        """Start (or enqueue) the DBOS workflow of a run already in the store (none if it exists)."""
        queue = self.queue
        if isinstance(queue, str):
            found = await DBOS.retrieve_queue_async(queue)
            if found is None:
                raise DispatchError(f"no DBOS queue is named {queue!r}: register it with DBOS.register_queue first")
            queue = found
        with SetWorkflowID(run_id):
            if queue is not None:
                await queue.enqueue_async(run_workflow, run_id)
            else:
                await DBOS.start_workflow_async(run_workflow, run_id)

    async def send_signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> Run:
        """Signal a run: append it to phaseledger, and wake its DBOS workflow with a message.

        Both carry the same signal id (``signal_id`` or a new one), so the workflow's
        delivery of the message appends nothing more; sending again with the same
        ``signal_id`` is a no-op. Raises what :meth:`phaseledger.Engine.signal` raises
        (``RunFinished``, ``InvalidInput``) before anything reaches DBOS.
        """
        signal_id = signal_id or f"dbos-{uuid.uuid4().hex}"
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        view = await self.engine.signal(run_id, name, payload, signal_id=signal_id)
        await DBOS.send_async(run_id, {"signal_id": signal_id, "payload": payload}, topic=name,
                              idempotency_key=signal_id)
        return view

    async def result(self, run_id: str) -> Run:
        """Wait for the run's DBOS workflow to end, then return the run's view from the store."""
        handle: WorkflowHandleAsync[Outcome] = await DBOS.retrieve_workflow_async(run_id)
        await handle.get_result()
        return await self.engine.get_async(run_id)
