"""Driving one run: replay the current phase from its journal, record new work, change phase.

A :class:`RunDriver` owns the run's aggregate while it drives it, under the run's lease
(:mod:`phaseledger.store.leasebook`). It appends events to
the aggregate and commits them in batches (``checkpoint_every_n_steps``); errors, phase
changes, suspensions and the end of the run commit at once. When another writer appended
to the run meanwhile, only signals are rebased over; anything else means another driver
owns the run, and this one stops without appending and raises :class:`~phaseledger.LeaseLost`.

While the store is unavailable (a dropped connection, a server restarting), a commit is
tried again with backoff for up to ``engine.append_retry_seconds``. The events wait in
memory, and optimistic concurrency makes another attempt safe: an attempt whose reply
was lost but which did commit makes the next one conflict, and the rebase then finds the
events in the log and carries on. After that the driver gives up with
:class:`StoreUnavailable`, leaving the run as its last commit left it, to be resumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from phaseledger.domain.errors import (
    ConcurrencyConflict,
    InvalidTransition,
    LeaseLost,
    NonDeterminismError,
    PhaseledgerError,
    SerializationError,
    StoreUnavailable,
)
from phaseledger.domain.recorded_errors import describe_error
from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.domain.status import CANCELLED, RUNNING
from phaseledger.domain.values import encode_value
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.context import Context, check_consumed, run_handler, state_data
from phaseledger.engine.stops import Cancelled, Released, Superseded, Suspended
from phaseledger.store.faults import Backoff

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger("phaseledger.driver")
_REBASEABLE = (WorkflowRun.SignalReceived,)


class RunDriver:
    """Drives one run of one workflow until it completes, fails, suspends or is cancelled."""

    def __init__(self, engine: Engine, run: WorkflowRun, workflow: Workflow[Any]) -> None:
        self.engine = engine
        self.run = run
        self.workflow = workflow
        self.batch = workflow.checkpoint_every_n_steps or engine.checkpoint_every_n_steps
        self.unsaved_steps = 0
        self.lock = asyncio.Lock()
        self.unclaimed = bool(run.pending_events)
        """A resume marker is pending: commit it before anything runs live (see :meth:`claim`)."""

    # -- recording ---------------------------------------------------------------------

    def record(self, event_class: type[WorkflowRun.Event], **fields: Any) -> None:
        """Append an event to the run in memory (committed by :meth:`commit`)."""
        self.run.trigger_event(event_class, **fields)
        if self.engine.event_observer is not None:
            self.engine.event_observer(self.run)

    async def step_recorded(self) -> None:
        """Count a recorded step; commit when the batch is full."""
        self.unsaved_steps += 1
        if self.unsaved_steps >= self.batch:
            await self.commit()

    async def claim(self) -> None:
        """Commit the pending resume marker before the first live call of a resumed run.

        Until then the resume has only replayed, so a :class:`NonDeterminismError` leaves
        the log untouched; from then on a second engine resuming the same run conflicts
        (and stops) instead of running the same step again.
        """
        if self.unclaimed:
            await self.commit()

    async def commit(self) -> None:
        """Save pending events in one transaction (rebasing over concurrent signals)."""
        async with self.lock:
            if not self.run.pending_events:
                return
            events = cast("Sequence[WorkflowRun.Event]", self.run.collect_events())
            try:
                await self._append(events)
            except ConcurrencyConflict:
                await self._rebase(events)
            self.unsaved_steps = 0
            self.unclaimed = False

    async def _append(self, events: Sequence[WorkflowRun.Event]) -> None:
        """Append ``events`` (collected from the run), waiting out an outage of the store."""
        try:
            await self.engine.store.append_async(events, run=self.run)
        except StoreUnavailable as exc:
            await self._persist(lambda: self.engine.store.append_async(events, run=self.run), "commit", exc)
        else:
            self.engine.outage.ok()

    def _landed(self, events: Sequence[WorkflowRun.Event], found: Sequence[WorkflowRun.Event]) -> bool:
        """Whether the events ``found`` in the log start with ``events``, as they were appended."""
        if len(found) < len(events):
            return False
        # Compared as read back: a value's Python type may change on the way (a tuple comes back a list).
        return all(self.engine.store.read_back(mine) == theirs
                   for mine, theirs in zip(events, found, strict=False))

    async def _persist(self, call: Callable[[], Awaitable[T]], what: str,
                       failure: StoreUnavailable | None = None) -> T:
        """``call()``, tried again with backoff while the store is unavailable (transiently).

        ``failure`` is how a first attempt made by the caller failed. Gives up with the last
        :class:`StoreUnavailable` once ``engine.append_retry_seconds`` have passed since the
        first failure. The engine's :class:`~phaseledger.store.faults.Outage` logs the
        outage once, not each attempt.
        """
        outage = self.engine.outage
        backoff = Backoff(initial=0.1, cap=2.0)
        deadline: float | None = None
        while True:
            if failure is not None:
                if not failure.transient:
                    raise failure
                now = time.monotonic()
                deadline = deadline or now + self.engine.append_retry_seconds
                if now >= deadline:
                    log.warning("run %s: gave up trying to %s after %gs of store outage; it stays as its last "
                                "commit left it and can be resumed", self.run.id, what,
                                self.engine.append_retry_seconds)
                    raise failure
                outage.failed(failure, then=f"retrying for up to {self.engine.append_retry_seconds:g}s")
                await asyncio.sleep(min(backoff.next(), deadline - now))
            try:
                result = await call()
            except StoreUnavailable as exc:
                failure = exc
                continue
            outage.ok()
            return result

    async def _rebase(self, events: Sequence[WorkflowRun.Event]) -> None:
        fresh: WorkflowRun = await self._persist(
            lambda: self.engine.store.call(self.engine.store.load, self.run.id), "read the run")
        base_version = events[0].originator_version - 1
        intervening = await self._persist(
            lambda: self.engine.store.call(self.engine.store.events, self.run.id, gt=base_version), "read the run")
        if fresh.status == CANCELLED:
            self.run = fresh
            raise Cancelled()
        if self._landed(events, intervening):
            # These events were committed by an attempt whose reply was lost (a dropped
            # connection): the log has them, and any signal after them is in ``fresh``.
            self.run = fresh
            return
        if not all(isinstance(e, _REBASEABLE) for e in intervening):
            raise Superseded()
        for event in events:
            fields = event_fields(event)
            fresh.trigger_event(type(event), timestamp=event.timestamp, **fields)
        self.run = fresh
        pending = cast("Sequence[WorkflowRun.Event]", fresh.collect_events())
        try:
            await self._append(pending)
        except ConcurrencyConflict:
            await self._rebase(pending)

    def check_boundary(self) -> None:
        """Stop at this journal boundary if the run was cancelled, released or taken over.

        Called before every live journaled call and every phase: a cancel (in this process,
        or seen by the worker's lease renewal), a worker shutting down, or a lease that ran
        out stops the run here, before it does anything more.
        """
        stop = self.engine.control.stop_requested(self.run.id)
        if stop is not None:
            raise stop()
        if self.engine.control.lease_ran_out(self.run.id, time.monotonic()):
            raise Superseded()

    # -- driving -----------------------------------------------------------------------

    async def drive(self) -> None:
        """Run phases until the run completes, fails, suspends or is cancelled."""
        try:
            with self.engine.store.driving(), self.engine.tracing.run(self.run, self.workflow):
                await self._drive_phases()
        except Cancelled:
            # Cancelled by another writer: drop what was not committed and show the run as
            # the log has it.
            self.run.collect_events()
            self.run = await self._persist(
                lambda: self.engine.store.call(self.engine.store.load, self.run.id), "read the run")
        except Superseded:
            # Another driver owns the run now: what this one did not commit is dropped, and
            # its view would be stale, so say so instead of returning it.
            self.run.collect_events()
            raise LeaseLost(self.run.id) from None

    async def _drive_phases(self) -> None:
        try:
            while not self.run.finished and self.run.status == RUNNING:
                self.check_boundary()
                if self.run.phase is None:  # started, but the initial phase entry was never recorded
                    self.record(
                        WorkflowRun.PhaseEntered, phase=self.workflow.initial_phase, from_phase=None,
                        reason="start", attempt=1, state=dict(self.run.phase_state),
                    )
                    await self.commit()
                phase = self.workflow.phases.get(self.run.phase or "")
                if phase is None:
                    raise InvalidTransition(
                        f"run {self.run.id!r} is in phase {self.run.phase!r}, which workflow "
                        f"{self.workflow.name!r} v{self.workflow.version} does not define"
                    )
                ctx: Context[Any] = Context(self, phase)
                try:
                    with self.engine.tracing.phase(self.run, len(self.run.journal)):
                        result = await run_handler(ctx, phase.handler)
                    check_consumed(ctx)
                    if phase.final:
                        output, output_type = encode_value(result, f"the output of final phase {phase.name!r}")
                        state = state_data(ctx)
                        self.record(WorkflowRun.RunCompleted, output=output, output_type=output_type, state=state)
                    else:
                        target = self.workflow.next_phase(phase.name, result, ctx.state)
                        self.record(
                            WorkflowRun.PhaseEntered,
                            phase=target,
                            from_phase=phase.name,
                            reason="transition",
                            attempt=self.run.attempts.get(target, 0) + 1,
                            state=state_data(ctx),
                        )
                except (Suspended, Cancelled, Superseded, Released):
                    raise
                except (NonDeterminismError, StoreUnavailable, ConcurrencyConflict):
                    # Not the workflow's fault: leave the log untouched so the run can be
                    # resumed (by the old code, once the store is back, or by its owner).
                    self.run.collect_events()
                    raise
                except Exception as exc:
                    await self._fail(exc)
                    return
                await self.commit()
                self.engine.hooks.checkpoint(self.run, "phase")
        except (Suspended, Released):
            await self.commit()

    async def _fail(self, exc: BaseException) -> None:
        error = describe_error(exc)
        if isinstance(exc, (InvalidTransition, SerializationError, PhaseledgerError)):
            error["phaseledger"] = True
        error["phase"] = self.run.phase
        self.record(WorkflowRun.RunFailed, error=error)
        await self.commit()
