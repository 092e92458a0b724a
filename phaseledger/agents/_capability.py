"""``PhaseledgerDurability``: the capability that makes a pydantic-ai agent durable in phaseledger.

It is a peer of pydantic-ai's Temporal, DBOS and Prefect integrations, built on the same
public ``pydantic_ai.durable_exec`` surface: ``BaseDurabilityCapability`` wraps the model,
the toolsets and the event stream handler, and routes each model request, tool call,
tool discovery and event delivery through :class:`PhaseledgerBackend`, which journals it
in the workflow run whose phase handler is running. Outside a phase handler the agent is
an ordinary agent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic_ai.agent import AbstractAgent, EventStreamHandler
from pydantic_ai.capabilities import AbstractCapability, CapabilityOrdering, CombinedCapability, Instrumentation
from pydantic_ai.capabilities.abstract import WrapRunHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    conversation_id_from_run_id,
    replay_scope,
)
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models import Model, ModelRequestContext
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import AgentDepsT, RunContext, ToolDefinition

from phaseledger.agents._backend import TOOL_CONFIG_KEY, PhaseledgerBackend
from phaseledger.agents._scope import AGENT_RUN, REPLAY_SCOPED, container_journal, phase_agents
from phaseledger.agents._units import UnitConfig
from phaseledger.agents._usage import UNIT_USAGE
from phaseledger.domain.errors import SerializationError
from phaseledger.domain.journal import Kind
from phaseledger.domain.retry import RetryPolicy
from phaseledger.engine.journal import utcnow


def _serialization_failure(exc: Exception) -> BaseException:
    return SerializationError(
        f"an agent unit's result cannot be recorded as JSON: {exc}. Return JSON-able values, "
        "pydantic models or dataclasses from tools (BinaryContent for binary data)"
    )


class AgentRunReplayScope(AbstractCapability[Any]):
    """Keep the telemetry of replayed work of a durable agent run out of traces and metrics.

    In a phase handler it runs the agent run inside pydantic-ai's ``replay_scope()``, and the
    journal reports each unit with ``record_durable_unit`` (see ``_units``): a span whose
    units were all served from the journal is never exported, and the token metrics of a
    replayed model request are not recorded again. It wraps pydantic-ai's ``Instrumentation``
    capability, so the scope is open before the run's ``invoke_agent`` span starts: an agent
    run replayed in full exports no span at all, for ``ctx.run_agent(...)`` and a plain
    ``agent.run(...)`` alike. :class:`PhaseledgerDurability` adds it to the agent.
    """

    def get_ordering(self) -> CapabilityOrdering:
        """Outside the instrumentation capability, whose ``wrap_run`` opens the run's span."""
        return CapabilityOrdering(position="outermost", wraps=(Instrumentation,))

    async def wrap_run(self, ctx: RunContext[Any], *, handler: WrapRunHandler) -> AgentRunResult[Any]:
        """Open the replay scope for an agent run in a phase handler (once, if runs nest)."""
        if container_journal() is None or REPLAY_SCOPED.get():
            return await handler()
        token = REPLAY_SCOPED.set(True)
        try:
            with replay_scope():
                return await handler()
        finally:
            REPLAY_SCOPED.reset(token)


