"""The Temporal workflow that dispatches one phaseledger run (sandbox-safe: no phaseledger imports).

Temporal replays this code to rebuild the workflow's state, inside its sandbox; it only
decides what to schedule. The real work happens in the activities of
:mod:`phaseledger.dispatch.temporal`, which call the engine:

- ``phaseledger_advance`` drives the run as far as it goes (``engine.advance``) and
  returns a :class:`Wait` summary;
- finished: the workflow returns the run's :class:`Outcome` (a failed or cancelled run
  fails the workflow with an ``ApplicationError`` of type ``PhaseledgerRunFailed`` or
  ``PhaseledgerRunCancelled``);
- waiting: a Temporal timer until ``until`` (when given), woken early by a signal;
- a Temporal signal ``phaseledger_signal`` with ``{"name", "payload", "signal_id"?}``
  is appended to the run's log by the ``phaseledger_deliver_signal`` activity, with a
  signal id fixed in the workflow's history, so retries and replays deliver it once; a
  signal the run refuses (an invalid payload or id: ``InvalidInput``) is logged and dropped;
- cancelling the Temporal workflow cancels the run (``phaseledger_cancel``);
- ``phaseledger_wake`` (sent by the workers' wake bridge when phaseledger itself appended a
  signal or cancelled the run) ends the wait early: the workflow advances the run, which
  takes the signal, or ends the workflow as the run is cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

WORKFLOW_NAME = "phaseledger_run"
"""The Temporal workflow type of every phaseledger run."""
SIGNAL = "phaseledger_signal"
"""The Temporal signal that carries a phaseledger signal: ``{"name", "payload", "signal_id"?}``."""
WAKE = "phaseledger_wake"
"""The Temporal signal (no payload) that says the run's log changed outside Temporal (a signal
appended with ``engine.signal``, a cancellation): the workflow advances the run again."""
ADVANCE = "phaseledger_advance"
DELIVER_SIGNAL = "phaseledger_deliver_signal"
CANCEL = "phaseledger_cancel"


@dataclass
class RunInput:
    """What the Temporal workflow of a run is started with (kept in its history)."""

    run_id: str
    activity_timeout: float = 3600.0
    """Seconds one advance may take (Temporal's start-to-close timeout of the activity)."""
    heartbeat_timeout: float = 30.0
    """Seconds without a heartbeat after which Temporal retries the advance elsewhere."""
    retry_initial: float = 1.0
    """Seconds before the first retry of a failed activity (doubling up to ``retry_maximum``)."""
    retry_maximum: float = 30.0


@dataclass
class Wait:
    """The serialisable summary of a ``RunWait``: what the run waits for after an advance."""

    run_id: str
    status: str
    finished: bool
    reason: str | None = None
    signal: str | None = None
    until: datetime | None = None
    output: Any = None
    error: dict[str, Any] | None = None


@dataclass
class Outcome:
    """What the workflow of a completed run returns."""

    run_id: str
    status: str
    output: Any = None


@dataclass
class SignalDelivery:
    """One phaseledger signal to append to the run's log, with the id that makes it idempotent."""

    run_id: str
    name: str
    payload: Any
    signal_id: str


@dataclass
class _Pending:
    deliveries: list[SignalDelivery] = field(default_factory=list)
    woken: bool = False


@workflow.defn(name=WORKFLOW_NAME)
class PhaseledgerRun:
    """Advance a phaseledger run until it finishes, sleeping and taking signals on Temporal."""

    def __init__(self) -> None:
        self._run_id = ""
        self._pending = _Pending()

    @workflow.signal(name=SIGNAL)
    def phaseledger_signal(self, message: dict[str, Any]) -> None:
        """Queue a phaseledger signal; its id is the sender's ``signal_id`` or one fixed in history."""
        name = message.get("name")
        if not isinstance(name, str):
            workflow.logger.warning("phaseledger_signal without a string 'name' ignored: %r", message)
            return
        signal_id = message.get("signal_id") or f"temporal-{workflow.uuid4()}"
        self._pending.deliveries.append(
            SignalDelivery(self._run_id or workflow.info().workflow_id, name, message.get("payload"), str(signal_id))
        )

    @workflow.signal(name=WAKE)
    def phaseledger_wake(self) -> None:
        """The run's log changed outside Temporal: advance it again at once."""
        self._pending.woken = True

    @workflow.run
    async def run(self, params: RunInput) -> Outcome:
        self._run_id = params.run_id
        try:
            return await self._loop(params)
        except asyncio.CancelledError:
            await workflow.execute_activity(
                CANCEL, params.run_id, start_to_close_timeout=timedelta(seconds=60), retry_policy=_retry(params)
            )
            raise

    async def _loop(self, params: RunInput) -> Outcome:
        while True:
            await self._deliver(params)
            self._pending.woken = False
            wait: Wait = await workflow.execute_activity(
                ADVANCE,
                params.run_id,
                result_type=Wait,
                start_to_close_timeout=timedelta(seconds=params.activity_timeout),
                heartbeat_timeout=timedelta(seconds=params.heartbeat_timeout),
                retry_policy=_retry(params),
            )
            if wait.finished:
                return _outcome(wait)
            if self._pending.deliveries:
                continue
            timeout = None
            if wait.until is not None:
                timeout = max(0.0, (wait.until - workflow.now()).total_seconds())
            try:
                await workflow.wait_condition(
                    lambda: bool(self._pending.deliveries) or self._pending.woken, timeout=timeout,
                    timeout_summary=f"phaseledger {wait.reason} until {wait.until}",
                )
            except asyncio.TimeoutError:
                pass  # the run is due: advance it

    async def _deliver(self, params: RunInput) -> None:
        while self._pending.deliveries:
            delivery = self._pending.deliveries[0]
            try:
                await workflow.execute_activity(
                    DELIVER_SIGNAL, delivery, start_to_close_timeout=timedelta(seconds=60), retry_policy=_retry(params)
                )
            except ActivityError as refused:  # retries are unlimited: only a refusal for good gets here
                workflow.logger.warning("phaseledger signal %r to run %s dropped: %s", delivery.name,
                                        delivery.run_id, refused.cause or refused)
            self._pending.deliveries.pop(0)


def _retry(params: RunInput) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=params.retry_initial),
        maximum_interval=timedelta(seconds=params.retry_maximum),
        backoff_coefficient=2.0,
    )


def _outcome(wait: Wait) -> Outcome:
    if wait.status == "completed":
        return Outcome(wait.run_id, wait.status, wait.output)
    kind = "PhaseledgerRunCancelled" if wait.status == "cancelled" else "PhaseledgerRunFailed"
    raise ApplicationError(f"phaseledger run {wait.run_id} {wait.status}", wait.error, type=kind, non_retryable=True)
