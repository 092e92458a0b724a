"""The engine: starts, drives, resumes, signals and cancels runs on one store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from phaseledger.domain.errors import (
    ConcurrencyConflict,
    InvalidInput,
    PhaseledgerError,
    RunExists,
    RunFinished,
)
from phaseledger.domain.retry import NO_RETRY, RetryPolicy
from phaseledger.domain.run import FAILED, RUNNING, SLEEPING, RETRYING, WAITING, WorkflowRun
from phaseledger.domain.values import validate_payload
from phaseledger.domain.workflow import Workflow, WorkflowRegistry
from phaseledger.engine.breaker import CircuitBreaker
from phaseledger.engine.driver import RunDriver
from phaseledger.engine.store import Store
from phaseledger.engine.views import RecordedEvent, Run, event_view, run_view

if TYPE_CHECKING:
    from phaseledger.projections.reports import Reports

T = TypeVar("T")
CheckpointCallback = Callable[[str, str], Any]
ResumeCallback = Callable[[str, str], Any]


class Engine:
    """Runs workflows on an event store.

    ``store`` is a URL (``memory://``, ``sqlite:///path.db``, ``postgresql://...``; default
    ``$PHASELEDGER_STORE``, then ``sqlite:///phaseledger.db``) or a :class:`Store` to share.
    Many runs can progress concurrently on one asyncio loop.
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        workflows: Iterable[Workflow[Any]] = (),
        snapshot_every: int | None = 100,
        checkpoint_every_n_steps: int = 1,
        retry: RetryPolicy | None = None,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        max_inline_wait: float = 30.0,
        on_checkpoint: CheckpointCallback | None = None,
        on_resume: ResumeCallback | None = None,
    ) -> None:
        if checkpoint_every_n_steps < 1:
            raise PhaseledgerError("checkpoint_every_n_steps must be >= 1")
        self.store = store if isinstance(store, Store) else Store(store, snapshot_every=snapshot_every)
        self.registry = WorkflowRegistry()
        for workflow in workflows:
            self.registry.register(workflow)
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.retry_policy = retry or NO_RETRY
        """The default retry policy of steps (a step's, phase's or workflow's policy wins)."""
        self._breakers: dict[str, CircuitBreaker] = dict(breakers or {})
        self.max_inline_wait = max_inline_wait
        """Waits (retry backoff, sleeps) longer than this suspend the run instead of blocking."""
        self.on_checkpoint = on_checkpoint
        self.on_resume = on_resume
        self._active: dict[str, asyncio.Task[Run]] = {}
        self.event_observer: Callable[[WorkflowRun], None] | None = None
        """Testing hook: called with the run after each event a driver records."""

    # -- plumbing ----------------------------------------------------------------------

    async def _call_store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.store.is_memory:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    def register(self, workflow: Workflow[Any]) -> None:
        """Register a workflow version (checked now: :class:`WorkflowDefinitionError` if invalid)."""
        self.registry.register(workflow)

    def breaker(self, name: str) -> CircuitBreaker:
        """The engine's circuit breaker of this name (created with defaults on first use)."""
        if name not in self._breakers:
            self._breakers[name] = CircuitBreaker(name=name)
        return self._breakers[name]

    def _notify_checkpoint(self, run: WorkflowRun, label: str) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(run.id, label)

    def _workflow_of(self, run: WorkflowRun) -> Workflow[Any]:
        return self.registry.get(run.workflow, run.workflow_version)

    @property
    def reports(self) -> Reports:
        """Report read models of this engine's store, built on first use (see :mod:`phaseledger.projections`)."""
        reports = self.__dict__.get("_reports")
        if reports is None:
            from phaseledger.projections.reports import Reports

            reports = self._reports = Reports(self.store)
        return reports

    def close(self) -> None:
        """Stop the reports' follower, if any, and close the store's connections."""
        reports = self.__dict__.get("_reports")
        if reports is not None:
            reports.close()
        self.store.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- starting and driving ----------------------------------------------------------

    async def start(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                    *, run_id: str | None = None) -> Run:
        """Record a new run of ``workflow`` (without driving it); raise :class:`RunExists` on a taken id."""
        if workflow.key not in self.registry.workflows:
            self.register(workflow)
        try:
            if isinstance(input, workflow.state_model):
                state = input
            else:
                state = workflow.state_model.model_validate(dict(input or {}))
        except (ValidationError, TypeError) as exc:
            raise InvalidInput(f"the input of workflow {workflow.name!r} is invalid: {exc}") from exc
        data = validate_payload(workflow.state_model, state, f"the input of workflow {workflow.name!r}")
        run_id = run_id or str(uuid.uuid4())
        run = WorkflowRun._create(
            WorkflowRun.RunStarted, id=run_id, workflow=workflow.name, workflow_version=workflow.version,
            input=data, parent=None,
        )
        run.trigger_event(
            WorkflowRun.PhaseEntered, phase=workflow.initial_phase, from_phase=None, reason="start",
            attempt=1, state=data,
        )
        try:
            await self._call_store(self.store.save, run)
        except ConcurrencyConflict:
            raise RunExists(run_id) from None
        return run_view(run, workflow.state_model)

    async def run(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                  *, run_id: str | None = None) -> Run:
        """Start a run and drive it until it completes, fails or suspends; return its view."""
        started = await self.start(workflow, input, run_id=run_id)
        return await self._drive(started.run_id)

    async def resume(self, run_id: str, *, reason: str | None = None) -> Run:
        """Drive an existing run from its log: replay the current phase, then continue live.

        A suspended run that is not due yet (no signal, wake time not reached) is left as it
        is. Raises :class:`RunNotFound`, :class:`RunFinished` or :class:`UnknownWorkflow`.
        """
        if run_id in self._active:
            return await asyncio.shield(self._active[run_id])
        run = await self._call_store(self.store.load, run_id)
        if run.finished:
            raise RunFinished(run_id, run.status, "resume")
        workflow = self._workflow_of(run)
        if not is_due(run):
            return run_view(run, workflow.state_model)
        why = reason or {RUNNING: "recover", WAITING: "signal", SLEEPING: "timer", RETRYING: "retry_due"}[run.status]
        # Not saved yet: the driver commits it before anything runs live (the claim that makes
        # a second resumer conflict), so a replay that meets NonDeterminismError appends nothing.
        run.trigger_event(WorkflowRun.RunResumed, reason=why)
        if self.on_resume is not None:
            self.on_resume(run_id, why)
        return await self._drive(run_id, run)

    async def retry(self, run_id: str) -> Run:
        """Re-enter the failed phase of a failed run, keeping the steps it recorded."""
        run = await self._call_store(self.store.load, run_id)
        if run.status != FAILED:
            if run.finished:
                raise RunFinished(run_id, run.status, "retry")
            raise PhaseledgerError(f"run {run_id!r} is {run.status}, not failed: use engine.resume({run_id!r})")
        self._workflow_of(run)
        run.trigger_event(WorkflowRun.RunResumed, reason="retry")  # committed by the driver, as in resume()
        if self.on_resume is not None:
            self.on_resume(run_id, "retry")
        return await self._drive(run_id, run)

    async def _append(self, run: WorkflowRun, event_class: type[WorkflowRun.Event], **fields: Any) -> None:
        run.trigger_event(event_class, **fields)
        await self._call_store(self.store.save, run)

    async def _drive(self, run_id: str, run: WorkflowRun | None = None) -> Run:
        if run_id in self._active:
            return await asyncio.shield(self._active[run_id])
        task = asyncio.ensure_future(self._drive_once(run_id, run))
        self._active[run_id] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._active.pop(run_id, None)
            else:
                task.add_done_callback(lambda _: self._active.pop(run_id, None))

    async def _drive_once(self, run_id: str, run: WorkflowRun | None) -> Run:
        if run is None:
            run = await self._call_store(self.store.load, run_id)
        workflow = self._workflow_of(run)
        driver = RunDriver(self, run, workflow)
        await driver.drive()
        return run_view(driver.run, workflow.state_model)

    # -- signals and cancellation --------------------------------------------------------

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> Run:
        """Append a ``name`` signal to a run; a run waiting for it becomes runnable.

        The payload is validated against the workflow's declared model for ``name`` (an
        :class:`InvalidInput` appends nothing). ``signal_id`` makes sending idempotent.
        """
        for _ in range(20):
            run = await self._call_store(self.store.load, run_id)
            if run.finished:
                raise RunFinished(run_id, run.status, f"signal {name!r} to")
            workflow = self._workflow_of(run)
            data = validate_payload(workflow.signals.get(name), payload, f"the payload of signal {name!r}")
            if signal_id is not None and _signal_seen(run, signal_id):
                return run_view(run, workflow.state_model)
            try:
                await self._append(run, WorkflowRun.SignalReceived, signal_id=signal_id or str(uuid.uuid4()),
                                   name=name, payload=data)
            except ConcurrencyConflict:
                await asyncio.sleep(0.005)
                continue
            return run_view(run, workflow.state_model)
        raise ConcurrencyConflict(run_id)

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Run:
        """Cancel a run: it stops at its next journal boundary and never resumes."""
        for _ in range(20):
            run = await self._call_store(self.store.load, run_id)
            if run.finished:
                raise RunFinished(run_id, run.status, "cancel")
            try:
                await self._append(run, WorkflowRun.RunCancelled, reason=reason)
            except ConcurrencyConflict:
                await asyncio.sleep(0.005)
                continue
            return self._view(run)
        raise ConcurrencyConflict(run_id)

    # -- queries -----------------------------------------------------------------------

    def get(self, run_id: str, *, version: int | None = None) -> Run:
        """The run as it stands in the log (or as it stood at ``version``)."""
        return self._view(self.store.load(run_id, version=version))

    def _view(self, run: WorkflowRun) -> Run:
        workflow = self.registry.workflows.get((run.workflow, run.workflow_version))
        return run_view(run, workflow.state_model if workflow else None)

    def history(self, run_id: str) -> list[RecordedEvent]:
        """The run's events in order, as plain data."""
        return [event_view(e) for e in self.store.events(run_id)]

    def runs(self, *, status: str | None = None, workflow: str | None = None) -> list[Run]:
        """Every run in the store (optionally only those with this status or workflow)."""
        views = []
        for run_id in self.store.run_ids():
            view = self.get(run_id)
            if (status is None or view.status == status) and (workflow is None or view.workflow == workflow):
                views.append(view)
        return views


def is_due(run: WorkflowRun, now: datetime | None = None) -> bool:
    """Whether a run should be driven now: running, or suspended and woken (signal or time)."""
    if run.status == RUNNING:
        return True
    if run.finished or not run.suspended:
        return False
    now = now or datetime.now(timezone.utc)
    until = run.suspended.get("until")
    if until is not None and now >= until:
        return True
    signal = run.suspended.get("signal")
    return run.status == WAITING and any(s["name"] == signal for s in run.inbox)


def _signal_seen(run: WorkflowRun, signal_id: str) -> bool:
    if any(s["signal_id"] == signal_id for s in run.inbox):
        return True
    return any((e.get("detail") or {}).get("signal_id") == signal_id for e in run.journal.values())
