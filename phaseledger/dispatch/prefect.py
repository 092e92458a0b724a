"""Phaseledger runs dispatched on Prefect: one Prefect flow run per run, one task per advance.

For a team already running Prefect: each phaseledger run gets a run of the flow
``phaseledger-run`` named after the run id (so ``prefect flow-run ls``, the UI's search
and a filter on the name find it), tagged ``phaseledger`` and ``workflow:<name>``. The
flow loops on :meth:`phaseledger.Engine.advance`, each call one Prefect task
(``phaseledger-advance``, retried while another driver holds the run or the store is out
for now): a finished run ends the flow run (``Completed`` with the run's outcome,
``Failed`` or ``Cancelled`` with the run's error), otherwise the flow waits in place for
what the run waits for, then advances again.

How the flow waits, and why: the flow run stays ``Running`` and its coroutine sleeps,
polling every ``poll_seconds`` until the run's wake or retry time, a signal's deadline, a
change to the run's log (a signal sent with :meth:`phaseledger.Engine.signal` or
:meth:`PhaseledgerPrefect.send_signal`, a cancel), or a Prefect flow run input carrying a
signal (:func:`send_signal_input`, i.e. Prefect's ``send_input`` under the key prefix
:data:`INPUT_KEY_PREFIX`), which the ``phaseledger-signal`` task appends to the run's log
once (its signal id is the sender's, or one derived from the input's key). Prefect's
``suspend_flow_run`` would free the worker, but a suspended flow run comes back only when
someone resumes it, and its timeout *fails* it; Prefect has no "resume at time T". So a
waiting run holds one coroutine in one flow-run process, and its time is kept exactly
(no rescheduling delay, nothing to measure but the poll interval). Runs that wait for days
are better served by the native worker fleet or Temporal, where a wait costs no process.

The phaseledger store stays the source of truth; Prefect only schedules and shows. A flow
run whose process dies (SIGKILL, OOM, a lost node) is marked ``Crashed`` by the Prefect
worker or ``serve`` process that started it; retrying it (:meth:`PhaseledgerPrefect.retry`,
or the UI's retry) runs the flow again in a new process, which resumes the phaseledger run
from its log, so no recorded step runs again.

Deployments run each flow run in a process of their own that imports this module, not
yours: that process finds the engine through the flow's ``engine`` parameter, an import
path ``"package.module:attribute"`` naming an :class:`~phaseledger.Engine` (or a function
returning one), like an ASGI app path. In one process, :class:`PhaseledgerPrefect` binds
its engine and the flow runs in the event loop that created it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from pydantic import BaseModel

from phaseledger.dispatch.errors import DispatchError, DispatcherUnavailable
from phaseledger.domain.errors import InvalidInput, RunBusy, RunFinished, StoreUnavailable
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine
from phaseledger.engine.views import Run

try:
    from prefect import flow, get_client, get_run_logger, tags, task
    from prefect.cache_policies import NO_CACHE
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.objects import FlowRun, FlowRunInput, StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.context import FlowRunContext
    from prefect.deployments import arun_deployment
    from prefect.input import RunInput
    from prefect.input.actions import afilter_flow_run_input
    from prefect.input.run_input import asend_input
    from prefect.states import AwaitingRetry, Cancelled, Completed, Failed, State
except ImportError as exc:  # the extra is missing: say which one to install
    raise DispatcherUnavailable("Prefect", "prefect", "prefect") from exc

if TYPE_CHECKING:
    from prefect.client.schemas.objects import TaskRun
    from prefect.tasks import Task

__all__ = [
    "ADVANCE_TASK",
    "FLOW_NAME",
    "INPUT_KEY_PREFIX",
    "SIGNAL_TASK",
    "Outcome",
    "PhaseledgerPrefect",
    "SignalInput",
    "Waited",
    "phaseledger_run",
    "resolve_engine",
    "send_signal_input",
]

FLOW_NAME = "phaseledger-run"
"""The Prefect flow that drives one phaseledger run (its flow runs are named by run id)."""
ADVANCE_TASK = "phaseledger-advance"
"""The Prefect task that calls ``engine.advance``."""
SIGNAL_TASK = "phaseledger-signal"
"""The Prefect task that appends a signal received as a Prefect flow run input."""
INPUT_KEY_PREFIX = "phaseledger-signal"
"""The key prefix of the flow run inputs that carry phaseledger signals (see :func:`send_signal_input`)."""
TAG = "phaseledger"
"""The tag of every phaseledger flow run (with ``workflow:<name>``)."""

TERMINAL = frozenset({StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED})


class Waited(TypedDict):
    """What one advance task returned: the run's wait, as plain JSON."""

    status: str
    finished: bool
    reason: str | None
    signal: str | None
    until: str | None
    """ISO-8601 time the run is due again without a signal; None when only a signal wakes it."""
    version: int
    """The length of the run's log after the advance: a longer log means something arrived."""
    output: Any
    error: dict[str, Any] | None


