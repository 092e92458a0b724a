"""The journal backend: pydantic-ai hands each durable unit to :meth:`PhaseledgerBackend.execute`.

pydantic-ai's ``CallableOperationBackend`` owns naming (``JournalOperationNamer``), the JSON
codec and per-tool configuration; phaseledger supplies the durable primitive: a unit is
served from, or recorded in, the journal of the workflow run whose phase handler is
running (see :mod:`phaseledger.agents._units`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic_ai.durable_exec import (
    JSON_CODEC,
    DurableOperationId,
    JournalCallableOperationBackend,
    ModelRequestId,
    RoleBasedOperationConfig,
)
from pydantic_ai.messages import ModelResponse
from pydantic_ai.tools import RunContext

from phaseledger.agents._identity import identify
from phaseledger.agents._scope import AGENT_RUN, ON_UNIT_COMMIT, container_journal, phase_agents
from phaseledger.agents._units import UnitConfig, run_unit
from phaseledger.agents._usage import model_usage
from phaseledger.domain.effects import Effect
from phaseledger.domain.errors import PhaseledgerError

TOOL_CONFIG_KEY = "phaseledger"
"""Tool metadata key of per-tool settings: ``{"phaseledger": {"retry": RetryPolicy(...), "breaker": "name",
"effect": Effect(...)}}``, or ``{"phaseledger": False}`` to run a tool inline (not journaled, re-run on replay)."""


def _model_usage(payload: Any) -> dict[str, Any]:
    return model_usage(JSON_CODEC.load(ModelResponse, payload))


def tool_config_resolver(base: UnitConfig) -> Callable[[DurableOperationId, object | None, str], UnitConfig | Literal[False]]:
    """Read a tool's ``{"phaseledger": ...}`` metadata into its :class:`UnitConfig`."""

    def resolve(operation_id: DurableOperationId, tool: object | None, tool_name: str) -> UnitConfig | Literal[False]:
        tool_def = getattr(tool, "tool_def", None)
        metadata = getattr(tool_def, "metadata", None) or {}
        setting = metadata.get(TOOL_CONFIG_KEY)
        if setting is None or tool is None:
            return base
        if setting is False:
            return False
        if isinstance(setting, UnitConfig):
            return setting
        if isinstance(setting, dict) and set(setting) <= {"retry", "breaker", "effect"}:
            return UnitConfig(retry=setting.get("retry", base.retry), breaker=setting.get("breaker", base.breaker),
                              effect=Effect.of(setting.get("effect")))
        raise PhaseledgerError(
            f"tool {tool_name!r} has invalid {TOOL_CONFIG_KEY!r} metadata {setting!r}: use False, "
            "a UnitConfig, or a dict with 'retry' (a RetryPolicy), 'breaker' (a breaker name) and/or "
            "'effect' (an Effect, a policy name or True)"
        )

    return resolve


class PhaseledgerBackend(JournalCallableOperationBackend[UnitConfig]):
    """Runs pydantic-ai's durable units as journaled calls of the current workflow run."""

    def __init__(
        self, *, agent_name: str, default_model_id: str | None, model: UnitConfig, tool: UnitConfig
    ) -> None:
        super().__init__(
            agent_name=agent_name,
            default_model_id=default_model_id,
            config=RoleBasedOperationConfig(
                model=model, event=UnitConfig(), capability=UnitConfig(), tool=tool,
                resolve_tool=tool_config_resolver(tool),
            ),
        )

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: UnitConfig,
    ) -> object:
        """Serve the unit from the journal or run and record it (outside a workflow: just run it)."""
        journal = container_journal()
        if journal is None:  # the base only dispatches in the container; be transparent if called elsewhere
            return await body()
        run_context = next((item for item in cache_key if isinstance(item, RunContext)), None)
        run_id = run_context.run_id if run_context is not None else AGENT_RUN.get()
        agent_run = phase_agents(journal).run(run_id)
        identity = identify(operation_id, name, cache_key, agent_run.digests)
        model_id = None
        if isinstance(operation_id, ModelRequestId):
            model_id = operation_id.model_id or operation_id.model_name
        return await run_unit(
            journal, agent_run, identity, name, body, config, model_id=model_id,
            usage_of=_model_usage if identity.is_model_request else None,
            on_commit=ON_UNIT_COMMIT.get(),
        )
