"""Running one durable unit against the run's journal: replay it, or run it and record it.

This is the engine side of :meth:`PhaseledgerBackend.execute`, on the phase visit's
:class:`~phaseledger.engine.journal.Journal`. A recorded unit is served from the journal
(its encoded result, or its recorded failure raised again). Otherwise the unit's body runs
with the retry policy and circuit breaker of its configuration, with the same retry
semantics as ``ctx.step`` (every failed attempt recorded, a provider's Retry-After honoured,
refusals by an open breaker using up no attempt), and the encoded result is recorded. The
live path returns the same decoded copy that replay returns.

A unit that still fails when its attempts are exhausted raises its original exception to
pydantic-ai (so a ``ModelFallback`` or an error hook sees the real error). The journal
holds the failure: it is journaled when the agent run shows it handled it (its next model
request, or its success), or, when it ended the agent run, once the phase handler shows it
caught it (its next journaled call, or the end of its phase).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_ai.durable_exec import JSON_CODEC, CallToolResult, record_durable_unit
from pydantic_ai.usage import RunUsage

from phaseledger.agents._scope import IN_UNIT, AgentRunJournal
from phaseledger.agents._usage import UNIT_USAGE, UnitUsage, run_usage_from_json
from phaseledger.domain.effects import Effect
from phaseledger.domain.errors import NonDeterminismError, PhaseledgerError
from phaseledger.domain.journal import RecordedCall
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.usage import add_usage

if TYPE_CHECKING:
    from phaseledger.agents._identity import UnitIdentity
    from phaseledger.engine.journal import Journal

UnitCommitted = Callable[[str, str], Any]


@dataclass(frozen=True)
class UnitConfig:
    """How the units of one role (model requests, tool calls, ...) are run.

    ``retry`` None uses the phase's, then the workflow's, then the engine's policy.
    ``breaker`` names an engine circuit breaker (``engine.breaker(name)``); for model
    requests it may be a callable taking the model id (``"openai:gpt-4o"``) and returning a
    breaker name or None. ``effect`` declares a tool's external effect (see
    :class:`~phaseledger.Effect`): a reconciled or decided result is the tool's return value.
    """

    retry: RetryPolicy | None = None
    breaker: str | Callable[[str], str | None] | None = None
    effect: Effect | None = None


def tool_answer(value: Any) -> Any:
    """The recorded payload of a tool call that returned ``value`` (an effect settled without running it)."""
    try:
        from pydantic_core import to_jsonable_python

        return JSON_CODEC.dump(CallToolResult, JSON_CODEC.load(
            CallToolResult, {"kind": "tool_return", "result": to_jsonable_python(value)}))
    except Exception as exc:
        raise PhaseledgerError(
            f"cannot record {value!r} as a tool's return value ({type(exc).__name__}: {exc}): give a JSON value"
        ) from exc


def _check(journal: Journal, key: str, identity: UnitIdentity, name: str) -> RecordedCall | None:
    try:
        return journal.lookup(key, identity.kind, name, identity.fingerprint)
    except NonDeterminismError:
        entry = journal.recorded(key)
        if entry is None or entry.name != name or entry.kind != identity.kind:
            raise
        model = (entry.usage or {}).get("model")
        recorded = f"{identity.kind} {name!r}" + (f" answered by model {model!r}" if model else "")
        raise NonDeterminismError(
            journal.run_id, entry.seq, f"{recorded} with other inputs (fingerprint {entry.fingerprint})",
            f"{identity.asked} (fingerprint {identity.fingerprint})",
        ) from None


def _breaker_name(config: UnitConfig, model_id: str | None) -> str | None:
    breaker = config.breaker
    if breaker is None or isinstance(breaker, str):
        return breaker
    return breaker(model_id or "default")


class UnitAttempts:
    """Runs a unit's body as unit code (not container code), counting the delegate usage of its latest attempt."""

    def __init__(self, body: Callable[[], Awaitable[object]], caller: RunUsage | None,
                 usage_of: Callable[[Any], dict[str, Any] | None] | None) -> None:
        self.body = body
        self.usage_of = usage_of
        self.collector = UnitUsage(caller)

    async def __call__(self) -> object:
        """One attempt of the body."""
        self.collector = UnitUsage(self.collector.caller)
        tokens = IN_UNIT.set(True), UNIT_USAGE.set(self.collector)
        try:
            return await self.body()
        finally:
            UNIT_USAGE.reset(tokens[1])
            IN_UNIT.reset(tokens[0])

    def outcome(self, payload: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The usage recorded with the unit's result (its own and its delegates'), and the usage they shared."""
        usage = self.usage_of(payload) if self.usage_of is not None else None
        delegated, shared = self.collector.recorded()
        if delegated is not None:
            usage = add_usage(dict(usage or {}), delegated)
        return usage, {"run_usage": shared} if shared else None


async def run_unit(
    journal: Journal,
    agent_run: AgentRunJournal,
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
    key = (agent_run.key_for(identity.slot, identity.unit_id) if identity.unit_id
           else agent_run.next_key(identity.slot))
    if identity.is_model_request:
        journal.record_held(agent_run.run_id)  # a new request: earlier failures of this run were handled
    entry = _check(journal, key, identity, name)
    if entry is not None:
        record_durable_unit(executed=False)
        value = journal.replay(entry)
        shared = (entry.detail or {}).get("run_usage")
        if shared and identity.run_context is not None:
            identity.run_context.usage.incr(run_usage_from_json(shared))
        return value
    caller = identity.run_context.usage if identity.run_context is not None else None
    attempts = UnitAttempts(body, caller, usage_of)
    value = await journal.run(
        key, identity.kind, name, attempts, retry=config.retry, breaker=_breaker_name(config, model_id),
        fingerprint=identity.fingerprint, outcome=attempts.outcome, what=f"the result of {name!r}",
        handled_by=agent_run.run_id, effect=config.effect, answer=tool_answer if config.effect is not None else None,
    )
    record_durable_unit(executed=True)
    if on_commit is not None and journal.saved:
        on_commit(journal.run_id, name)
    return value
