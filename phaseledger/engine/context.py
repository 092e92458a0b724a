"""The handler context: every non-deterministic thing a phase handler does goes through it.

Each call gets a key in the current phase visit (its ordinal, or a key chosen by the
caller, such as an agent's tool-call id). On replay a call whose key is in the journal is
served from it without running; a call that does not match what was recorded raises
:class:`~phaseledger.NonDeterminismError`. Everything else runs live and is recorded.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random as _random
import time
import uuid as _uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from phaseledger.domain.errors import (
    CircuitOpen,
    DeadlineExceeded,
    NonDeterminismError,
    PhaseledgerError,
    SerializationError,
    SignalTimeout,
    StepFailed,
    StepTimeout,
)
from phaseledger.domain.recorded_errors import rebuild_error
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.values import copy_json, decode_value, encode_value
from phaseledger.engine.stops import Suspended

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Phase
    from phaseledger.engine.driver import RunDriver
    from phaseledger.engine.engine import Engine

StateT = TypeVar("StateT", bound=BaseModel)

_STEP_KEY: ContextVar[str | None] = ContextVar("phaseledger_step_key", default=None)
_CURRENT_CONTEXT: ContextVar[Context[Any] | None] = ContextVar("phaseledger_context", default=None)


def current_context() -> Context[Any] | None:
    """The context of the phase handler running in this task (None outside handlers).

    Durable agents use it to find the run their model requests and tool calls belong to.
    """
    return _CURRENT_CONTEXT.get()


def idempotency_key() -> str:
    """The idempotency key of the step running now (``run_id:phase_version.n``).

    Stable across re-executions of the same step after a crash, so a step function can
    pass it to an external API to de-duplicate side effects.
    """
    key = _STEP_KEY.get()
    if key is None:
        raise PhaseledgerError("idempotency_key() is only available inside a step run by ctx.step()")
    return key


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Context(Generic[StateT]):
    """What a phase handler receives: the run's state and the journaled operations.

    ``state`` is the pydantic state as it stood when the phase was entered (rebuilt the
    same way on replay); mutate it freely, it is recorded when the phase changes.
    """

    def __init__(self, driver: RunDriver, phase: Phase) -> None:
        self._driver = driver
        self._phase = phase
        run = driver.run
        self.state: StateT = driver.workflow.state_model.model_validate(copy_json(run.phase_state))
        self._visit = run.phase_entered_version
        self._recorded_at_start = dict(run.journal)
        self._consumed: set[str] = set()
        self._ordinal = 0
        self._opened = utcnow()

    # -- identity ----------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The id of the run."""
        return self._driver.run.id

    @property
    def phase(self) -> str:
        """The name of the current phase."""
        return self._phase.name

    @property
    def attempt(self) -> int:
        """How many times this phase has been entered in this run (1 the first time)."""
        return self._driver.run.attempts.get(self._phase.name, 1)

    @property
    def workflow(self) -> str:
        """The workflow's name."""
        return self._driver.workflow.name

    @property
    def overrides(self) -> Mapping[str, Any]:
        """The what-if values of a fork (``engine.fork(..., overrides=...)``); empty otherwise.

        Read-only and recorded in the fork's first event, so they hold on every resume.
        """
        parent = self._driver.run.parent or {}
        return MappingProxyType(copy_json(parent.get("overrides") or {}))

    @property
    def engine(self) -> Engine:
        """The engine driving the run."""
        return self._driver.engine

    @property
    def is_replaying(self) -> bool:
        """True while recorded calls of this phase visit remain to be served from the log."""
        return any(key not in self._consumed for key in self._recorded_at_start)

    @property
    def idempotency_key(self) -> str:
        """Inside a step: that step's stable key (see :func:`idempotency_key`); outside: the phase visit's."""
        return _STEP_KEY.get() or f"{self.run_id}:{self._visit}"

    # -- journal -----------------------------------------------------------------------

    def _next_key(self) -> str:
        key = str(self._ordinal)
        self._ordinal += 1
        return key

    def _lookup(self, key: str, kind: str, name: str, fingerprint: str | None = None) -> dict[str, Any] | None:
        run = self._driver.run
        entry = run.journal.get(key)
        if entry is None:
            failures = run.failures.get(key)
            if failures and failures[-1].get("name") not in (None, name):
                raise NonDeterminismError(
                    self.run_id, key, f"failed attempts of {failures[-1]['name']!r}", f"{kind} {name!r}"
                )
            self._driver.check_boundary()  # about to go live: stop here if cancelled or released
            self._check_deadline()
            return None
        if entry["kind"] != kind or entry["name"] != name:
            raise NonDeterminismError(
                self.run_id, entry["seq"], f"{entry['kind']} {entry['name']!r}", f"{kind} {name!r}"
            )
        if fingerprint is not None and entry["fingerprint"] not in (None, fingerprint):
            raise NonDeterminismError(
                self.run_id, entry["seq"],
                f"{kind} {name!r} with inputs {entry['fingerprint']}",
                f"{kind} {name!r} with other inputs ({fingerprint})",
            )
        self._consumed.add(key)
        self._driver.replayed += 1
        return entry

    def _check_consumed(self) -> None:
        left = [e for k, e in self._recorded_at_start.items() if k not in self._consumed]
        if left:
            first = min(left, key=lambda e: e["seq"])
            raise NonDeterminismError(
                self.run_id, first["seq"], f"{first['kind']} {first['name']!r}",
                f"no further call (phase {self.phase!r} finished with {len(left)} recorded call(s) unused)",
            )

    def _record_result(
        self, key: str, kind: str, name: str, result: Any, *, fingerprint: str | None = None,
        usage: dict[str, Any] | None = None, duration: float = 0.0, error: dict[str, Any] | None = None,
        detail: dict[str, Any] | None = None, what: str | None = None,
    ) -> Any:
        """Record a finished call (encoding ``result``) and return the value code should see."""
        data, result_type = encode_value(result, what or f"the result of {kind} {name!r}")
        run = self._driver.run
        self._driver.record(
            WorkflowRun.StepRecorded, seq=run.next_seq, key=key, name=name, kind=kind, result=data,
            result_type=result_type, fingerprint=fingerprint, usage=usage, duration=round(duration, 6),
            error=error, detail=detail,
        )
        self._consumed.add(key)
        self._driver.executed += 1
        return decode_value(data, result_type)

    async def _wait_until(self, when: datetime | None, reason: str, signal: str | None = None) -> None:
        if when is None:
            return
        remaining = (when - utcnow()).total_seconds()
        if remaining <= 0:
            return
        if remaining > self.engine.max_inline_wait:
            self._driver.record(WorkflowRun.RunSuspended, reason=reason, until=when, signal=signal)
            raise Suspended()
        await self._driver.commit()
        while remaining > 0:  # the loop's clock may wake a hair early: never return before `when`
            await asyncio.sleep(remaining)
            remaining = (when - utcnow()).total_seconds()

    def _deadline(self) -> tuple[datetime, str, str] | None:
        """The phase's or the run's deadline, whichever comes first: (when, scope, name)."""
        run = self._driver.run
        found = []
        if self._phase.timeout is not None:
            entered = getattr(run, "phase_entered_on", None) or self._opened  # a snapshot older than the field
            found.append((entered + timedelta(seconds=self._phase.timeout), "phase", self._phase.name))
        if self._driver.workflow.timeout is not None:
            found.append((run.created_on + timedelta(seconds=self._driver.workflow.timeout), "run",
                          self._driver.workflow.name))
        return min(found) if found else None

    def _check_deadline(self, by: datetime | None = None) -> None:
        """Raise :class:`DeadlineExceeded` if a deadline passed (or will have, at ``by``)."""
        deadline = self._deadline()
        if deadline is not None and (by or utcnow()) >= deadline[0]:
            raise DeadlineExceeded(self.run_id, deadline[1], deadline[2], deadline[0])

    def _time_left(self, first_started: datetime, attempt_timeout: float | None,
                   total_timeout: float | None) -> tuple[float, str] | None:
        """The tightest bound on the next attempt: (seconds, "attempt" | "total" | "deadline")."""
        now = utcnow()
        bounds = []
        if attempt_timeout is not None:
            bounds.append((attempt_timeout, "attempt"))
        if total_timeout is not None:
            bounds.append(((first_started + timedelta(seconds=total_timeout) - now).total_seconds(), "total"))
        deadline = self._deadline()
        if deadline is not None:
            bounds.append(((deadline[0] - now).total_seconds(), "deadline"))
        return min(bounds) if bounds else None

    def _out_of_time(self, bound: str, name: str, attempt_timeout: float | None,
                     total_timeout: float | None) -> BaseException:
        if bound == "deadline":
            deadline = self._deadline()
            assert deadline is not None
            return DeadlineExceeded(self.run_id, deadline[1], deadline[2], deadline[0])
        return StepTimeout(name, attempt_timeout if bound == "attempt" else total_timeout)  # type: ignore[arg-type]

    def _policy(self, retry: RetryPolicy | None) -> RetryPolicy:
        return retry or self._phase.retry or self._driver.workflow.retry or self.engine.retry_policy

    async def _journaled(
        self, key: str, kind: str, name: str, call: Callable[[], Any], *,
        retry: RetryPolicy | None = None, breaker: str | None = None, fingerprint: str | None = None,
        usage_of: Callable[[Any], dict[str, Any] | None] | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None,
    ) -> Any:
        """Serve a call from the journal, or run it with retries and record its result.

        Each attempt is bounded by ``attempt_timeout``, by what is left of ``total_timeout``
        (from the first attempt's recorded start) and by the phase's and run's deadlines.
        """
        entry = self._lookup(key, kind, name, fingerprint)
        if entry is not None:
            if entry["error"]:
                raise rebuild_error(entry["error"])
            return decode_value(entry["result"], entry["result_type"])
        policy = self._policy(retry)
        run = self._driver.run
        failures = run.failures.get(key, [])
        attempt = 1 + sum(1 for f in failures if f["error_type"] != CircuitOpen.__name__)
        if failures:
            last = failures[-1]
            exhausted = last["error_type"] != CircuitOpen.__name__ and last["attempt"] >= policy.max_attempts
            if not last["retryable"] or exhausted:
                raise StepFailed(name, last["error_type"], last["message"], last["attempt"])
            if last["retry_at"] is not None:
                self._check_deadline(by=last["retry_at"])  # live, the retry was refused for the deadline
            await self._wait_until(last["retry_at"], "retry")
        await self._driver.claim()
        circuit = self.engine.breaker(breaker) if breaker else None
        first_started = (failures[0].get("started_at") if failures else None) or utcnow()
        while True:
            started = time.perf_counter()
            token = _STEP_KEY.set(f"{self.run_id}:{self._visit}.{key}")
            try:
                if circuit is not None:
                    circuit.before_call()
                bound = self._time_left(first_started, attempt_timeout, total_timeout)
                if bound is not None and bound[0] <= 0:
                    raise self._out_of_time(bound[1], name, attempt_timeout, total_timeout)
                result = call()
                if inspect.isawaitable(result):
                    if bound is None:
                        result = await result
                    else:
                        limit = asyncio.timeout(bound[0])
                        try:
                            async with limit:
                                result = await result
                        except TimeoutError:
                            if not limit.expired():
                                raise  # the call's own TimeoutError, not this bound
                            raise self._out_of_time(bound[1], name, attempt_timeout, total_timeout) from None
                encode_value(result, f"the result of {kind} {name!r}")  # fail before recording
            except (SerializationError, NonDeterminismError, DeadlineExceeded):
                raise
            except Exception as exc:
                # A refusal by an open breaker never reached the provider: it is retried
                # without using up an attempt, after the breaker's reset timeout.
                refused = isinstance(exc, CircuitOpen)
                if circuit is not None and not refused:
                    circuit.record_failure()
                retryable = refused or policy.is_retryable(exc)
                spent = total_timeout is not None and isinstance(exc, StepTimeout) and exc.seconds == total_timeout
                final = spent or not retryable or (not refused and attempt >= policy.max_attempts)
                delay = 0.0 if final else policy.delay(attempt)
                if refused:
                    delay = max(delay, exc.retry_in)
                retry_after = getattr(exc, "retry_after", None)  # a provider's Retry-After (pydantic-ai)
                if not final and isinstance(retry_after, (int, float)) and not isinstance(retry_after, bool):
                    delay = max(delay, min(float(retry_after), policy.max_delay))
                retry_at = None if final else utcnow() + timedelta(seconds=delay)
                if retry_at is not None and total_timeout is not None:
                    if retry_at >= first_started + timedelta(seconds=total_timeout):
                        final, retry_at = True, None  # no time left for another attempt
                self._driver.record(
                    WorkflowRun.StepAttemptFailed, seq=self._driver.run.next_seq, key=key, name=name,
                    error_type=type(exc).__name__, message=str(exc)[:2000], retryable=retryable,
                    attempt=attempt, retry_at=retry_at, started_at=first_started,
                )
                await self._driver.commit()
                if final:
                    raise StepFailed(name, type(exc).__name__, str(exc), attempt) from exc
                self._check_deadline(by=retry_at)  # the next attempt would start after the deadline
                await self._wait_until(retry_at, "retry")
                if not refused:
                    attempt += 1
                continue
            finally:
                _STEP_KEY.reset(token)
            if circuit is not None:
                circuit.record_success()
            value = self._record_result(
                key, kind, name, result, fingerprint=fingerprint, duration=time.perf_counter() - started,
                usage=usage_of(result) if usage_of else None,
            )
            await self._driver.step_recorded()
            return value

    # -- the operations handlers use ---------------------------------------------------

    async def _run_handler(self, handler: Callable[[Context[Any]], Any]) -> Any:
        """Run the phase handler with this context as the task's current context."""
        token = _CURRENT_CONTEXT.set(self)
        try:
            return await handler(self)
        finally:
            _CURRENT_CONTEXT.reset(token)

    async def run_agent(self, agent: Any, user_prompt: Any = None, /, **kwargs: Any) -> Any:
        """Run a pydantic-ai agent durably: each model request and tool call is journaled.

        The agent needs the :class:`~phaseledger.PhaseledgerDurability` capability. On replay
        recorded responses and tool results come from the log, so no token is paid twice.
        ``kwargs`` are those of ``agent.run`` (``deps``, ``message_history``, ``output_type``, ...);
        returns its ``AgentRunResult``. See ``docs/agents.md``.
        """
        from phaseledger.agents import run_agent

        return await run_agent(self, agent, user_prompt, **kwargs)

    async def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any,
        retry: RetryPolicy | None = None, breaker: str | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None, **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync or async) once and record its result.

        On replay the recorded result is returned and ``fn`` is not called. Results are JSON
        values or pydantic models and come back as the same type. ``retry`` overrides the
        phase, workflow and engine policies; ``breaker`` names a shared circuit breaker.
        Raises :class:`~phaseledger.StepFailed` when attempts are exhausted.

        ``attempt_timeout`` bounds each attempt and ``total_timeout`` all of them together,
        counted from the first attempt's recorded start (seconds): an attempt that runs
        past either fails with :class:`~phaseledger.StepTimeout`, which the retry policy
        handles like any failure (no retry once ``total_timeout`` is spent). The phase's and
        the run's deadlines bound every attempt too (:class:`~phaseledger.DeadlineExceeded`).
        A bounded synchronous ``fn`` runs in a worker thread, so the loop (and the lease's
        heartbeat) keeps running; when a bound fires, that thread is left to finish alone.

        ``retry``, ``breaker``, ``attempt_timeout`` and ``total_timeout`` are this method's
        own options, never passed to ``fn``. When ``fn`` itself takes a parameter of one of
        those names, passing that name here is ambiguous and raises :class:`TypeError`
        (bind ``fn``'s argument with :func:`functools.partial` or a lambda instead).
        """
        options = {"retry": retry, "breaker": breaker, "attempt_timeout": attempt_timeout,
                   "total_timeout": total_timeout}
        if any(value is not None for value in options.values()):
            _check_step_options(fn, options)
        call: Callable[[], Any] = lambda: fn(*args, **kwargs)  # noqa: E731
        bounded = attempt_timeout is not None or total_timeout is not None or self._deadline() is not None
        if bounded and not inspect.iscoroutinefunction(fn):
            call = lambda: asyncio.to_thread(fn, *args, **kwargs)  # noqa: E731  (the context goes along)
        return await self._journaled(
            self._next_key(), "step", name, call, retry=retry, breaker=breaker,
            attempt_timeout=attempt_timeout, total_timeout=total_timeout,
        )

    def now(self) -> datetime:
        """The current UTC time, recorded: replay sees the same value."""
        key = self._next_key()
        entry = self._lookup(key, "clock", "now")
        if entry is not None:
            return datetime.fromisoformat(entry["result"])
        value = utcnow()
        self._record_result(key, "clock", "now", value.isoformat())
        self._driver.unsaved_steps += 1
        return value

    def uuid(self) -> _uuid.UUID:
        """A random UUID4, recorded: replay sees the same value."""
        key = self._next_key()
        entry = self._lookup(key, "random", "uuid")
        if entry is not None:
            return _uuid.UUID(entry["result"])
        value = _uuid.uuid4()
        self._record_result(key, "random", "uuid", str(value))
        self._driver.unsaved_steps += 1
        return value

    def random(self) -> float:
        """A random float in [0, 1), recorded: replay sees the same value."""
        key = self._next_key()
        entry = self._lookup(key, "random", "random")
        if entry is not None:
            return float(entry["result"])
        value = _random.random()
        self._record_result(key, "random", "random", value)
        self._driver.unsaved_steps += 1
        return value

    async def checkpoint(self, label: str) -> None:
        """Record the state explicitly under ``label`` (``CheckpointSaved``) and commit.

        On replay the state recorded here is restored when it differs from the handler's
        (a fork that edited the state at this checkpoint); otherwise ``ctx.state`` is
        left as it is.
        """
        key = self._next_key()
        entry = self._lookup(key, "checkpoint", label)
        if entry is not None:
            recorded = entry.get("result")
            if recorded is not None and recorded != self._dump_state():
                self.state = self._driver.workflow.state_model.model_validate(copy_json(recorded))
            return
        run = self._driver.run
        self._driver.record(
            WorkflowRun.CheckpointSaved, seq=run.next_seq, key=key, label=label, state=self._dump_state()
        )
        self._consumed.add(key)
        await self._driver.commit()
        self.engine.hooks.checkpoint(self._driver.run, label)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` durably: the wake time is recorded, so a crash changes nothing.

        Long sleeps suspend the run (status ``sleeping``) and free the engine; a worker or
        ``engine.resume`` continues it when it is due.
        """
        key = self._next_key()
        if self._lookup(key, "timer", "sleep") is not None:
            return
        run = self._driver.run
        wake_at = run.timers.get(key)
        if wake_at is None:
            wake_at = utcnow() + timedelta(seconds=max(0.0, seconds))
            self._driver.record(WorkflowRun.TimerStarted, seq=run.next_seq, key=key, wake_at=wake_at)
        await self._wait_until(wake_at, "sleep")
        self._record_result(key, "timer", "sleep", wake_at.isoformat())
        await self._driver.step_recorded()

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """Return the payload of a ``name`` signal, suspending the run durably until one arrives.

        The payload is the workflow's declared model for that signal, else JSON. A signal
        sent before the wait is kept and taken here. With ``timeout`` (seconds) and no
        signal by then, raises :class:`~phaseledger.SignalTimeout`.
        """
        key = self._next_key()
        model = self._driver.workflow.signals.get(name)
        entry = self._lookup(key, "signal", name)
        if entry is not None:
            if entry["error"]:
                raise rebuild_error(entry["error"])
            return model.model_validate(entry["result"]) if model else copy_json(entry["result"])
        run = self._driver.run
        for signal in run.inbox:
            if signal["name"] == name:
                self._record_result(key, "signal", name, signal["payload"], detail={"signal_id": signal["signal_id"]})
                await self._driver.commit()
                return model.model_validate(signal["payload"]) if model else copy_json(signal["payload"])
        wake_at = run.timers.get(key)
        if timeout is not None and wake_at is None:
            wake_at = utcnow() + timedelta(seconds=timeout)
            self._driver.record(WorkflowRun.TimerStarted, seq=run.next_seq, key=key, wake_at=wake_at)
        if wake_at is not None and utcnow() >= wake_at:
            error = {"type": "SignalTimeout", "message": name, "timeout": timeout}
            self._record_result(key, "signal", name, None, error=error)
            await self._driver.commit()
            raise SignalTimeout(name, timeout or 0.0)
        self._driver.record(WorkflowRun.RunSuspended, reason="signal", until=wake_at, signal=name)
        raise Suspended()

    def _dump_state(self) -> dict[str, Any]:
        try:
            return self.state.model_dump(mode="json")
        except Exception as exc:
            raise SerializationError(f"the state of run {self.run_id!r} cannot be serialised: {exc}") from exc



_STEP_OPTIONS = ("retry", "breaker", "attempt_timeout", "total_timeout")


def _check_step_options(fn: Callable[..., Any], given: Mapping[str, Any]) -> None:
    """Refuse ``ctx.step`` options that ``fn`` could have been meant to receive, or of the wrong type."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature take no such keyword
        parameters = {}  # type: ignore[assignment]
    bound = fn.keywords if isinstance(fn, functools.partial) else {}  # the function's own, bound already
    for name in _STEP_OPTIONS:
        if given[name] is not None and name in parameters and name not in bound:
            raise TypeError(
                f"ctx.step(..., {name}=...) is ambiguous: {getattr(fn, '__name__', fn)!r} takes a parameter "
                f"named {name!r}, but {name}= is ctx.step's own option. Pass the function's argument with "
                f"functools.partial(fn, {name}=...) (or a lambda), and the step option, if any, as {name}= here"
            )
    retry, breaker = given["retry"], given["breaker"]
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"ctx.step(..., retry=...) takes a RetryPolicy, got {type(retry).__name__}: "
                        "to pass retry= to the function, use functools.partial")
    if breaker is not None and not isinstance(breaker, str):
        raise TypeError(f"ctx.step(..., breaker=...) takes a circuit breaker's name, got {type(breaker).__name__}")
    for name in ("attempt_timeout", "total_timeout"):
        value = given[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise TypeError(f"ctx.step(..., {name}=...) takes a number of seconds > 0, got {value!r}")
