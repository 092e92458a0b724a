"""Running one durable unit against the run's journal: replay it, or run it and record it.

This is the engine side of :meth:`PhaseledgerBackend.execute`. A recorded unit is served
from the journal (its encoded result, or its recorded failure raised again, rebuilt from
plain data by :func:`~phaseledger.domain.recorded_errors.rebuild_error`). Otherwise the
unit's body runs with the retry policy and circuit breaker of its configuration; every
failed attempt is recorded (``StepAttemptFailed``) so backoff survives a crash, and the
encoded result is recorded as ``StepRecorded``. The live path returns the same decoded
copy that replay returns.

A unit that still fails when its attempts are exhausted raises its original exception to
pydantic-ai (so a ``ModelFallback`` or an error hook sees the real error). The failure is
*pending*: journaled when the agent run shows it handled it, dropped when the run fails.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic_ai.durable_exec import record_durable_unit

from phaseledger.agents._scope import IN_UNIT, AgentRunJournal, PendingFailure
from phaseledger.agents._usage import UNIT_USAGE, UnitUsage, run_usage_from_json
from phaseledger.domain.errors import (
    CircuitOpen,
    NonDeterminismError,
    PhaseledgerError,
    SerializationError,
)
from phaseledger.domain.recorded_errors import describe_error, rebuild_error
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.values import copy_json
from phaseledger.engine.context import _STEP_KEY, utcnow

if TYPE_CHECKING:
    from phaseledger.agents._identity import UnitIdentity
    from phaseledger.engine.context import Context

UnitCommitted = Callable[[str, str], Any]


@dataclass(frozen=True)
class UnitConfig:
    """How the units of one role (model requests, tool calls, ...) are run.

    ``retry`` None uses the phase's, then the workflow's, then the engine's policy.
    ``breaker`` names an engine circuit breaker (``engine.breaker(name)``); for model
    requests it may be a callable taking the model id (``"openai:gpt-4o"``) and returning a
    breaker name or None.
    """

    retry: RetryPolicy | None = None
    breaker: str | Callable[[str], str | None] | None = None


def _check(ctx: Context[Any], key: str, identity: UnitIdentity, name: str) -> dict[str, Any] | None:
    try:
        return ctx._lookup(key, identity.kind, name, identity.fingerprint)
    except NonDeterminismError:
        entry = ctx._driver.run.journal.get(key)
        if entry is None or entry["name"] != name or entry["kind"] != identity.kind:
            raise
        model = (entry.get("usage") or {}).get("model")
        recorded = f"{identity.kind} {name!r}" + (f" answered by model {model!r}" if model else "")
        raise NonDeterminismError(
            ctx.run_id, entry["seq"], f"{recorded} with other inputs (fingerprint {entry['fingerprint']})",
            f"{identity.asked} (fingerprint {identity.fingerprint})",
        ) from None


def flush_pending(ctx: Context[Any], journal: AgentRunJournal) -> None:
    """Journal the failures this agent run has handled (see :class:`PendingFailure`)."""
    while journal.pending:
        failure = journal.pending.pop(0)
        if failure.key in ctx._driver.run.journal:
            continue
        ctx._record_result(
            failure.key, failure.kind, failure.name, None, fingerprint=failure.fingerprint, error=failure.error
        )
        ctx._driver.unsaved_steps += 1


def _breaker_name(config: UnitConfig, model_id: str | None) -> str | None:
    breaker = config.breaker
    if breaker is None or isinstance(breaker, str):
        return breaker
    return breaker(model_id or "default")


async def run_unit(
    ctx: Context[Any],
    journal: AgentRunJournal,
    identity: UnitIdentity,
    name: str,
    body: Callable[[], Awaitable[object]],
    config: UnitConfig,
    *,
    model_id: str | None = None,
    usage_of: Callable[[Any], dict[str, Any] | None] | None = None,
    on_commit: UnitCommitted | None = None,
) -> Any:
    """Serve a unit from the journal or run it live and record it; return its encoded result."""
    key = journal.key_for(identity.slot, identity.unit_id) if identity.unit_id else journal.next_key(identity.slot)
    if identity.is_model_request:
        flush_pending(ctx, journal)  # a new request: earlier failures of this run were handled
    entry = _check(ctx, key, identity, name)
    if entry is not None:
        record_durable_unit(executed=False)
        if entry["error"]:
            raise rebuild_error(entry["error"])
        shared = (entry.get("detail") or {}).get("run_usage")
        if shared and identity.run_context is not None:
            identity.run_context.usage.incr(run_usage_from_json(shared))
        return copy_json(entry["result"])
    return await _run_live(ctx, journal, key, identity, name, body, config, model_id, usage_of, on_commit)


async def _run_live(
    ctx: Context[Any], journal: AgentRunJournal, key: str, identity: UnitIdentity, name: str,
    body: Callable[[], Awaitable[object]], config: UnitConfig, model_id: str | None,
    usage_of: Callable[[Any], dict[str, Any] | None] | None, on_commit: UnitCommitted | None,
) -> Any:
    driver = ctx._driver
    policy = ctx._policy(config.retry)
    failures = driver.run.failures.get(key, [])
    attempt = len(failures) + 1
    if failures:
        last = failures[-1]
        if not last["retryable"] or last["attempt"] >= policy.max_attempts:
            attempt = 1  # that failure ended an attempt of the run unhandled: run the unit again, like a crash
        else:
            await ctx._wait_until(last["retry_at"], "retry")
    breaker = _breaker_name(config, model_id)
    circuit = ctx.engine.breaker(breaker) if breaker else None
    caller_usage = identity.run_context.usage if identity.run_context is not None else None
    while True:
        started = time.perf_counter()
        collector = UnitUsage(caller_usage)
        tokens = (_STEP_KEY.set(f"{ctx.run_id}:{ctx._visit}.{key}"), IN_UNIT.set(True), UNIT_USAGE.set(collector))
        try:
            if circuit is not None:
                circuit.before_call()
            result = body()
            payload = await result if inspect.isawaitable(result) else result
        except (SerializationError, NonDeterminismError):
            raise
        except Exception as exc:
            if circuit is not None and not isinstance(exc, CircuitOpen):
                circuit.record_failure()
            retryable = isinstance(exc, CircuitOpen) or policy.is_retryable(exc)
            final = not retryable or attempt >= policy.max_attempts
            delay = 0.0 if final else policy.delay(attempt)
            if isinstance(exc, CircuitOpen):
                delay = max(delay, exc.retry_in)
            retry_at = None if final else utcnow() + timedelta(seconds=delay)
            driver.record(
                WorkflowRun.StepAttemptFailed, seq=driver.run.next_seq, key=key, name=name,
                error_type=type(exc).__name__, message=str(exc)[:2000], retryable=retryable,
                attempt=attempt, retry_at=retry_at, started_at=None,
            )
            await driver.commit()
            if final:
                if not isinstance(exc, PhaseledgerError):
                    failure = PendingFailure(key, identity.kind, name, identity.fingerprint, describe_error(exc))
                    journal.pending.append(failure)
                raise
            await ctx._wait_until(retry_at, "retry")
            attempt += 1
            continue
        finally:
            UNIT_USAGE.reset(tokens[2])
            IN_UNIT.reset(tokens[1])
            _STEP_KEY.reset(tokens[0])
        break
    if circuit is not None:
        circuit.record_success()
    usage = usage_of(payload) if usage_of is not None else None
    delegated, shared = collector.recorded()
    if delegated is not None:
        usage = _merge_usage(usage, delegated)
    value = ctx._record_result(
        key, identity.kind, name, payload, fingerprint=identity.fingerprint, usage=usage,
        duration=time.perf_counter() - started, detail={"run_usage": shared} if shared else None,
        what=f"the result of {name!r}",
    )
    record_durable_unit(executed=True)
    await driver.step_recorded()
    if on_commit is not None and driver.unsaved_steps == 0:
        on_commit(ctx.run_id, name)
    return value


def _merge_usage(usage: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    merged = dict(usage or {})
    for field in ("requests", "input_tokens", "output_tokens"):
        merged[field] = merged.get(field, 0) + more.get(field, 0)
    if more.get("cost") is not None:
        merged["cost"] = round(merged.get("cost", 0.0) + more["cost"], 10)
    return merged
