"""Durable pydantic-ai agents: every model request and tool call journaled in the run's log.

``PhaseledgerDurability`` is a durability engine on pydantic-ai's public
``pydantic_ai.durable_exec`` surface (a peer of its Temporal, DBOS and Prefect
integrations). Attach it to an agent, run the agent inside a phase handler
(``ctx.run_agent(agent, prompt)`` or ``agent.run(prompt)``), and a resumed run serves
recorded model responses and tool results from the log instead of paying for them again.
``DurableAgent`` runs one agent as a single-phase workflow. See ``docs/agents.md``.
"""

from phaseledger.agents._version import SUPPORTED_PYDANTIC_AI, UnsupportedPydanticAI, check_pydantic_ai_version

PYDANTIC_AI_VERSION = check_pydantic_ai_version()
"""The installed pydantic-ai version (checked against ``SUPPORTED_PYDANTIC_AI`` at import)."""

from phaseledger.agents._backend import TOOL_CONFIG_KEY, PhaseledgerBackend  # noqa: E402
from phaseledger.agents._capability import PhaseledgerDurability  # noqa: E402
from phaseledger.agents._durable_agent import AgentRunFailed, DurableAgent, DurableAgentResult  # noqa: E402
from phaseledger.agents._units import UnitConfig  # noqa: E402
from phaseledger.agents.run import AgentNotDurable, run_agent  # noqa: E402

__all__ = [
    "PYDANTIC_AI_VERSION",
    "SUPPORTED_PYDANTIC_AI",
    "TOOL_CONFIG_KEY",
    "AgentNotDurable",
    "AgentRunFailed",
    "DurableAgent",
    "DurableAgentResult",
    "PhaseledgerBackend",
    "PhaseledgerDurability",
    "UnitConfig",
    "UnsupportedPydanticAI",
    "check_pydantic_ai_version",
    "run_agent",
]
