"""``ctx.run_agent``: run a durable agent inside a phase handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_ai.agent import AbstractAgent

from phaseledger.domain.errors import PhaseledgerError
from phaseledger.engine.agents._capability import PhaseledgerDurability
from phaseledger.engine.context import _CURRENT_CONTEXT

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from phaseledger.engine.context import Context


class AgentNotDurable(PhaseledgerError):
    """``ctx.run_agent`` was given an agent without the ``PhaseledgerDurability`` capability."""


async def run_agent(ctx: Context[Any], agent: AbstractAgent[Any, Any], user_prompt: Any = None, /,
                    **kwargs: Any) -> AgentRunResult[Any]:
    """Run ``agent`` in the phase handler of ``ctx``, journaling its model requests and tool calls.

    Replayed work is kept out of traces (``AgentRunReplayScope``, part of the capability). Raises
    :class:`AgentNotDurable` when the agent lacks the capability: its calls would not be
    journaled and would run again, and be paid again, on every replay.
    """
    if not isinstance(agent, AbstractAgent):
        raise TypeError(f"ctx.run_agent() takes a pydantic-ai agent, got {type(agent).__name__}")
    if PhaseledgerDurability.from_agent(agent) is None:
        raise AgentNotDurable(
            f"agent {agent.name!r} has no PhaseledgerDurability capability, so its model requests and tool "
            "calls would not be journaled: build it with "
            "Agent(..., name='...', capabilities=[PhaseledgerDurability()])"
        )
    context_token = _CURRENT_CONTEXT.set(ctx)
    try:
        return await agent.run(user_prompt, **kwargs)
    finally:
        _CURRENT_CONTEXT.reset(context_token)
