"""Workflows that the crash tests drive in child processes (imported by module path).

Step functions write their side effects to the file named by ``$CRASHFLOW_EFFECTS``
(outside the event store), one line per execution with the step's idempotency key, so a
test can count what really ran.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from phaseledger import Context, RetryPolicy, Workflow, idempotency_key

EFFECTS_ENV = "CRASHFLOW_EFFECTS"


def effect(name: str) -> int:
    """Record one execution of the running step; return how often its key ran before."""
    key = idempotency_key()
    path = os.environ[EFFECTS_ENV]
    before = 0
    if os.path.exists(path):
        with open(path) as f:
            before = sum(1 for line in f if line.split("\t", 1)[0] == key)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\t{name}\n".encode())
    finally:
        os.close(fd)
    return before


class Order(BaseModel):
    items: list[str] = []
    charged: list[int] = []
    total: int = 0
    reviewed: bool = False


def fetch_items(count: int) -> list[str]:
    effect("fetch_items")
    return [f"item-{i}" for i in range(count)]


async def charge_item(item: str) -> int:
    effect("charge")
    await asyncio.sleep(0)
    return 10 * (int(item.rsplit("-", 1)[1]) + 1)


def flaky_review(total: int) -> bool:
    """Fails (retryably) the first time its key runs, then succeeds."""
    if effect("review") == 0:
        raise ConnectionError("review service reset the connection")
    return total > 0


def make_label(total: int) -> str:
    effect("label")
    return f"LABEL-{total}"


def make_order_workflow(checkpoint_every_n_steps: int | None = None) -> Workflow[Order]:
    wf = Workflow(
        "order", state=Order, version=1, checkpoint_every_n_steps=checkpoint_every_n_steps,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=False),
    )

    @wf.phase(initial=True, to="charge")
    async def plan(ctx: Context[Order]) -> None:
        ctx.uuid()  # recorded, not part of the state: replay must serve the same value
        ctx.state.items = await ctx.step("fetch_items", fetch_items, 4)
        await ctx.checkpoint("planned")

    @wf.phase(to="review")
    async def charge(ctx: Context[Order]) -> None:
        for item in ctx.state.items:
            ctx.state.charged.append(await ctx.step("charge", charge_item, item))
        ctx.state.total = sum(ctx.state.charged)

    @wf.phase(to="ship")
    async def review(ctx: Context[Order]) -> None:
        ctx.now()
        ctx.state.reviewed = await ctx.step("review", flaky_review, ctx.state.total)

    @wf.phase(final=True)
    async def ship(ctx: Context[Order]) -> dict:
        label = await ctx.step("label", make_label, ctx.state.total)
        return {"label": label, "total": ctx.state.total, "items": len(ctx.state.items)}

    return wf


order_workflow = make_order_workflow()


class Fetch(BaseModel):
    result: str = ""


BACKOFF = RetryPolicy(max_attempts=4, initial_delay=2.0, backoff=1.0, jitter=False)


def flaky_upstream() -> str:
    """Fails on its first two executions; each execution notes its start time."""
    from datetime import UTC, datetime

    if effect(f"upstream@{datetime.now(UTC).isoformat()}") < 2:
        raise TimeoutError("upstream timed out")
    return "fetched"


backoff_workflow: Workflow[Fetch] = Workflow("backoff", state=Fetch, version=1)


@backoff_workflow.phase(initial=True, final=True)
async def fetch(ctx: Context[Fetch]) -> str:
    return await ctx.step("upstream", flaky_upstream, retry=BACKOFF)


# -- effect steps: killed between their intent and their result ------------------------------


class Payment(BaseModel):
    receipt: str = ""
    error: str = ""


def effect_ran(key: str) -> bool:
    """Whether the external system saw an execution under ``key`` (the effects file)."""
    path = os.environ[EFFECTS_ENV]
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return any(line.split("\t", 1)[0] == key for line in f)


def charge_card(amount: int) -> str:
    effect("charge")
    return f"receipt-{amount}"


def reconcile_charge(key: str) -> str | object:
    """Asks the external system (the effects file) whether the charge with ``key`` happened."""
    from phaseledger import NOT_HAPPENED

    return f"receipt-42 (reconciled {key})" if effect_ran(key) else NOT_HAPPENED


def make_effect_workflow(policy: str) -> Workflow[Payment]:
    from phaseledger import Effect

    declared = Effect(reconcile=reconcile_charge) if policy == "reconcile" else Effect(on_doubt=policy)  # type: ignore[arg-type]
    wf = Workflow(f"effect-{policy}", state=Payment, version=1)

    @wf.phase(initial=True, final=True)
    async def pay(ctx: Context[Payment]) -> str:
        ctx.state.receipt = await ctx.step("charge", charge_card, 42, effect=declared)
        return ctx.state.receipt

    return wf


effect_retry = make_effect_workflow("retry")
effect_fail = make_effect_workflow("fail")
effect_reconcile = make_effect_workflow("reconcile")
effect_ask = make_effect_workflow("ask")


# -- final failures caught by the handler: replayed, never run again -------------------------


def decline(amount: int) -> str:
    effect("decline")
    raise ValueError(f"card declined for {amount}")


def after_failure() -> str:
    effect("after")
    return "noted"


caught_step: Workflow[Payment] = Workflow("caught-step", state=Payment, version=1)


@caught_step.phase(initial=True, final=True)
async def pay_or_note(ctx: Context[Payment]) -> str:
    from phaseledger import NO_RETRY, StepFailed

    try:
        ctx.state.receipt = await ctx.step("charge", decline, 42, retry=NO_RETRY)
    except StepFailed as error:
        ctx.state.error = str(error)
    note = await ctx.step("after", after_failure)
    return f"{ctx.state.error} / {note}"


def _agent_flow() -> Workflow[Payment]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    def script(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("refund", {"amount": 7}, tool_call_id="call-1")])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(script), name="refunder")

    @agent.tool_plain
    def refund(amount: int) -> str:
        effect("refund")  # the external effect happens, then the tool fails
        raise RuntimeError(f"the refund of {amount} bounced")

    wf: Workflow[Payment] = Workflow("caught-agent", state=Payment, version=1)

    @wf.phase(initial=True, final=True)
    async def refund_or_note(ctx: Context[Payment]) -> str:
        try:
            await ctx.run_agent(agent, "refund the customer")
        except RuntimeError as error:
            ctx.state.error = f"{type(error).__name__}: {error}"
        note = await ctx.step("after", after_failure)
        return f"{ctx.state.error} / {note}"

    return wf


caught_agent = _agent_flow()
