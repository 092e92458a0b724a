"""``ctx.run_agent``: run a durable agent inside a phase handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_ai.agent import AbstractAgent

from phaseledger.agents._capability import PhaseledgerDurability
from phaseledger.domain.errors import PhaseledgerError

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from phaseledger.engine.context import Context


class AgentNotDurable(PhaseledgerError):
    """``ctx.run_agent`` was given an agent it cannot make durable (it has no name)."""


async def run_agent(ctx: Context[Any], agent: AbstractAgent[Any, Any], user_prompt: Any = None, /,
                    **kwargs: Any) -> AgentRunResult[Any]:
    """Run ``agent`` in the phase handler of ``ctx``, journaling its model requests and tool calls.

    Call it from that handler (or use ``ctx.run_agent``): the units are journaled in the
    phase visit of the handler running in this task.

    Any named agent can be run durably: one built without the ``PhaseledgerDurability``
    capability gets it for this run (pydantic-ai's ``run(capabilities=...)``). Replayed work
    is kept out of traces (``AgentRunReplayScope``, part of the capability). Raises
    :class:`AgentNotDurable` for an agent without a name: its units are journaled under it,
    so the name is part of the log's contract.
    """
    if not isinstance(agent, AbstractAgent):
        raise TypeError(f"ctx.run_agent() takes a pydantic-ai agent, got {type(agent).__name__}")
    if PhaseledgerDurability.from_agent(agent) is None:
        if not agent.name:
            raise AgentNotDurable(
                "ctx.run_agent() needs a named agent: its model requests and tool calls are journaled under the "
                "agent's name, so give it one that stays the same across deploys (Agent(..., name='...'))"
            )
        extra = list(kwargs.pop("capabilities", None) or [])
        if not any(isinstance(c, PhaseledgerDurability) for c in extra):
            extra.append(PhaseledgerDurability())
        kwargs["capabilities"] = extra
    return await agent.run(user_prompt, **kwargs)
