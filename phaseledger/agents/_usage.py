"""Token usage of journaled agent work: what a model entry records, and delegate agents.

A model request's ``StepRecorded.usage`` holds ``requests`` (1), ``input_tokens``,
``output_tokens``, the ``model`` and ``provider`` names and, when the price is known, its
``cost`` in USD. The run aggregate sums them into ``engine.get(run_id).usage``.

Agents called inside a tool (delegates) are ordinary runs inside that tool's unit. When
they carry the :class:`~phaseledger.PhaseledgerDurability` capability their usage is
added to the tool's entry, and what they added to the calling run's shared ``RunUsage``
(``usage=ctx.usage``, pydantic-ai's delegation idiom) is added back when the tool's
result is replayed, so the calling run's usage is the same live and on replay.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pydantic_ai.messages import ModelResponse
from pydantic_ai.usage import RequestUsage, RunUsage

from phaseledger.domain.usage import add_usage

_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def response_cost(response: ModelResponse) -> float | None:
    """The price of a response in USD: the provider's figure, else genai-prices', else None."""
    if response.usage.cost is not None:
        return float(response.usage.cost)
    if not response.model_name:
        return None
    try:
        return float(response.cost().total_price)
    except Exception:  # unknown model or provider: the cost stays unknown (None), not 0
        return None


def model_usage(response: ModelResponse) -> dict[str, Any]:
    """The usage recorded with a model request's entry."""
    usage = response.usage
    recorded: dict[str, Any] = {"requests": 1}
    for name in _TOKEN_FIELDS:
        value = int(getattr(usage, name) or 0)
        if value or name in ("input_tokens", "output_tokens"):
            recorded[name] = value
    if response.model_name:
        recorded["model"] = response.model_name
    if response.provider_name:
        recorded["provider"] = response.provider_name
    cost = response_cost(response)
    if cost is not None:
        recorded["cost"] = round(cost, 10)
    return recorded


def run_usage_to_json(usage: RunUsage) -> dict[str, Any]:
    """The counters of a ``RunUsage`` as JSON (what replay adds back to a shared usage)."""
    data: dict[str, Any] = {"requests": usage.requests, "tool_calls": usage.tool_calls}
    for name in _TOKEN_FIELDS:
        data[name] = getattr(usage, name)
    if usage.details:
        data["details"] = dict(usage.details)
    if usage.cost is not None:
        data["cost"] = float(usage.cost)
    return data


def run_usage_from_json(data: dict[str, Any]) -> RunUsage:
    """Rebuild the ``RunUsage`` recorded by :func:`run_usage_to_json`."""
    from decimal import Decimal

    usage = RunUsage(requests=int(data.get("requests", 0)), tool_calls=int(data.get("tool_calls", 0)))
    for name in _TOKEN_FIELDS:
        setattr(usage, name, int(data.get(name, 0)))
    usage.details = {str(k): int(v) for k, v in (data.get("details") or {}).items()}
    if data.get("cost") is not None:
        usage.cost = Decimal(str(data["cost"]))
    return usage


@dataclass
class UnitUsage:
    """Usage of delegate agent runs made while one unit's body ran."""

    caller: RunUsage | None
    """The ``RunUsage`` of the agent run that requested the unit."""
    total: dict[str, Any] = field(default_factory=lambda: {"requests": 0, "input_tokens": 0, "output_tokens": 0})
    shared: RunUsage = field(default_factory=RunUsage)
    """What delegates added to ``caller`` (they were run with ``usage=ctx.usage``)."""

    def add_request(self, run_usage: RunUsage, response: ModelResponse) -> None:
        """Count a delegate's model request."""
        request: RequestUsage = response.usage
        add_usage(self.total, {"requests": 1, "input_tokens": request.input_tokens,
                               "output_tokens": request.output_tokens, "cost": response_cost(response)})
        if run_usage is self.caller:
            self.shared.requests += 1
            self.shared.incr(request)

    def add_tool_call(self, run_usage: RunUsage) -> None:
        """Count a delegate's successful tool call (it counts on a shared usage too)."""
        if run_usage is self.caller:
            self.shared.tool_calls += 1

    def recorded(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``(usage for the unit's entry, shared usage to add back on replay)``; Nones when empty."""
        if not self.total["requests"]:
            return None, None
        shared = run_usage_to_json(self.shared) if self.shared.requests or self.shared.tool_calls else None
        return dict(self.total), shared


UNIT_USAGE: ContextVar[UnitUsage | None] = ContextVar("phaseledger_agent_unit_usage", default=None)
"""The usage collector of the unit whose body runs in this task, if any."""