class Outcome(TypedDict):
    """What the flow of a completed run returns."""

    run_id: str
    status: str
    output: Any


class SignalInput(RunInput):
    """A phaseledger signal sent to a flow run as a Prefect flow run input."""

    name: str
    payload: Any = None
    signal_id: str | None = None
    """The signal's id (sending it again appends nothing); default: one derived from the input's key."""


# -- the engine a flow run drives ---------------------------------------------------------

_bound: list[Engine] = []
"""Engines bound by :class:`PhaseledgerPrefect` in this process (the latest one wins)."""
_imported: dict[str, Engine] = {}


def resolve_engine(ref: str | None) -> Engine:
    """The engine a flow run drives: the one at import path ``ref``, else the one bound here."""
    if ref is None:
        if not _bound:
            raise DispatchError(
                "no phaseledger engine for this Prefect flow run: create PhaseledgerPrefect(engine) in this "
                "process, or give the flow an engine import path (engine='package.module:engine')"
            )
        return _bound[-1]
    if ref not in _imported:
        module, _, attribute = ref.partition(":")
        if not module or not attribute:
            raise DispatchError(f"engine={ref!r} is not an import path like 'package.module:engine'")
        found: Any = getattr(importlib.import_module(module), attribute)
        if not isinstance(found, Engine) and callable(found):
            found = found()
        if not isinstance(found, Engine):
            raise DispatchError(f"engine={ref!r} names a {type(found).__name__}, not an Engine or a function "
                                "returning one")
        _imported[ref] = found
    return _imported[ref]


# -- the tasks and the flow ---------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    """Whether waiting may help: another driver still holds the run, or the store is out for now."""
    return isinstance(exc, RunBusy) or (isinstance(exc, StoreUnavailable) and exc.transient)


def _retry_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    return isinstance(state.data, BaseException) and _transient(state.data)


@task(name=ADVANCE_TASK, task_run_name="advance {run_id}", cache_policy=NO_CACHE, persist_result=False,
      retries=8, retry_delay_seconds=[0.5, 1, 2, 4, 8, 15, 30, 30], retry_condition_fn=_retry_transient)
async def advance_task(run_id: str, engine: str | None = None) -> Waited:
    """One Prefect task: drive the run until it finishes or must wait; say what it waits for."""
    wait = await resolve_engine(engine).advance(run_id)
    run = wait.run
    dumped = run.model_dump(mode="json", include={"output", "error"})
    return Waited(status=run.status, finished=wait.finished, reason=wait.reason, signal=wait.signal,
                  until=wait.until.isoformat() if wait.until else None, version=run.version,
                  output=dumped.get("output"), error=dumped.get("error"))


@task(name=SIGNAL_TASK, task_run_name="signal {name} to {run_id}", cache_policy=NO_CACHE, persist_result=False,
      retries=8, retry_delay_seconds=[0.5, 1, 2, 4, 8, 15, 30, 30], retry_condition_fn=_retry_transient)
async def signal_task(run_id: str, name: str, payload: Any, signal_id: str, engine: str | None = None) -> bool:
    """One Prefect task: append a signal to the run's log once (its id makes it idempotent).

    False when the run refused it for good (an invalid payload, name or id: logged and
    dropped) or had finished meanwhile (the next advance returns its outcome).
    """
    try:
        await resolve_engine(engine).signal(run_id, name, payload, signal_id=signal_id)
    except RunFinished:
        return False
    except InvalidInput as refused:
        get_run_logger().warning("phaseledger signal %r to run %s dropped: %s", name, run_id, refused)
        return False
    return True


