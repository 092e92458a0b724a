"""The engine: starts, drives, resumes, signals and cancels runs on one store."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from phaseledger.domain.effects import DECISION_PREFIX, decision_payload, decision_signal
from phaseledger.domain.errors import (
    ConcurrencyConflict,
    CorruptEvent,
    InvalidInput,
    PhaseledgerError,
    RunExists,
    RunFinished,
)
from phaseledger.domain.ids import validate_id, validate_run_id
from phaseledger.domain.retry import NO_RETRY, RetryPolicy
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.schedule import is_due
from phaseledger.domain.status import FAILED, RETRYING, RUNNING, SLEEPING, WAITING
from phaseledger.domain.values import validate_payload
from phaseledger.domain.workflow import Workflow, WorkflowRegistry
from phaseledger.engine.advance import RunWait
from phaseledger.engine.breaker import CircuitBreaker
from phaseledger.engine.drives import Drives
from phaseledger.engine.hooks import RunCallback, RunHooks
from phaseledger.engine.stops import Cancelled
from phaseledger.engine.telemetry import Tracing, tracing_from_env
from phaseledger.engine.views import RecordedEvent, Run, damaged_view, event_view, run_view
from phaseledger.history.compare import RunComparison, compare_runs
from phaseledger.history.retention import CompactionReport, Retention, RetentionPolicy, RetentionReport
from phaseledger.history.timetravel import Checkpoint, Lineage, RunAt, TimeTravel
from phaseledger.history.tokens import looks_like_token, resolve_key
from phaseledger.store.cipher import CipherKeys, parse_cipher_keys
from phaseledger.store.eventstore import Store
from phaseledger.store.faults import JITTER, Outage
from phaseledger.store.leasebook import DriverId

if TYPE_CHECKING:
    from phaseledger.projections.reports import Reports
    from phaseledger.workers.worker import Worker

T = TypeVar("T")
IfExists = Literal["raise", "return"]
CheckpointCallback = RunCallback
ResumeCallback = RunCallback


class Engine:
    """Runs workflows on an event store.

    ``store`` is a URL (``memory://``, ``sqlite:///path.db``, ``postgresql://...``; default
    ``$PHASELEDGER_STORE``, then ``sqlite:///phaseledger.db``) or a :class:`Store` to share.
    Many runs can progress concurrently on one asyncio loop.

    ``cipher_key`` encrypts what the store keeps (default ``$PHASELEDGER_CIPHER_KEY``; a list,
    or keys separated by commas, rotates keys: the first encrypts, all decrypt) and
    ``compress=True`` compresses it (default ``$PHASELEDGER_COMPRESS``); see
    docs/encryption.md. Given a :class:`Store`, pass them to the store instead.

    While the store is unavailable a run's commit is retried with backoff for
    ``append_retry_seconds`` before the run gives up with :class:`StoreUnavailable`
    (resumable). ``lease_seconds`` is how long a driver's lease on a run lasts unless its
    heartbeat renews it (see :mod:`phaseledger.store.leasebook`).
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
        token_key: str | bytes | None = None,
        lease_seconds: float = 30.0,
        cipher_key: CipherKeys | None = None,
        compress: bool | None = None,
        append_retry_seconds: float = 30.0,
    ) -> None:
        if checkpoint_every_n_steps < 1:
            raise PhaseledgerError("checkpoint_every_n_steps must be >= 1")
        if lease_seconds <= 0:
            raise PhaseledgerError("lease_seconds must be > 0")
        if isinstance(store, Store):
            _check_store_settings(store, cipher_key, compress)
            self.store = store
        else:
            self.store = Store(store, snapshot_every=snapshot_every, cipher_key=cipher_key, compress=compress)
        self.registry = WorkflowRegistry()
        for workflow in workflows:
            self.registry.register(workflow)
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.retry_policy = retry or NO_RETRY
        """The default retry policy of steps (a step's, phase's or workflow's policy wins)."""
        self._breakers: dict[str, CircuitBreaker] = dict(breakers or {})
        self.max_inline_wait = max_inline_wait
        """Waits (retry backoff, sleeps) longer than this suspend the run instead of blocking."""
        self.hooks = RunHooks(self.registry, on_checkpoint, on_resume)
        """The checkpoint and resume callbacks, and who listens to this engine's appends (its workers)."""
        self.time_travel = TimeTravel(self, resolve_key(token_key))
        self.lease_seconds = float(lease_seconds)
        """How long a driver's lease on a run lasts unless renewed (every third of it, by a heartbeat)."""
        self._driver_id = DriverId.here()
        self.drives = Drives(self)
        """The drives of runs in this process, each under its lease (time travel, agents and workers use it)."""
        self.control = self.drives.control
        """The runs driven here: their tasks, leases and requests to stop (shared with workers)."""
        self.event_observer: Callable[[WorkflowRun], None] | None = None
        """Testing hook: called with the run after each event a driver records."""
        self.append_retry_seconds = float(append_retry_seconds)
        """How long a driver keeps trying to commit while the store is unavailable (see :mod:`.driver`)."""
        self.outage = Outage(logging.getLogger("phaseledger.store"), "engine")
        """Whether this engine's store is out, as its drivers and worker see it; logs outages once."""
        self.tracing = Tracing(enabled=tracing_from_env())
        """OpenTelemetry spans of the live work of this engine's drives (off until :meth:`instrument`,
        or ``$PHASELEDGER_TRACING``)."""

    # -- plumbing ----------------------------------------------------------------------

    @property
    def driver_id(self) -> DriverId:
        """How this engine names itself in the leases of the runs it drives (renewed in a forked child)."""
        if self._driver_id.pid != os.getpid():
            self._driver_id = DriverId.here()
        return self._driver_id

    def register(self, workflow: Workflow[Any]) -> None:
        """Register a workflow version (checked now: :class:`WorkflowDefinitionError` if invalid)."""
        self.registry.register(workflow)

    def instrument(self, tracer_provider: Any = None) -> None:
        """Trace the runs this engine drives with OpenTelemetry: a span per drive, per phase visit
        and per journaled call that runs live (replayed calls are not traced again).

        ``tracer_provider`` is an OpenTelemetry ``TracerProvider`` (with the exporter of your
        choice); None uses the global one. ``$PHASELEDGER_TRACING=1`` instruments every engine
        with the global provider (for the ``phaseledger`` command run under
        ``opentelemetry-instrument``, say). See :mod:`phaseledger.engine.telemetry`.
        """
        self.tracing = Tracing(tracer_provider, enabled=True)

    def breaker(self, name: str) -> CircuitBreaker:
        """The engine's circuit breaker of this name (created with defaults on first use)."""
        if name not in self._breakers:
            self._breakers[name] = CircuitBreaker(name=name)
        return self._breakers[name]

    @property
    def on_checkpoint(self) -> CheckpointCallback | None:
        """Called with ``(run_id, label)`` after each checkpoint commit (errors are logged)."""
        return self.hooks.on_checkpoint

    @on_checkpoint.setter
    def on_checkpoint(self, callback: CheckpointCallback | None) -> None:
        self.hooks.on_checkpoint = callback

    @property
    def on_resume(self) -> ResumeCallback | None:
        """Called with ``(run_id, reason)`` when a run is taken up again (errors are logged)."""
        return self.hooks.on_resume

    @on_resume.setter
    def on_resume(self, callback: ResumeCallback | None) -> None:
        self.hooks.on_resume = callback

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
        self.drives.close()
        self.store.close()

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drives.stop_all()
        self.close()

    # -- starting and driving ----------------------------------------------------------

    async def start(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                    *, run_id: str | None = None, if_exists: IfExists = "raise") -> Run:
        """Record a new run of ``workflow`` (without driving it) and return its view.

        A taken ``run_id`` raises :class:`RunExists`; with ``if_exists="return"`` starting is
        idempotent (as with DBOS workflow ids): the existing run's view is returned when it
        was started with the same workflow and input, and :class:`RunExists` says how they
        differ otherwise.
        """
        return (await self._start(workflow, input, run_id, if_exists))[0]

    async def _start(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None,
                     run_id: str | None, if_exists: IfExists) -> tuple[Run, bool]:
        """:meth:`start`; the flag says whether the run existed already."""
        if run_id is not None:
            validate_run_id(run_id)
        if if_exists not in ("raise", "return"):
            raise InvalidInput(f"if_exists must be 'raise' or 'return', got {if_exists!r}")
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
        run = WorkflowRun.begin(
            run_id, workflow=workflow.name, workflow_version=workflow.version,
            input=data, parent=None,
        )
        run.trigger_event(
            WorkflowRun.PhaseEntered, phase=workflow.initial_phase, from_phase=None, reason="start",
            attempt=1, state=data,
        )
        try:
            await self.store.call(self.store.save, run)
        except ConcurrencyConflict:
            if if_exists == "raise":
                raise RunExists(run_id) from None
            existing = await self.store.call(self.store.load, run_id)
            if (existing.workflow, existing.input) != (workflow.name, data):
                raise RunExists(run_id, "with another workflow or input than this start asks for") from None
            return self._view(existing), True
        self.hooks.appended()
        return run_view(run, workflow.state_model), False

    async def run(self, workflow: Workflow[Any], input: BaseModel | Mapping[str, Any] | None = None,
                  *, run_id: str | None = None, if_exists: IfExists = "raise") -> Run:
        """Start a run and drive it until it completes, fails or suspends; return its view.

        The run's lease is taken before its first event is written, so no worker picks the
        new run up meanwhile. With ``if_exists="return"`` a run that exists already with the
        same workflow and input is returned when finished and resumed otherwise, so a
        script that runs ``engine.run(..., run_id="report-2026-12")`` can simply run again.
        """
        run_id = validate_run_id(run_id) if run_id is not None else str(uuid.uuid4())
        await self.drives.take(run_id, steal=False)
        try:
            view, existed = await self._start(workflow, input, run_id, if_exists)
        except BaseException:
            await self.drives.let_go(run_id, 0)
            raise
        if existed:
            if view.finished:
                await self.drives.let_go(run_id, view.version)
                return view
            return await self.resume(run_id)
        return await self.drives.drive(run_id)

    async def resume(self, run_id: str, *, reason: str | None = None, steal: bool = False) -> Run:
        """Drive an existing run from its log: replay the current phase, then continue live.

        A suspended run that is not due yet (no signal, wake time not reached) is left as it
        is. Raises :class:`RunNotFound`, :class:`RunFinished` or :class:`UnknownWorkflow`.
        ``run_id`` may be a resume token (``engine.resume_token``): it is verified first and
        a forged, edited, truncated or foreign one raises :class:`InvalidToken`.

        Raises :class:`RunBusy` while another live process drives the run (its lease is
        held and renewed). ``steal=True`` takes the run over anyway: the other driver stops
        at its next journal boundary with :class:`LeaseLost`, and the step it was running
        then may run twice (at-least-once, with the same idempotency key).
        """
        if looks_like_token(run_id):
            run_id = await self.store.call(self.time_travel.run_id_of, run_id)
        validate_run_id(run_id)
        if run_id in self.control.active:
            return await asyncio.shield(self.control.active[run_id])
        run = await self.drives.take_and_load(run_id, steal, _resumable)
        workflow = self._workflow_of(run)
        if not is_due(run):
            await self.drives.let_go(run_id, run.version)
            return run_view(run, workflow.state_model)
        why = reason or {RUNNING: "recover", WAITING: "signal", SLEEPING: "timer", RETRYING: "retry_due"}[run.status]
        # Not saved yet: the driver commits it before anything runs live (the claim that makes
        # a second resumer conflict), so a replay that meets NonDeterminismError appends nothing.
        run.trigger_event(WorkflowRun.RunResumed, reason=why)
        self.hooks.resumed(run, why)
        return await self.drives.drive(run_id, run)

    async def advance(self, run_id: str) -> RunWait:
        """Drive a run until it completes, fails or must wait, and say what it waits for.

        The unit every dispatcher calls (a worker, or an external engine's activity, step or
        task): a new, interrupted or woken run is driven as :meth:`resume` drives it; a run
        that is not due yet is left as it is; a finished one is not touched. The returned
        :class:`RunWait` names the signal and the time the run waits for, which is what the
        dispatcher schedules on. Raises :class:`RunBusy` while another live process drives
        the run, like :meth:`resume`.
        """
        run = await self.store.call(self.store.load, validate_run_id(run_id))
        if not run.finished:
            try:
                return RunWait.of(await self.resume(run_id))
            except RunFinished:  # finished meanwhile, by another driver
                run = await self.store.call(self.store.load, run_id)
        return RunWait.of(self._view(run))

    async def retry(self, run_id: str, *, steal: bool = False) -> Run:
        """Re-enter the failed phase of a failed run, keeping the steps it recorded.

        Takes the run's lease like :meth:`resume` (:class:`RunBusy`, ``steal``).
        """
        validate_run_id(run_id)
        if run_id in self.control.active:
            return await asyncio.shield(self.control.active[run_id])
        run = await self.drives.take_and_load(run_id, steal, _retryable)
        run.trigger_event(WorkflowRun.RunResumed, reason="retry")  # committed by the driver, as in resume()
        self.hooks.resumed(run, "retry")
        return await self.drives.drive(run_id, run)

    async def _append(self, run: WorkflowRun, event_class: type[WorkflowRun.Event], **fields: Any) -> None:
        run.trigger_event(event_class, **fields)
        await self.store.call(self.store.save, run)
        self.hooks.appended()

    # -- signals and cancellation --------------------------------------------------------

    async def signal(self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None) -> Run:
        """Append a ``name`` signal to a run; a run waiting for it becomes runnable.

        The payload is validated against the workflow's declared model for ``name`` (an
        :class:`InvalidInput` appends nothing). ``signal_id`` makes sending idempotent: a
        signal id the run has already received is not appended again. Raises
        :class:`RunFinished` for a completed, failed or cancelled run. The run id, ``name``
        and ``signal_id`` must pass :func:`~phaseledger.domain.ids.validate_id`.
        """
        validate_run_id(run_id)
        validate_id("signal name", name)
        if signal_id is not None:
            validate_id("signal id", signal_id)
        for attempt in range(_APPEND_ATTEMPTS):
            run = await self.store.call(self.store.load, run_id)
            if run.finished:
                raise RunFinished(run_id, run.status, f"signal {name!r} to")
            if name.startswith(DECISION_PREFIX):  # a decision on an effect in doubt: plain JSON, any workflow
                workflow, data = None, validate_payload(None, payload, f"the payload of signal {name!r}")
            else:
                workflow = self._workflow_of(run)
                if workflow.signals and workflow.strict_signals and name not in workflow.signals:
                    raise InvalidInput(
                        f"workflow {workflow.name!r} declares no signal {name!r}; its signals are "
                        f"{', '.join(repr(n) for n in sorted(workflow.signals))}. Check the name's spelling, or "
                        f"declare it: Workflow(..., signals={{{name!r}: None}}) takes plain JSON"
                    )
                data = validate_payload(workflow.signals.get(name), payload, f"the payload of signal {name!r}")
            if signal_id is not None and _signal_seen(run, signal_id):
                return self._view(run)
            try:
                await self._append(run, WorkflowRun.SignalReceived, signal_id=signal_id or str(uuid.uuid4()),
                                   name=name, payload=data)
            except ConcurrencyConflict:
                await _backoff(attempt)  # the run's driver committed meanwhile: reload, try again
                continue
            return self._view(run)
        raise ConcurrencyConflict(run_id)

    async def resolve(self, run_id: str, *, happened: bool, result: Any = None, key: str | None = None) -> Run:
        """Decide an effect in doubt whose policy is ``ask``: it ``happened`` (with ``result``) or not.

        Sends the decision signal the run waits for (``effect:<key>``): a run suspended on it
        becomes runnable and, when driven, records ``result`` as the step's result, or runs
        the step again with the same idempotency key. ``key`` names the step (see
        ``Run.in_doubt``); by default the one the run waits for, or its only step in doubt.
        Deciding the same intent twice delivers the first decision only. Raises
        :class:`RunFinished`, or :class:`InvalidInput` when no such step is in doubt or its
        policy is not ``ask``.
        """
        run = await self.store.call(self.store.load, validate_run_id(run_id))
        if run.finished:
            raise RunFinished(run_id, run.status, "resolve an effect of")
        waiting = run.suspended or {}
        if key is None:
            if waiting.get("reason") == "effect" and waiting.get("signal"):
                key = str(waiting["signal"])[len(DECISION_PREFIX):]
            elif len(run.intents) == 1:
                key = next(iter(run.intents))
        intent = run.intents.get(key) if key is not None else None
        if key is None or intent is None:
            known = ", ".join(f"{k!r} ({i.name})" for k, i in run.intents.items()) or "none"
            raise InvalidInput(f"run {run_id!r} has no step in doubt under key {key!r}; steps in doubt: {known}. "
                               "Pass the key of one (engine.get(run_id).in_doubt lists them)")
        if intent.policy != "ask":
            raise InvalidInput(f"step {intent.name!r} of run {run_id!r} is in doubt with policy {intent.policy!r}, "
                               "not 'ask': resuming the run applies that policy; no decision is awaited")
        signal_id = f"effect-decision:{key}:{intent.since.isoformat()}"
        return await self.signal(run_id, decision_signal(key), decision_payload(happened, result),
                                 signal_id=signal_id)

    def signal_received(self, run_id: str, signal_id: str) -> bool:
        """Whether the run has received a signal with this id (sending it again appends nothing)."""
        return _signal_seen(self.store.load(validate_run_id(run_id), journal=False), signal_id)

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Run:
        """Cancel a run: record ``RunCancelled``; the run never resumes.

        A run in the middle of a step stops at its next journal boundary: the step's result
        is not recorded and nothing runs after it, whether it is driven by this engine or
        by a worker in another process (whose next append conflicts with the cancel).
        Raises :class:`RunFinished` when the run has already finished.
        """
        validate_run_id(run_id)
        for attempt in range(_APPEND_ATTEMPTS):
            run = await self.store.call(self.store.load, run_id)
            if run.finished:
                raise RunFinished(run_id, run.status, "cancel")
            try:
                await self._append(run, WorkflowRun.RunCancelled, reason=reason)
            except ConcurrencyConflict:
                await _backoff(attempt)
                continue
            self.control.interrupt(run_id, Cancelled)
            return self._view(run)
        raise ConcurrencyConflict(run_id)

    # -- workers -----------------------------------------------------------------------

    def worker(
        self,
        *,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        error_backoff: float = 30.0,
        worker_id: str | None = None,
    ) -> Worker:
        """A worker that drives this store's runnable runs of the registered workflows.

        Runnable means new, interrupted by a crash, woken by a signal or a due timer, or due
        for a retry. ``await worker.run()`` drives up to ``concurrency`` runs at once on this
        loop until ``worker.stop()`` (or SIGTERM); ``run(until_idle=True)`` returns when no
        run is runnable now. On PostgreSQL any number of workers share the store through
        leases of ``lease_seconds``; SQLite and memory:// stores take one worker. See
        :class:`phaseledger.workers.worker.Worker` and docs/services.md.
        """
        from phaseledger.workers.worker import Worker

        return Worker(self, concurrency=concurrency, lease_seconds=lease_seconds, poll_interval=poll_interval,
                      error_backoff=error_backoff, worker_id=worker_id)

    # -- queries -----------------------------------------------------------------------

    def get(self, run_id: str, *, version: int | None = None, allow_damaged: bool = False) -> Run:
        """The run as it stands in the log (or as it stood at ``version``), with who drives it.

        Raises :class:`RunNotFound`, or :class:`CorruptEvent` for a damaged run; with
        ``allow_damaged`` a damaged run's view is returned instead, as ``runs()`` lists it
        (status ``damaged``, the :class:`CorruptEvent` as its error).
        """
        validate_run_id(run_id)
        if allow_damaged and version is None:
            view = self._view_or_damaged(run_id)
        else:
            view = self._view(self.store.load(run_id, version=version, journal=False))
        if version is None and not view.finished:
            view.driving = self.drives.lease_book_now().get(run_id)
        return view

    def _view(self, run: WorkflowRun) -> Run:
        workflow = self.registry.workflows.get((run.workflow, run.workflow_version))
        return run_view(run, workflow.state_model if workflow else None)

    def history(self, run_id: str) -> list[RecordedEvent]:
        """The run's events in order, as plain data (:class:`CorruptEvent` for a damaged run)."""
        return [event_view(e) for e in self.store.events(validate_run_id(run_id))]

    def runs(self, *, status: str | None = None, workflow: str | None = None) -> list[Run]:
        """Every run in the store (optionally only those with this status or workflow).

        A damaged run (a stored row of it cannot be read) is listed with status ``damaged``
        and the :class:`CorruptEvent` as its ``error``; the others are listed as usual.
        """
        views = []
        for run_id in self.store.run_ids():
            view = self._view_or_damaged(run_id)
            if (status is None or view.status == status) and (workflow is None or view.workflow == workflow):
                views.append(view)
        leases = self.drives.lease_book_now().held() if any(not v.finished for v in views) else {}
        for view in views:
            if not view.finished:
                view.driving = leases.get(view.run_id)
        return views

    # -- the queries, awaitable: the store is read in a worker thread, the loop keeps running --

    async def get_async(self, run_id: str, *, version: int | None = None) -> Run:
        """:meth:`get` for code on an event loop (a request handler, a worker)."""
        return await self.store.call(self.get, run_id, version=version)

    async def history_async(self, run_id: str) -> list[RecordedEvent]:
        """:meth:`history` for code on an event loop."""
        return await self.store.call(self.history, run_id)

    async def runs_async(self, *, status: str | None = None, workflow: str | None = None) -> list[Run]:
        """:meth:`runs` for code on an event loop."""
        return await self.store.call(self.runs, status=status, workflow=workflow)

    async def state_at_async(self, run_id: str, version: int) -> RunAt:
        """:meth:`state_at` for code on an event loop."""
        return await self.store.call(self.state_at, run_id, version)

    def _view_or_damaged(self, run_id: str) -> Run:
        """The run's view; for a damaged run, the ``damaged`` view (see :func:`damaged_view`)."""
        try:
            return self._view(self.store.load(run_id, journal=False))
        except CorruptEvent as exc:
            error = exc
        before = None
        if error.version > 1:
            try:
                before = self.store.load(run_id, version=error.version - 1, journal=False)
            except PhaseledgerError:
                pass
        workflow = self.registry.workflows.get((before.workflow, before.workflow_version)) if before else None
        return damaged_view(error, before, workflow.state_model if workflow else None)

    # -- time travel (phaseledger.history.timetravel, compare, retention) ----------------

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints: every phase entry and every ``ctx.checkpoint``, in log order."""
        return self.time_travel.checkpoints(validate_run_id(run_id))

    def checkpoint(self, run_id: str, checkpoint_id: str | int) -> Checkpoint:
        """One checkpoint with its state, by id (``"v12"``), version (``12``) or label (the latest)."""
        return self.time_travel.checkpoint(validate_run_id(run_id), checkpoint_id)

    def state_at(self, run_id: str, version: int) -> RunAt:
        """The run (phase, state, journal, status, usage) as it stood right after event ``version``."""
        return self.time_travel.state_at(validate_run_id(run_id), version)

    def resume_token(self, run_id: str, at: int | str | None = None) -> str:
        """A signed, opaque token naming the run and a version of its log (its head by default).

        ``engine.resume(token)`` continues the run; ``engine.fork(token)`` branches at that
        version. Needs ``Engine(token_key=...)`` or ``$PHASELEDGER_TOKEN_KEY``.
        """
        return self.time_travel.resume_token(validate_run_id(run_id), at)

    async def fork(
        self,
        run_or_token: str,
        *,
        at: int | str | None = None,
        new_run_id: str | None = None,
        state: BaseModel | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        drive: bool = True,
    ) -> Run:
        """Branch a new run off a run's log at ``at`` (a version, a checkpoint id or label; the head
        by default) or at the position a resume token names.

        The fork's log starts with copies of the source's events up to that point; the phase
        visit in progress there is replayed from them (recorded model responses, tool results
        and steps are served from the log, not run or paid again) and everything after runs
        live. ``state`` replaces the state at a checkpoint fork point; ``overrides`` (JSON) are
        what-if values handlers read as ``ctx.overrides``. With ``drive=False`` the fork is
        recorded but not driven (``engine.resume`` drives it). Returns the fork's view.
        """
        return await self.time_travel.fork(run_or_token, at=at, new_run_id=new_run_id, state=state,
                                           overrides=overrides, drive=drive)

    def lineage(self, run_id: str) -> Lineage:
        """The runs this run was forked from (parent first) and the runs forked from it."""
        return self.time_travel.lineage(validate_run_id(run_id))

    def compare(self, run_a: str, run_b: str) -> RunComparison:
        """Where two runs of one workflow diverge: phase paths, steps, state, output, tokens, cost."""
        return compare_runs(self, validate_run_id(run_a), validate_run_id(run_b))

    def compact(self, run_id: str, *, before: int | None = None) -> CompactionReport:
        """Remove a finished run's events before ``before`` (default: all but its first and last),
        keeping a snapshot there so the run still loads; see docs/time-travel.md for what is kept."""
        return Retention(self).compact(validate_run_id(run_id), before=before)

    def apply_retention(self, policy: RetentionPolicy, *, now: datetime | None = None) -> RetentionReport:
        """Compact or delete finished runs as ``policy`` says; unfinished runs are never touched."""
        return Retention(self).apply(policy, now=now)


log = logging.getLogger("phaseledger")


def _check_store_settings(store: Store, cipher_key: CipherKeys | None, compress: bool | None) -> None:
    """Refuse encryption settings that a given store does not have (they would be silently ignored)."""
    if cipher_key is not None and parse_cipher_keys(cipher_key) != store.cipher_keys:
        raise PhaseledgerError(
            "cipher_key= differs from the keys of the Store given to the Engine: pass it to Store(..., cipher_key=...)"
        )
    if compress is not None and bool(compress) != store.compressed:
        raise PhaseledgerError(
            "compress= differs from the setting of the Store given to the Engine: pass it to Store(..., compress=...)"
        )


def _resumable(run: WorkflowRun) -> None:
    if run.finished:
        raise RunFinished(run.id, run.status, "resume")


def _retryable(run: WorkflowRun) -> None:
    if run.status != FAILED:
        if run.finished:
            raise RunFinished(run.id, run.status, "retry")
        raise PhaseledgerError(f"run {run.id!r} is {run.status}, not failed: use engine.resume({run.id!r})")


_APPEND_ATTEMPTS = 40


async def _backoff(attempt: int) -> None:
    """Sleep before appending again to a run whose driver keeps committing (5 ms .. 0.2 s, jittered)."""
    await asyncio.sleep(min(0.005 * 2 ** attempt, 0.2) * (0.5 + JITTER.random()))


def _signal_seen(run: WorkflowRun, signal_id: str) -> bool:
    return signal_id in run.signal_ids  # every id the run received (older snapshots: filled by the upcaster)
