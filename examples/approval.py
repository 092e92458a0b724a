"""Human approval: plan, wait for a person's decision, then execute or stop.

The run plans a change, then waits for an ``approve`` signal carrying an
:class:`Approval` (approved, comment). While it waits it is suspended durably (status
``waiting``): no process holds it, and any worker continues it once the signal arrives.
Without a decision within ``decision_timeout`` seconds the run stops on its own.

    python examples/approval.py                    # approve
    python examples/approval.py --reject --comment "not on a Friday"
    python examples/approval.py --store sqlite:///approvals.db --no-decision --timeout 1

Each invocation starts a run, lets a worker drive it until it waits, sends the decision
(as a person would, from another process), and lets a worker finish it.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from pydantic import BaseModel

from phaseledger import Context, Engine, SignalTimeout, Workflow


class Approval(BaseModel):
    """A reviewer's decision, the payload of the ``approve`` signal."""

    approved: bool
    comment: str = ""


class Change(BaseModel):
    """The state of one change request."""

    request: str
    decision_timeout: float = 3600.0
    plan: list[str] = []
    approved: bool | None = None
    comment: str = ""
    applied: list[str] = []


approval = Workflow("approval", state=Change, signals={"approve": Approval})


def make_plan(request: str) -> list[str]:
    return [f"back up before: {request}", f"apply: {request}", f"verify: {request}"]


async def apply_step(step: str) -> str:
    await asyncio.sleep(0.01)  # stands for the real work (an API call, a deployment)
    return f"done: {step}"


@approval.phase(initial=True, to="review")
async def planning(ctx: Context[Change]) -> None:
    ctx.state.plan = await ctx.step("make_plan", make_plan, ctx.state.request)


@approval.phase(to={"execution": lambda s: bool(s.approved), "stopped": None})
async def review(ctx: Context[Change]) -> str:
    try:
        decision: Approval = await ctx.wait_for_signal("approve", timeout=ctx.state.decision_timeout)
    except SignalTimeout:
        ctx.state.comment = "no decision in time"
        return "stopped"
    ctx.state.approved, ctx.state.comment = decision.approved, decision.comment
    return "execution" if decision.approved else "stopped"


@approval.phase(to="done")
async def execution(ctx: Context[Change]) -> None:
    for step in ctx.state.plan:
        ctx.state.applied.append(await ctx.step("apply", apply_step, step))


@approval.phase(final=True)
async def done(ctx: Context[Change]) -> str:
    return f"applied {len(ctx.state.applied)} steps"


@approval.phase(final=True)
async def stopped(ctx: Context[Change]) -> str:
    return f"stopped: {ctx.state.comment or 'rejected'}"


async def main(store: str, decision: Approval | None, timeout: float) -> None:
    engine = Engine(store, workflows=[approval], max_inline_wait=0)
    run_id = f"change-{uuid.uuid4().hex[:8]}"
    await engine.start(approval, {"request": "rotate the API keys", "decision_timeout": timeout}, run_id=run_id)
    await engine.worker(poll_interval=0.05).run(until_idle=True)
    print(f"{run_id}: {engine.get(run_id).status}, waiting for {engine.get(run_id).suspended['signal']!r}")

    if decision is not None:
        await engine.signal(run_id, "approve", decision)  # validated against Approval
        print(f"sent: approved={decision.approved} comment={decision.comment!r}")
    else:
        await asyncio.sleep(timeout)  # nobody answers: the wait times out
    await engine.worker(poll_interval=0.05).run(until_idle=True)

    run = engine.get(run_id)
    print(f"{run_id}: {run.status} in phase {run.phase}: {run.output}")
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="memory://", help="store URL (default: memory://)")
    parser.add_argument("--reject", action="store_true", help="reject instead of approving")
    parser.add_argument("--comment", default="looks good", help="the reviewer's comment")
    parser.add_argument("--no-decision", action="store_true", help="send nothing and let the wait time out")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for a decision")
    args = parser.parse_args()
    answer = None if args.no_decision else Approval(approved=not args.reject, comment=args.comment)
    asyncio.run(main(args.store, answer, args.timeout))