def _carried(key: str, value: Any) -> tuple[str, Any, str] | None:
    """The (name, payload, signal id) a flow run input carries, or None if it carries no signal."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, Mapping) and set(value) == {"value"}:  # sent as a plain value (Prefect wraps it)
        value = value["value"]
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str):
        return None
    return value["name"], value.get("payload"), str(value.get("signal_id") or f"prefect:{key}")


async def _deliver_inputs(run_id: str, engine: str | None, flow_run_id: uuid.UUID, seen: set[str]) -> bool:
    """Append the signals sent as flow run inputs since the last look; True if any arrived."""
    found: list[FlowRunInput] = await afilter_flow_run_input(
        key_prefix=INPUT_KEY_PREFIX, limit=100, exclude_keys=set(seen), flow_run_id=flow_run_id
    )
    arrived = False
    for flow_run_input in sorted(found, key=lambda i: (i.created or datetime.min.replace(tzinfo=UTC), i.key)):
        seen.add(flow_run_input.key)
        carried = _carried(flow_run_input.key, flow_run_input.value)
        if carried is None:
            get_run_logger().warning("flow run input %r carries no phaseledger signal: ignored", flow_run_input.key)
            continue
        name, payload, signal_id = carried
        await signal_task(run_id, name, payload, signal_id, engine)
        arrived = True
    return arrived


async def _wait(run_id: str, engine: str | None, waited: Waited, seen: set[str], poll_seconds: float) -> None:
    """Return once the run is due: its time came, a signal input was delivered, or its log grew."""
    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context is not None and context.flow_run is not None else None
    until = datetime.fromisoformat(waited["until"]) if waited["until"] else None
    while True:
        if flow_run_id is not None and await _deliver_inputs(run_id, engine, flow_run_id, seen):
            return
        if (await resolve_engine(engine).get_async(run_id)).version != waited["version"]:
            return  # a signal, or a cancel, was appended by someone else
        pause = poll_seconds
        if until is not None:
            left = (until - datetime.now(UTC)).total_seconds()
            if left <= 0:
                return
            pause = min(pause, left)
        await asyncio.sleep(pause)


@flow(name=FLOW_NAME, flow_run_name="{run_id}", persist_result=False, validate_parameters=True)
async def phaseledger_run(run_id: str, engine: str | None = None, poll_seconds: float = 1.0) -> Any:
    """The Prefect flow of one phaseledger run: advance it until it finishes, waiting in between.

    ``engine`` is the import path of the engine to drive it with (None: the engine bound in
    this process by :class:`PhaseledgerPrefect`); ``poll_seconds`` how often a waiting run
    looks for signals.
    """
    seen: set[str] = set()
    while True:
        waited = await advance_task(run_id, engine)
        if waited["finished"]:
            return _final_state(run_id, waited)
        await _wait(run_id, engine, waited, seen, poll_seconds)


def _final_state(run_id: str, waited: Waited) -> State[Any]:
    status = waited["status"]
    if status == "completed":
        return Completed(data=Outcome(run_id=run_id, status=status, output=waited["output"]),
                         message=f"phaseledger run {run_id} completed")
    error = waited["error"] or {}
    message = f"phaseledger run {run_id} {status}: {error.get('message') or error.get('type') or status}"
    return Cancelled(message=message) if status == "cancelled" else Failed(message=message)


# -- starting, signalling and retrying runs -----------------------------------------------


async def send_signal_input(flow_run_id: uuid.UUID, name: str, payload: Any = None, *,
                            signal_id: str | None = None) -> None:
    """Send a phaseledger signal to a flow run the Prefect way: a flow run input the flow delivers once.

    Equivalent to ``send_input(SignalInput(name=..., payload=...), flow_run_id,
    key_prefix=INPUT_KEY_PREFIX)``; without ``signal_id`` the signal id is derived from the
    input's key, so each input is appended once, even by a flow run retried after a crash.
    """
    await asend_input(SignalInput(name=name, payload=payload, signal_id=signal_id), flow_run_id,
                     key_prefix=INPUT_KEY_PREFIX)


class PhaseledgerPrefect:
    """Start phaseledger runs as Prefect flow runs, signal them, retry them and read their results.

    Without ``deployment`` a run's flow runs in this process, as a task of the running
    event loop. With ``deployment`` (``"phaseledger-run/<deployment name>"``, served by
    ``phaseledger_run.serve(...)`` or a worker of a work pool) a flow run of it is created,
    and the worker runs it in a process of its own, which finds the engine through
    ``engine_ref`` (an import path, see :func:`resolve_engine`; required with a deployment).
    """

    def __init__(self, engine: Engine, *, deployment: str | None = None, engine_ref: str | None = None,
                 poll_seconds: float = 1.0) -> None:
        if deployment is not None and engine_ref is None:
            raise DispatchError("a Prefect deployment runs flows in other processes: give engine_ref, the "
                                "import path of the engine there (e.g. engine_ref='orders.app:engine')")
        self.engine = engine
        self.deployment = deployment
        self.engine_ref = engine_ref
        self.poll_seconds = poll_seconds
        self._local: dict[str, asyncio.Task[Any]] = {}
        _bound.append(engine)

    def close(self) -> None:
        """Unbind the engine (flow runs of this process without an engine path then find none, or the previous)."""
        if self.engine in _bound:
            _bound.remove(self.engine)

    async def start(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                    *, run_id: str | None = None, scheduled_time: datetime | None = None) -> Run:
        """Record a run in phaseledger and start its Prefect flow run; return the run's view.

        Idempotent per ``run_id``: starting the same run again with the same workflow and
        input returns it, and starts no second flow run while one is under way. With a
        deployment, ``scheduled_time`` schedules the flow run for then: the run is recorded
        now and driven from then on.
        """
        run = await self.engine.start(workflow, input, run_id=run_id, if_exists="return")
        await self.dispatch(run.run_id, scheduled_time=scheduled_time)
        return run

    async def dispatch(self, run_id: str, *, scheduled_time: datetime | None = None) -> None:
        """Start (or schedule, with a deployment) the Prefect flow run of a run already in the store.

        None is started while one is under way (in this process, or of the deployment), nor
        for a finished run that has a flow run already.
        """
        if scheduled_time is not None and self.deployment is None:
            raise DispatchError("scheduled_time needs a deployment: a flow run in this process starts at once")
        run = await self.engine.get_async(run_id)
        if run.finished and await self.flow_run(run_id) is not None:
            return
        run_tags = [TAG, f"workflow:{run.workflow}"]
        parameters: dict[str, Any] = {"run_id": run_id, "engine": self.engine_ref, "poll_seconds": self.poll_seconds}
        if self.deployment is not None:
            current = await self.flow_run(run_id)
            if current is not None and current.state_type not in TERMINAL:
                return
            await arun_deployment(self.deployment, parameters=parameters, tags=run_tags, timeout=0,
                                  as_subflow=False, flow_run_name=run_id, scheduled_time=scheduled_time)
            return
        local = self._local.get(run_id)
        if local is not None and not local.done():
            return
        with tags(*run_tags):  # copied into the task's context with the rest of it
            self._local[run_id] = asyncio.ensure_future(phaseledger_run(**parameters, return_state=True))

    async def flow_run(self, run_id: str) -> FlowRun | None:
        """The latest Prefect flow run of a run (flow ``phaseledger-run``, named by the run id), if any."""
        async with get_client() as client:
            found = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1,
            )
        return found[0] if found else None

    async def send_signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> Run:
        """Signal a run: append it to the run's log; its waiting flow run sees the log grow and advances.

        The same as :meth:`phaseledger.Engine.signal` (sending again with the same
        ``signal_id`` is a no-op); raises what it raises (``RunFinished``, ``InvalidInput``).
        """
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        return await self.engine.signal(run_id, name, payload, signal_id=signal_id or f"prefect-{uuid.uuid4().hex}")

    async def retry(self, run_id: str) -> None:
        """Run a crashed or failed flow run of a deployment again (what the UI's retry does).

        Its state becomes ``AwaitingRetry``; the deployment's worker starts it in a new
        process, which resumes the phaseledger run from its log.
        """
        current = await self.flow_run(run_id)
        if current is None:
            raise DispatchError(f"run {run_id!r} has no Prefect flow run to retry")
        if current.state_type not in TERMINAL - {StateType.COMPLETED}:
            raise DispatchError(f"the Prefect flow run of {run_id!r} is {current.state_name}, not crashed or failed")
        async with get_client() as client:
            await client.set_flow_run_state(current.id, AwaitingRetry(scheduled_time=datetime.now(UTC)), force=True)

    async def result(self, run_id: str, poll_seconds: float = 0.2) -> Run:
        """Wait for the run's flow run to end, then return the run's view from the store."""
        local = self._local.get(run_id)
        if local is not None:
            await asyncio.shield(local)
        else:
            while True:
                current = await self.flow_run(run_id)
                if current is not None and current.state_type in TERMINAL:
                    break
                await asyncio.sleep(poll_seconds)
        return await self.engine.get_async(run_id)
