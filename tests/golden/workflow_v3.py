"""The second workflow of the golden logs, from ``v3-log.json`` on: a step with external effects.

Its run ``in-doubt`` was stopped in the middle of its ``charge`` step, after the step's
intent was recorded and before its result was: the log holds an ``EffectIntended`` with no
result, which a resume settles by the step's policy (``retry``: it runs again with the
same idempotency key). Like :mod:`tests.golden.workflow`, its definition is part of the
golden logs' contract.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from phaseledger import Context, Workflow, idempotency_key
from tests.golden.workflow import CALLS

HANGING: set[str] = set()
"""Steps whose next call hangs until cancelled (the golden-log writer sets it)."""


class Payment(BaseModel):
    """The state of a payment run."""

    amount: int
    receipt: str = ""


async def charge(amount: int) -> str:
    """A payment made outside (hangs once when listed in :data:`HANGING`)."""
    CALLS["charge"] += 1
    if "charge" in HANGING:
        HANGING.discard("charge")
        await asyncio.sleep(3600)  # the writer cancels the run here, in doubt
    return f"receipt-{amount}-{idempotency_key()}"


payment = Workflow("golden-payment", state=Payment)


@payment.phase(initial=True, final=True)
async def paying(ctx: Context[Payment]) -> str:
    ctx.state.receipt = await ctx.step("charge", charge, ctx.state.amount, effect=True)
    return ctx.state.receipt
