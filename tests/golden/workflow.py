"""The workflow the golden logs were written with: small, deterministic, touching every kind of event.

Its definition is part of the golden logs' contract, like the logs themselves: change it and
the logs no longer say what they said. Its step functions count their calls in
:data:`CALLS`, so the golden test can check that no recorded step runs again.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, RetryPolicy, Workflow

CALLS: Counter[str] = Counter()
"""How often each step function ran."""

FAILING: set[str] = set()
"""Steps whose next call fails with a ConnectionError (the golden-log writer sets it)."""

RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, jitter=False)


class Order(BaseModel):
    """The state of an order run."""

    item: str
    quantity: int = 1
    total: int = 0
    note: str | None = None
    approved: bool = False


def price(item: str, quantity: int) -> int:
    """The order's price in cents."""
    CALLS["price"] += 1
    return 100 * len(item) * quantity


def reserve(item: str) -> dict[str, Any]:
    """A warehouse slot for the item (fails once when listed in :data:`FAILING`)."""
    CALLS["reserve"] += 1
    if "reserve" in FAILING:
        FAILING.discard("reserve")
        raise ConnectionError("the warehouse did not answer")
    return {"item": item, "slot": f"A-{len(item)}"}


order = Workflow("golden-order", state=Order)


@order.phase(initial=True, to="approval")
async def pricing(ctx: Context[Order]) -> str:
    ctx.state.total = await ctx.step("price", price, ctx.state.item, ctx.state.quantity)
    await ctx.checkpoint("priced")
    return "approval"


@order.phase(to="shipping")
async def approval(ctx: Context[Order]) -> str:
    note = await ctx.wait_for_signal("note")
    ctx.state.note = note["text"]
    decision = await ctx.wait_for_signal("approve")
    ctx.state.approved = bool(decision["ok"])
    return "shipping"


@order.phase(final=True)
async def shipping(ctx: Context[Order]) -> dict[str, Any]:
    slot = await ctx.step("reserve", reserve, ctx.state.item, retry=RETRY)
    return {"slot": slot["slot"], "total": ctx.state.total, "note": ctx.state.note, "approved": ctx.state.approved}
