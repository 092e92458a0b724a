"""The journal of one phase visit: serve a recorded call from the log, or run it live and record it.

Every non-deterministic thing a phase handler does is a call with a key in the current phase
visit: ``ctx.step``, ``ctx.now/uuid/random``, checkpoints, timers and signals (keyed by their
ordinal), and an agent's model requests and tool calls (keyed by the agents package). On
replay a call whose key is in the journal is served from it without running; a call that
does not match what was recorded raises :class:`~phaseledger.NonDeterminismError`. Any other
call runs live, under the retry policy, circuit breaker, timeouts and deadlines that apply;
each failed attempt is recorded (``StepAttemptFailed``) so backoff survives a crash, and the
result is recorded (``StepRecorded``). A call declared with an external effect
(:class:`~phaseledger.Effect`) records its intent (``EffectIntended``) before each attempt;
an intent a resumed run finds unsettled is in doubt, and the effect's policy decides.

:class:`Journal` is that one primitive; :class:`~phaseledger.Context` and the agents
package use it. This module also holds what runs in the current task: the journal of the
phase handler running (:func:`current_journal`) and the key of the call running
(:data:`STEP_KEY`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from phaseledger.domain.effects import NOT_HAPPENED, Effect, decision_signal, read_decision
from phaseledger.domain.errors import (
    CircuitOpen,
    DeadlineExceeded,
    EffectInDoubt,
    NonDeterminismError,
    PhaseledgerError,
    SerializationError,
    SignalTimeout,
    StepFailed,
    StepTimeout,
    StoreUnavailable,
    TransactionsUnsupported,
)
from phaseledger.domain.journal import Kind, RecordedCall
from phaseledger.domain.recorded_errors import describe_error, rebuild_error
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.values import JSONValue, decode_value, encode_value
from phaseledger.engine.stops import Suspended
from phaseledger.engine.transaction import run_transaction

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Phase
    from phaseledger.engine.driver import RunDriver

T = TypeVar("T")

STEP_KEY: ContextVar[str | None] = ContextVar("phaseledger_step_key", default=None)
"""The idempotency key (``run_id:phase_version.key``, or an effect's own key) of the journaled call running in this task."""

CURRENT_JOURNAL: ContextVar[Journal | None] = ContextVar("phaseledger_journal", default=None)
"""The journal of the phase handler running in this task (None outside handlers)."""

Outcome = Callable[[Any], tuple[dict[str, Any] | None, dict[str, Any] | None]]
"""What a call's result records besides itself: ``(usage, detail)``."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def current_journal() -> Journal | None:
    """The journal of the phase handler running in this task (None outside handlers).

    Durable agents use it to find the run their model requests and tool calls belong to.
    """
    return CURRENT_JOURNAL.get()


def idempotency_key() -> str:
    """The idempotency key of the step running now (``run_id:phase_version.n``, or its ``Effect(key=...)``).

    Stable across re-executions of the same step after a crash, so a step function can
    pass it to an external API to de-duplicate side effects. A reconcile function of an
    effect in doubt sees the same key.
    """
    key = STEP_KEY.get()
    if key is None:
        raise PhaseledgerError("idempotency_key() is only available inside a step run by ctx.step()")
    return key


class Deadline(NamedTuple):
    """The phase's or the run's deadline, whichever comes first."""

    when: datetime
    scope: str
    """``phase`` or ``run``."""
    name: str
    """The phase's or the workflow's name."""

    def exceeded(self, run_id: str) -> DeadlineExceeded:
        """The error of a call that would run past this deadline."""
        return DeadlineExceeded(run_id, self.scope, self.name, self.when)


@dataclass(frozen=True)
class PendingFailure:
    """The final failure of an agent unit, which the agent run may still handle (a fallback model, a hook).

    It is journaled once the agent run shows it handled it (its next model request, or the
    run's success). A failure that ended the agent run is journaled once the phase handler
    shows it caught it (:meth:`Journal.hold_ended`); one that fails the workflow run is not,
    so ``engine.retry`` runs the call again.
    """

    key: str
    kind: str
    name: str
    fingerprint: str | None
    error: dict[str, Any]


Answer = Callable[[Any], Any]
"""Turns the result of an effect settled without running (reconciled, or decided by a person)
into what the call's body would have returned (a tool call's recorded payload)."""


class Journal:
    """Replay-or-record for the calls of one phase visit of one run (built by its :class:`~phaseledger.Context`)."""

    def __init__(self, driver: RunDriver, phase: Phase) -> None:
        self._driver = driver
        self._phase = phase
        run = driver.run
        self.run_id: str = run.id
        self.visit: int = run.phase_entered_version
        """The version at which the phase visit began: part of every idempotency key."""
        self._recorded_at_start = dict(run.journal)
        self._consumed: set[str] = set()
        self._ordinal = 0
        self._held: dict[str, list[PendingFailure]] = {}
        self._ended: list[PendingFailure] = []
        """Failures that ended an agent run, journaled at the handler's next call (it caught them)."""
        self._ended_unsaved = False
        """Such failures were journaled and not committed yet: committed before the next live call runs."""
        entered = run.phase_entered_on or utcnow()  # None: a run from a snapshot older than the field
        self.deadline = self._first_deadline(entered)
        """The phase's or the run's deadline, whichever comes first (None: neither has one)."""

    def _first_deadline(self, entered: datetime) -> Deadline | None:
        found = []
        if self._phase.timeout is not None:
            found.append(Deadline(entered + timedelta(seconds=self._phase.timeout), "phase", self._phase.name))
        workflow = self._driver.workflow
        if workflow.timeout is not None:
            found.append(Deadline(self._driver.run.created_on + timedelta(seconds=workflow.timeout), "run",
                                  workflow.name))
        return min(found) if found else None

    # -- keys and lookups ----------------------------------------------------------------

    def next_key(self) -> str:
        """The key of the handler's next call in order (``0``, ``1``, ...)."""
        key = str(self._ordinal)
        self._ordinal += 1
        return key

    def step_key(self, key: str) -> str:
        """The idempotency key of the call with ``key``: ``run_id:phase_version.key``."""
        return f"{self.run_id}:{self.visit}.{key}"

    def recorded(self, key: str) -> RecordedCall | None:
        """What the journal holds under ``key``, if anything (no check, nothing consumed)."""
        return self._driver.run.journal.get(key)

    def lookup(self, key: str, kind: str, name: str, fingerprint: str | None = None) -> RecordedCall | None:
        """The recorded call under ``key``, checked to be this call; None when it must run live.

        Raises :class:`NonDeterminismError` when the recorded call (or a failed attempt) is
        another one. Before a call goes live, stops at this journal boundary if the run was
        cancelled, released or taken over, and raises :class:`DeadlineExceeded` past a deadline.
        """
        if self._ended:
            self._record_ended()
        run = self._driver.run
        entry = run.journal.get(key)
        if entry is None:
            intent = run.intents.get(key) if run.intents else None
            if intent is not None and intent.name != name:
                raise NonDeterminismError(self.run_id, key, f"an effect in doubt of {intent.name!r}",
                                          f"{kind} {name!r}")
            failures = run.failures.get(key)
            if failures and failures[-1].name != name:
                raise NonDeterminismError(
                    self.run_id, key, f"failed attempts of {failures[-1].name!r}", f"{kind} {name!r}"
                )
            self._driver.check_boundary()
            if self.deadline is not None:
                self._check_deadline()
            return None
        if entry.kind != kind or entry.name != name:
            raise NonDeterminismError(self.run_id, entry.seq, f"{entry.kind} {entry.name!r}", f"{kind} {name!r}")
        if fingerprint is not None and entry.fingerprint not in (None, fingerprint):
            raise NonDeterminismError(
                self.run_id, entry.seq,
                f"{kind} {name!r} with inputs {entry.fingerprint}",
                f"{kind} {name!r} with other inputs ({fingerprint})",
            )
        self._consumed.add(key)
        return entry

    @staticmethod
    def replay(entry: RecordedCall) -> Any:
        """What a recorded call gives on replay: its result (a fresh copy), or its recorded failure raised."""
        if entry.error:
            raise rebuild_error(entry.error)
        return decode_value(entry.result, entry.result_type)

    def check_consumed(self) -> None:
        """Raise :class:`NonDeterminismError` if the phase finished with recorded calls it did not make.

        The handler finished, so the failures that ended its agent runs were handled: they are journaled first.
        """
        if self._ended:
            self._record_ended()
        left = [e for k, e in self._recorded_at_start.items() if k not in self._consumed]
        if left:
            first = min(left, key=lambda e: e.seq)
            raise NonDeterminismError(
                self.run_id, first.seq, f"{first.kind} {first.name!r}",
                f"no further call (phase {self._phase.name!r} finished with {len(left)} recorded call(s) unused)",
            )

    # -- recording -----------------------------------------------------------------------

    def _record_result(
        self, key: str, kind: str, name: str, result: Any, *, fingerprint: str | None = None,
        error: dict[str, Any] | None = None, detail: dict[str, Any] | None = None,
    ) -> Any:
        """Record a finished call (encoding ``result``) and return the value code should see."""
        data, result_type = encode_value(result, f"the result of {kind} {name!r}")
        return self._append(key, kind, name, data, result_type, fingerprint=fingerprint, error=error, detail=detail)

    def _append(
        self, key: str, kind: str, name: str, data: JSONValue, result_type: str | None, *,
        fingerprint: str | None = None, usage: dict[str, Any] | None = None, duration: float = 0.0,
        error: dict[str, Any] | None = None, detail: dict[str, Any] | None = None,
    ) -> Any:
        """Record the encoded result of a finished call; return the value code sees (a fresh copy)."""
        self._driver.record(
            WorkflowRun.StepRecorded, seq=self._driver.run.next_seq, key=key, name=name, kind=kind, result=data,
            result_type=result_type, fingerprint=fingerprint, usage=usage, duration=round(duration, 6),
            error=error, detail=detail,
        )
        self._consumed.add(key)
        return decode_value(data, result_type)

    def value(self, kind: str, name: str, take: Callable[[], T], dump: Callable[[T], JSONValue],
              load: Callable[[Any], T], *, key: str | None = None) -> T:
        """A value taken once and recorded (a clock read, a random draw): replay returns the recorded one.

        ``dump`` turns the value into what is recorded and ``load`` turns that back; the
        call's key is the next ordinal unless ``key`` is given.
        """
        key = self.next_key() if key is None else key
        entry = self.lookup(key, kind, name)
        if entry is not None:
            return load(entry.result)
        value = take()
        self._record_result(key, kind, name, dump(value))
        self._driver.unsaved_steps += 1
        return value

    @property
    def saved(self) -> bool:
        """True when everything recorded so far is committed."""
        return self._driver.unsaved_steps == 0

    # -- live calls ----------------------------------------------------------------------

    def _policy(self, retry: RetryPolicy | None = None) -> RetryPolicy:
        """``retry``, else the phase's, the workflow's, then the engine's retry policy."""
        return retry or self._phase.retry or self._driver.workflow.retry or self._driver.engine.retry_policy

    async def call(
        self, key: str, kind: str, name: str, fn: Callable[[], Any], *,
        retry: RetryPolicy | None = None, breaker: str | None = None, fingerprint: str | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None, outcome: Outcome | None = None,
        effect: Effect | None = None, inputs: str | None = None,
    ) -> Any:
        """Serve a call from the journal, or run it with retries (see :meth:`run`) and record its result."""
        entry = self.lookup(key, kind, name, fingerprint)
        if entry is not None:
            return self.replay(entry)
        return await self.run(
            key, kind, name, fn, retry=retry, breaker=breaker, fingerprint=fingerprint,
            attempt_timeout=attempt_timeout, total_timeout=total_timeout, outcome=outcome,
            effect=effect, inputs=inputs,
        )

    async def run(
        self, key: str, kind: str, name: str, fn: Callable[[], Any], *,
        retry: RetryPolicy | None = None, breaker: str | None = None, fingerprint: str | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None,
        outcome: Outcome | None = None, what: str | None = None, handled_by: str | None = None,
        effect: Effect | None = None, inputs: str | None = None, answer: Answer | None = None,
    ) -> Any:
        """:meth:`attempts`, in a span of its own when the engine is instrumented (live calls only)."""
        with self._driver.engine.tracing.call(self._driver.run, kind, name, key):
            return await self.attempts(
                key, kind, name, fn, retry=retry, breaker=breaker, fingerprint=fingerprint,
                attempt_timeout=attempt_timeout, total_timeout=total_timeout, outcome=outcome, what=what,
                handled_by=handled_by, effect=effect, inputs=inputs, answer=answer,
            )

    async def attempts(
        self, key: str, kind: str, name: str, fn: Callable[[], Any], *,
        retry: RetryPolicy | None = None, breaker: str | None = None, fingerprint: str | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None,
        outcome: Outcome | None = None, what: str | None = None, handled_by: str | None = None,
        effect: Effect | None = None, inputs: str | None = None, answer: Answer | None = None,
    ) -> Any:
        """Run a call that :meth:`lookup` found unrecorded: attempts under the retry policy, then record it.

        ``fn()`` returns the result or an awaitable of it. Each attempt is bounded by
        ``attempt_timeout``, by what is left of ``total_timeout`` (counted from the first
        attempt's recorded start) and by the phase's and run's deadlines. A failed attempt
        is recorded and retried after the policy's backoff (longer if the provider asked,
        with a Retry-After, or an open breaker refused the call: a refusal uses up no
        attempt). ``outcome(result)`` gives the usage and detail recorded with the result;
        ``what`` names the result in a :class:`SerializationError`.

        Without ``handled_by``, a final failure raises :class:`StepFailed`, again on every
        replay. ``handled_by`` names the agent run that may still handle the call's final
        failure: the original exception is raised and the failure held for that run (see
        :meth:`record_held`); a call whose last failure was final (its agent run did not
        handle it) runs again from its first attempt, as after a crash.

        With ``effect``, an intent (the effect's key and ``inputs``, a digest of the call's
        arguments, else ``fingerprint``) is recorded and committed before each attempt, and
        the result committed at once. An intent found unsettled is in doubt: see
        :meth:`_settle_doubt`; ``answer`` turns a result settled without running into what
        ``fn()`` would have returned.
        """
        driver = self._driver
        failures = driver.run.failures.get(key)
        attempt, first_started = 1, None
        if failures:
            last = failures[-1]
            # retry_at None: the attempt was final when recorded (also when no time was left for another)
            if (not last.retryable or last.retry_at is None
                    or (not last.refused and last.attempt >= self._policy(retry).max_attempts)):
                if handled_by is None:
                    raise StepFailed(name, last.error_type, last.message, last.attempt)
            else:
                attempt, first_started = last.next_attempt, failures[0].started_at
                if last.retry_at is not None:
                    self._check_deadline(by=last.retry_at)  # live, the retry was refused for the deadline
                await self._wait_until(last.retry_at, "retry")
        if driver.unclaimed:
            await driver.claim()
        if self._ended_unsaved:  # before anything runs live: a crash must not lose the caught failure
            self._ended_unsaved = False
            await driver.commit()
        effect_key = inputs_digest = None
        if effect is not None:
            effect_key = effect.key or self.step_key(key)
            inputs_digest = inputs or fingerprint
            if key in driver.run.intents:
                what_ = what or f"the result of {kind} {name!r}"
                if await self._settle_doubt(key, kind, name, effect, effect_key, inputs_digest, fingerprint, what_,
                                            answer):
                    return self.replay(driver.run.journal[key])
        circuit = driver.engine.breaker(breaker) if breaker else None
        if first_started is None and total_timeout is not None:
            first_started = utcnow()
        opened = time.time()  # the first attempt's start, when no failure recorded it (a datetime only if needed)
        what = what or f"the result of {kind} {name!r}"
        bounded = attempt_timeout is not None or total_timeout is not None or self.deadline is not None
        while True:
            if effect_key is not None and key not in driver.run.intents:
                assert effect is not None
                self._intend(key, name, effect, effect_key, inputs_digest)
                await driver.commit()  # durable before the effect may happen
            started = time.perf_counter()
            token = STEP_KEY.set(effect_key or self.step_key(key))
            try:
                if circuit is not None:
                    circuit.before_call()
                bound = self._time_left(first_started, attempt_timeout, total_timeout) if bounded else None
                if bound is not None and bound[0] <= 0:
                    raise self._out_of_time(bound[1], name, attempt_timeout, total_timeout)
                result = fn()
                if inspect.isawaitable(result):
                    if bound is not None:
                        result = self._bounded(result, bound, name, attempt_timeout, total_timeout)
                    result = await result
                data, result_type = encode_value(result, what)  # fail before recording
            except (SerializationError, NonDeterminismError, DeadlineExceeded):
                raise
            except Exception as exc:
                if circuit is not None and not isinstance(exc, CircuitOpen):
                    circuit.record_failure()
                first_started = first_started or datetime.fromtimestamp(opened, UTC)
                retry_at = self._attempt_failed(key, name, exc, attempt, self._policy(retry), first_started,
                                                total_timeout)
                await driver.commit()
                if retry_at is None:
                    if handled_by is None:
                        raise StepFailed(name, type(exc).__name__, str(exc), attempt) from exc
                    if not isinstance(exc, PhaseledgerError):
                        failure = PendingFailure(key, kind, name, fingerprint, describe_error(exc))
                        self._held.setdefault(handled_by, []).append(failure)
                    raise
                self._check_deadline(by=retry_at)  # the next attempt would start after the deadline
                await self._wait_until(retry_at, "retry")
                if not isinstance(exc, CircuitOpen):
                    attempt += 1
                continue
            finally:
                STEP_KEY.reset(token)
            if circuit is not None:
                circuit.record_success()
            usage, detail = outcome(result) if outcome is not None else (None, None)
            value = self._append(key, kind, name, data, result_type, fingerprint=fingerprint, usage=usage,
                                 duration=time.perf_counter() - started, detail=detail)
            if effect_key is not None:
                await driver.commit()  # the outcome settles the intent: committed at once, whatever the batch
            else:
                await driver.step_recorded()
            return value

    # -- effects -------------------------------------------------------------------------

    def _intend(self, key: str, name: str, effect: Effect, effect_key: str, inputs: str | None,
                signal_id: str | None = None) -> None:
        """Record the intent of an effect step's next attempt (``EffectIntended``), not committed yet."""
        self._driver.record(
            WorkflowRun.EffectIntended, seq=self._driver.run.next_seq, key=key, name=name, effect_key=effect_key,
            fingerprint=inputs, policy=effect.policy, signal_id=signal_id,
        )

    async def _settle_doubt(self, key: str, kind: str, name: str, effect: Effect, effect_key: str,
                            inputs: str | None, fingerprint: str | None, what: str, answer: Answer | None) -> bool:
        """Apply the effect's policy to its intent in doubt; True when that recorded the call's result.

        ``retry`` runs it again (False); ``fail`` raises :class:`EffectInDoubt`; ``reconcile``
        records what the reconcile function says happened, or intends a new attempt when it
        returns ``NOT_HAPPENED``; ``ask`` takes the decision signal (``effect:<key>``) if one
        came, else suspends the run until one does.
        """
        driver = self._driver
        intent = driver.run.intents[key]
        if intent.fingerprint is not None and inputs is not None and intent.fingerprint != inputs:
            raise NonDeterminismError(self.run_id, key, f"effect {name!r} in doubt with inputs {intent.fingerprint}",
                                      f"{kind} {name!r} with other inputs ({inputs})")
        policy = effect.policy
        if policy == "retry":
            return False
        if policy == "fail":
            raise EffectInDoubt(self.run_id, name, intent.effect_key, intent.since)
        if policy == "reconcile":
            assert effect.reconcile is not None
            token = STEP_KEY.set(intent.effect_key)
            try:
                result = effect.reconcile(intent.effect_key)
                if inspect.isawaitable(result):
                    result = await result
            finally:
                STEP_KEY.reset(token)
            if result is NOT_HAPPENED:
                self._intend(key, name, effect, effect_key, inputs)
                await driver.commit()
                return False
            self._record_settled(key, kind, name, result, fingerprint, what, answer, {"effect": "reconciled"})
            await driver.commit()
            return True
        signal_name = decision_signal(key)
        for signal in driver.run.inbox:
            if signal.name == signal_name:
                happened, result = read_decision(signal.payload)
                if not happened:
                    self._intend(key, name, effect, effect_key, inputs, signal_id=signal.signal_id)
                    await driver.commit()
                    return False
                detail = {"effect": "decided", "signal_id": signal.signal_id}
                self._record_settled(key, kind, name, result, fingerprint, what, answer, detail)
                await driver.commit()
                return True
        driver.record(WorkflowRun.RunSuspended, reason="effect", until=None, signal=signal_name)
        raise Suspended()

    def _record_settled(self, key: str, kind: str, name: str, result: Any, fingerprint: str | None, what: str,
                        answer: Answer | None, detail: dict[str, Any]) -> None:
        """Record the result of an effect settled without running it (reconciled or decided)."""
        if answer is not None:
            result = answer(result)
        data, result_type = encode_value(result, what)
        self._append(key, kind, name, data, result_type, fingerprint=fingerprint, detail=detail)
    async def transaction(self, key: str, name: str, fn: Callable[[Any], Any], *,
                          retry: RetryPolicy | None = None) -> Any:
        """Serve a transactional step from the journal, or run it (``ctx.transaction``).

        Each attempt is one transaction of the store's database holding ``fn(connection)``'s
        writes and, when it succeeds, the step's record (see :mod:`.transaction`). A failed
        attempt wrote nothing; it is recorded and retried under the retry policy as a
        step's would be, and a final failure raises :class:`StepFailed`, again on replay.
        """
        entry = self.lookup(key, Kind.STEP, name)
        if entry is not None:
            return self.replay(entry)
        driver = self._driver
        store = driver.engine.store
        if not store.transactional:
            raise TransactionsUnsupported(name, store.url.redacted)
        policy = self._policy(retry)
        failures = driver.run.failures.get(key)
        attempt, first_started = 1, None
        if failures:
            last = failures[-1]
            if not last.retryable or last.attempt >= policy.max_attempts:
                raise StepFailed(name, last.error_type, last.message, last.attempt)
            attempt, first_started = last.next_attempt, failures[0].started_at
            if last.retry_at is not None:
                self._check_deadline(by=last.retry_at)
            await self._wait_until(last.retry_at, "retry")
        step_key = self.step_key(key)

        def keyed(conn: Any) -> Any:  # runs in the store's thread: idempotency_key() works in fn
            token = STEP_KEY.set(step_key)
            try:
                return fn(conn)
            finally:
                STEP_KEY.reset(token)

        what = f"the result of transactional step {name!r}"
        while True:
            opened = utcnow()
            try:
                return await run_transaction(driver, key, name, keyed, what)
            except (SerializationError, NonDeterminismError, DeadlineExceeded, StoreUnavailable):
                raise
            except Exception as exc:
                first_started = first_started or opened
                retry_at = self._attempt_failed(key, name, exc, attempt, policy, first_started, None)
                await driver.commit()
                if retry_at is None:
                    raise StepFailed(name, type(exc).__name__, str(exc), attempt) from exc
                self._check_deadline(by=retry_at)
                await self._wait_until(retry_at, "retry")
                attempt += 1

    async def _bounded(self, result: Awaitable[Any], bound: tuple[float, str], name: str,
                       attempt_timeout: float | None, total_timeout: float | None) -> Any:
        """Await an attempt's ``result`` within its tightest bound (see :meth:`_time_left`)."""
        limit = asyncio.timeout(bound[0])
        try:
            async with limit:
                return await result
        except TimeoutError:
            if not limit.expired():
                raise  # the call's own TimeoutError, not this bound
            raise self._out_of_time(bound[1], name, attempt_timeout, total_timeout) from None

    def _attempt_failed(self, key: str, name: str, exc: Exception, attempt: int, policy: RetryPolicy,
                        first_started: datetime, total_timeout: float | None) -> datetime | None:
        """Record a failed attempt; return when the next may start (None: this one was the last)."""
        # A refusal by an open breaker never reached the provider: it is retried without
        # using up an attempt, after the breaker's reset timeout.
        refused = isinstance(exc, CircuitOpen)
        retryable = refused or policy.is_retryable(exc)
        spent = total_timeout is not None and isinstance(exc, StepTimeout) and exc.seconds == total_timeout
        final = spent or not retryable or (not refused and attempt >= policy.max_attempts)
        retry_at = None
        if not final:
            delay = policy.delay(attempt)
            if isinstance(exc, CircuitOpen):
                delay = max(delay, exc.retry_in)
            retry_after = getattr(exc, "retry_after", None)  # a provider's Retry-After (pydantic-ai)
            if isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
                delay = max(delay, min(float(retry_after), policy.max_delay))
            retry_at = utcnow() + timedelta(seconds=delay)
            if total_timeout is not None and retry_at >= first_started + timedelta(seconds=total_timeout):
                retry_at = None  # no time left for another attempt
        self._driver.record(
            WorkflowRun.StepAttemptFailed, seq=self._driver.run.next_seq, key=key, name=name,
            error_type=type(exc).__name__, message=str(exc)[:2000], retryable=retryable, attempt=attempt,
            retry_at=retry_at, started_at=first_started,
        )
        return retry_at

    # -- deadlines and waits -------------------------------------------------------------

    def _check_deadline(self, by: datetime | None = None) -> None:
        """Raise :class:`DeadlineExceeded` if a deadline passed (or will have, at ``by``)."""
        deadline = self.deadline
        if deadline is not None and (by or utcnow()) >= deadline.when:
            raise deadline.exceeded(self.run_id)

    def _time_left(self, first_started: datetime | None, attempt_timeout: float | None,
                   total_timeout: float | None) -> tuple[float, str] | None:
        """The tightest bound on the next attempt: (seconds, "attempt" | "total" | "deadline")."""
        now = utcnow()
        bounds = []
        if attempt_timeout is not None:
            bounds.append((attempt_timeout, "attempt"))
        if total_timeout is not None and first_started is not None:
            bounds.append(((first_started + timedelta(seconds=total_timeout) - now).total_seconds(), "total"))
        if self.deadline is not None:
            bounds.append(((self.deadline.when - now).total_seconds(), "deadline"))
        return min(bounds) if bounds else None

    def _out_of_time(self, bound: str, name: str, attempt_timeout: float | None,
                     total_timeout: float | None) -> BaseException:
        if bound == "deadline":
            assert self.deadline is not None
            return self.deadline.exceeded(self.run_id)
        return StepTimeout(name, attempt_timeout if bound == "attempt" else total_timeout)  # type: ignore[arg-type]

    async def _wait_until(self, when: datetime | None, reason: str, signal: str | None = None) -> None:
        """Wait until ``when`` inline, or suspend the run (``reason``) when that is longer than the engine waits."""
        if when is None:
            return
        remaining = (when - utcnow()).total_seconds()
        if remaining <= 0:
            return
        if remaining > self._driver.engine.max_inline_wait:
            self._driver.record(WorkflowRun.RunSuspended, reason=reason, until=when, signal=signal)
            raise Suspended()
        await self._driver.commit()
        while remaining > 0:  # the loop's clock may wake a hair early: never return before `when`
            await asyncio.sleep(remaining)
            remaining = (when - utcnow()).total_seconds()

    # -- timers, signals, checkpoints ----------------------------------------------------

    def _timer(self, key: str, seconds: float | None) -> datetime | None:
        """The wake time of the durable timer under ``key``, started now for ``seconds`` if it has none."""
        run = self._driver.run
        wake_at = run.timers.get(key)
        if wake_at is None and seconds is not None:
            wake_at = utcnow() + timedelta(seconds=seconds)
            self._driver.record(WorkflowRun.TimerStarted, seq=run.next_seq, key=key, wake_at=wake_at)
        return wake_at

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` durably: the wake time is recorded (see ``ctx.sleep``)."""
        key = self.next_key()
        if self.lookup(key, Kind.TIMER, "sleep") is not None:
            return
        wake_at = self._timer(key, max(0.0, seconds))
        assert wake_at is not None
        await self._wait_until(wake_at, "sleep")
        self._record_result(key, Kind.TIMER, "sleep", wake_at.isoformat())
        await self._driver.step_recorded()

    async def signal(self, name: str, timeout: float | None) -> JSONValue:
        """The payload of a ``name`` signal (a copy), suspending the run until one arrives (``ctx.wait_for_signal``)."""
        key = self.next_key()
        entry = self.lookup(key, Kind.SIGNAL, name)
        if entry is not None:
            return self.replay(entry)  # a recorded timeout is raised again
        for signal in self._driver.run.inbox:
            if signal.name == name:
                taken = {"signal_id": signal.signal_id}
                payload = self._record_result(key, Kind.SIGNAL, name, signal.payload, detail=taken)
                await self._driver.commit()
                return payload
        wake_at = self._timer(key, timeout)
        if wake_at is not None and utcnow() >= wake_at:
            error = {"type": "SignalTimeout", "message": name, "timeout": timeout}
            self._record_result(key, Kind.SIGNAL, name, None, error=error)
            await self._driver.commit()
            raise SignalTimeout(name, timeout or 0.0)
        self._driver.record(WorkflowRun.RunSuspended, reason="signal", until=wake_at, signal=name)
        raise Suspended()

    async def checkpoint(self, label: str, state: Callable[[], dict[str, Any]]) -> RecordedCall | None:
        """Record ``state()`` under ``label`` (``CheckpointSaved``) and commit; on replay, return the recorded entry."""
        key = self.next_key()
        entry = self.lookup(key, Kind.CHECKPOINT, label)
        if entry is not None:
            return entry
        run = self._driver.run
        self._driver.record(WorkflowRun.CheckpointSaved, seq=run.next_seq, key=key, label=label, state=state())
        self._consumed.add(key)
        await self._driver.commit()
        return None

    # -- failures an agent run may still handle ------------------------------------------

    def record_held(self, group: str) -> None:
        """Journal the failures held for agent run ``group``: it handled them (see :class:`PendingFailure`)."""
        for failure in self._held.pop(group, ()):
            if failure.key in self._driver.run.journal:
                continue
            self._record_result(failure.key, failure.kind, failure.name, None, fingerprint=failure.fingerprint,
                        error=failure.error)
            self._driver.unsaved_steps += 1

    def drop_held(self, group: str) -> None:
        """Forget the failures held for agent run ``group``: they were no failures of it (it was suspended, stopped)."""
        self._held.pop(group, None)

    def hold_ended(self, group: str) -> None:
        """The failures held for agent run ``group`` ended it: journal them if the handler carries on.

        They are journaled at the handler's next journaled call, or when it finishes its phase
        (it caught the error); when the error fails the run instead, they are not, and
        ``engine.retry`` runs those calls again.
        """
        self._ended.extend(self._held.pop(group, ()))

    def _record_ended(self) -> None:
        ended, self._ended = self._ended, []
        for failure in ended:
            if failure.key in self._driver.run.journal:
                continue
            self._record_result(failure.key, failure.kind, failure.name, None, fingerprint=failure.fingerprint,
                                error=failure.error)
            self._driver.unsaved_steps += 1
            self._ended_unsaved = True