@dataclass(init=False, kw_only=True)
class PhaseledgerDurability(BaseDurabilityCapability[AgentDepsT]):
    """Journal an agent's model requests and tool calls in the phaseledger run that runs it.

    Attach it when building the agent (``Agent(..., name="planner",
    capabilities=[PhaseledgerDurability()])``); the agent needs a ``name`` (or pass
    ``name=``), which is part of every journaled unit's name. Inside a phase handler,
    ``await ctx.run_agent(agent, prompt)`` or ``await agent.run(prompt)`` is durable: on
    replay, recorded model responses and tool results come from the log.

    Args:
        models: Extra ``Model`` instances by id, for ``agent.run(model=...)`` with an
            instance (model-name strings need no registration).
        event_stream_handler: Receives live events: model stream events inside each model
            request that runs, tool events once each (replayed work is not delivered again).
        name: The name used in unit names, if not the agent's.
        model_retry: Retry policy of model requests (default: the phase's, workflow's or
            engine's). Provider 429/5xx and timeouts retry; other 4xx fail at once.
        tool_retry: Retry policy of tool calls; per tool with tool metadata
            ``{"phaseledger": {"retry": RetryPolicy(...)}}``.
        model_breaker: An engine circuit breaker for model requests: a name, or a callable
            taking the model id (``"openai:gpt-4o"``) and returning a name (per provider or
            model), or None.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="phaseledger",
        durable_unit_noun="step",
        durable_unit_plural="steps",
        durable_container_noun="phase handler",
        codec=JSON_CODEC,
        serialization_failure=_serialization_failure,
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={"function": "enter-always", "mcp": "enter-in-durable-unit", "dynamic": "enter-never"},
        tool_call_result_upgrade_lenient=False,
        journal_discovery=True,
        sequential_tools_in_durable_context=False,
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        tool_config_key=TOOL_CONFIG_KEY,
    )

    def __init__(
        self,
        *,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        name: str | None = None,
        model_retry: RetryPolicy | None = None,
        tool_retry: RetryPolicy | None = None,
        model_breaker: str | Callable[[str], str | None] | None = None,
    ) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        self.model_retry = model_retry
        self.tool_retry = tool_retry
        self.model_breaker = model_breaker
        self._backend: PhaseledgerBackend | None = None
        self._backend_owner: object = None

    # -- the two abstract members ------------------------------------------------------

    @property
    def in_durable_context(self) -> bool:
        """True in phase handler code; False outside workflows and inside a unit's body."""
        return container_journal() is not None

    def get_durable_operation_backend(self) -> PhaseledgerBackend:
        """The journal backend of this bound copy (built once per copy: names are final there)."""
        if self._backend is None or self._backend_owner is not self:
            self._backend = PhaseledgerBackend(
                agent_name=self.name,
                default_model_id=self.default_model_id,
                model=UnitConfig(retry=self.model_retry, breaker=self.model_breaker),
                tool=UnitConfig(retry=self.tool_retry),
            )
            self._backend_owner = self
        return self._backend

    def for_agent(self, agent: AbstractAgent[AgentDepsT, Any]) -> AbstractCapability[AgentDepsT]:
        """The bound copy for ``agent``, with :class:`AgentRunReplayScope` around the agent's run."""
        return CombinedCapability([AgentRunReplayScope(), super().for_agent(agent)])

    # -- replay-stable identity --------------------------------------------------------

    def get_default_run_id(self) -> str | None:
        """``<run id>:<phase visit>.a<n>`` for the n-th agent run of the phase visit."""
        journal = container_journal()
        return phase_agents(journal).new_run_id() if journal is not None else None

    def get_default_conversation_id(self, run_id: str) -> str | None:
        """Derived from the replay-stable run id inside a workflow."""
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def get_run_start_time(self, run_id: str) -> datetime | None:
        """The agent run's start time, journaled, so ``timeout=`` counts from the first attempt."""
        journal = container_journal()
        if journal is None:
            return None
        key = phase_agents(journal).run(run_id).key_for("start", "time")
        return journal.value(Kind.CLOCK, f"{self.name}.run_start_time", utcnow, datetime.isoformat,
                             datetime.fromisoformat, key=key)

    # -- the run ------------------------------------------------------------------------

    async def wrap_run(self, ctx: RunContext[AgentDepsT], *, handler: WrapRunHandler) -> AgentRunResult[Any]:
        """In a workflow: journal the run's handled failures, and those that ended it once its handler carries on."""
        journal = container_journal()
        if journal is None:
            return await super().wrap_run(ctx, handler=handler)
        agent_run = phase_agents(journal).run(ctx.run_id)
        run_token = AGENT_RUN.set(ctx.run_id)
        try:
            result = await super().wrap_run(ctx, handler=handler)
        except Exception:
            # The failures that ended the agent run reach the handler: journaled if it carries on
            # (so a resumed run raises them again at the same point), not if they fail the run.
            journal.hold_ended(agent_run.run_id)
            raise
        except BaseException:
            journal.drop_held(agent_run.run_id)  # suspended or stopped: no failure of the agent run
            raise
        finally:
            AGENT_RUN.reset(run_token)
        journal.record_held(agent_run.run_id)
        return result

    # -- usage of delegate agents run inside a unit ---------------------------------------

    async def after_model_request(
        self, ctx: RunContext[AgentDepsT], *, request_context: ModelRequestContext, response: ModelResponse
    ) -> ModelResponse:
        """Count a delegate's model request towards the unit that runs it."""
        collector = UNIT_USAGE.get()
        if collector is not None and not self.in_durable_context:
            collector.add_request(ctx.usage, response)
        return response

    async def after_tool_execute(
        self, ctx: RunContext[AgentDepsT], *, call: ToolCallPart, tool_def: ToolDefinition, args: Any, result: Any
    ) -> Any:
        """Count a delegate's tool call towards the unit that runs it."""
        collector = UNIT_USAGE.get()
        if collector is not None and not self.in_durable_context:
            collector.add_tool_call(ctx.usage)
        return result
