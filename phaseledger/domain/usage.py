"""Token usage: what a journaled call records (requests, input and output tokens, cost in USD) and its totals.

One call's usage is a dict such as ``{"requests": 1, "input_tokens": 12, "output_tokens": 3,
"model": "gpt-4o", "cost": 0.0001}``; the run's totals, a delegate's usage within a tool call
and the report tables all add them with :func:`add_usage`. A value that is not a number
counts as 0 (usage is informational: it never stops a run or a projection).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COUNTERS = ("requests", "input_tokens", "output_tokens")
"""The counters every total holds."""


def count(value: Any) -> int:
    """A recorded counter as an int (0 when missing or not a number)."""
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def add_cost(total: float | None, cost: Any) -> float | None:
    """``total + cost`` in USD, rounded to 10 places; ``total`` unchanged when ``cost`` is unknown."""
    if cost is None:
        return total
    try:
        return round((total or 0.0) + float(cost), 10)
    except (TypeError, ValueError):
        return total


def add_usage(total: dict[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Add ``usage``'s counters and cost to ``total`` (in place); return ``total``."""
    if usage:
        for field in COUNTERS:
            total[field] = total.get(field, 0) + count(usage.get(field))
        cost = add_cost(total.get("cost"), usage.get("cost"))
        if cost is not None:
            total["cost"] = cost
    return total
