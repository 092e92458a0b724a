"""The runs the web view's tests look at: real runs on a real SQLite store.

:func:`fill` makes, on one store: a research run (pydantic-ai agents on a local model)
killed with SIGKILL in a child process part-way and resumed from its log; a change
waiting for a ``decide`` signal; a change decided and finished, whose phases published
artifacts; a fork of it decided the other way; and a failed run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from phaseledger import Context, Engine, RunNotFound, Workflow
from phaseledger.demo.research import build_research

ROOT = Path(__file__).resolve().parents[2]

research = build_research(latency=0.05)


class Decision(BaseModel):
    """A reviewer's decision: the payload of the ``decide`` signal."""

    approved: bool
    comment: str = ""
    priority: Literal["low", "normal", "high"] = "normal"
    reviewers: list[str] = Field(default_factory=list, description="Who else looked at it.")


class Change(BaseModel):
    request: str
    plan: list[str] = []
    approved: bool | None = None
    comment: str = ""
    priority: str = ""
    applied: list[str] = []


change = Workflow("change", state=Change, signals={"decide": Decision, "note": None})


def make_plan(request: str) -> list[str]:
    return [f"back up: {request}", f"apply: {request}", f"verify: {request}"]


def apply_step(step: str) -> str:
    return f"done: {step}"


@change.phase(initial=True, to="review")
async def planning(ctx: Context[Change]) -> None:
    ctx.state.plan = await ctx.step("make_plan", make_plan, ctx.state.request)
    ctx.artifact("plan", "## Plan\n\n" + "\n".join(f"- {step}" for step in ctx.state.plan)
                 + "\n\nNote: <script>alert('x')</script> stays text.")


@change.phase(to={"execution": lambda s: bool(s.approved), "stopped": None})
async def review(ctx: Context[Change]) -> str:
    decision: Decision = await ctx.wait_for_signal("decide", timeout=3600)
    ctx.state.approved, ctx.state.comment, ctx.state.priority = decision.approved, decision.comment, decision.priority
    return "execution" if decision.approved else "stopped"


@change.phase(to="done")
async def execution(ctx: Context[Change]) -> None:
    for step in ctx.state.plan:
        ctx.state.applied.append(await ctx.step("apply", apply_step, step))
    rows = zip(ctx.state.plan, ctx.state.applied, strict=True)
    ctx.artifact("applied", [{"step": step, "result": result} for step, result in rows])


@change.phase(final=True)
async def done(ctx: Context[Change]) -> str:
    return f"applied {len(ctx.state.applied)} steps"


@change.phase(final=True)
async def stopped(ctx: Context[Change]) -> str:
    return f"stopped: {ctx.state.comment or 'rejected'}"


class Job(BaseModel):
    size: int = 1


fragile = Workflow("fragile", state=Job)


def call_service(size: int) -> int:
    raise ConnectionRefusedError(f"the billing service refused a job of size {size}")


@fragile.phase(initial=True, to="finish")
async def bill(ctx: Context[Job]) -> None:
    await ctx.step("call_service", call_service, ctx.state.size)


@fragile.phase(final=True)
async def finish(ctx: Context[Job]) -> None:
    return None


WORKFLOWS = [research, change, fragile]

CRASHED, WAITING, DECIDED, FORK, FAILED = ("research-crashed", "change-waiting", "change-decided",
                                           "change-decided-fork", "billing-failed")


def _child(url: str) -> None:
    """In a child process: drive the research run until the parent kills it."""
    engine = Engine(url, workflows=WORKFLOWS)
    asyncio.run(engine.run(research, {"topic": "durable execution"}, run_id=CRASHED))


def crash_research(url: str, *, after_events: int = 12, timeout: float = 60.0) -> None:
    """Start the research run in a child process and SIGKILL it once ``after_events`` are stored."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.web.flows import _child; _child({url!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    engine = Engine(url, workflows=WORKFLOWS)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.poll() is not None:
                raise RuntimeError(f"the research child exited with {child.returncode} before it was killed")
            try:
                if engine.get(CRASHED).version >= after_events:
                    break
            except RunNotFound:  # not started yet
                pass
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        engine.close()


async def _fill_in_process(url: str) -> None:
    engine = Engine(url, workflows=WORKFLOWS, max_inline_wait=0, lease_seconds=1.0)
    try:
        await engine.resume(CRASHED, steal=True)  # the killed child's lease is orphaned
        await engine.run(change, {"request": "rotate the API keys"}, run_id=WAITING)
        await engine.run(change, {"request": "deploy v2"}, run_id=DECIDED)
        await engine.signal(DECIDED, "decide", Decision(approved=True, comment="ship it", priority="high"))
        await engine.resume(DECIDED)
        review_entry = next(c for c in engine.checkpoints(DECIDED) if c.label == "review")
        await engine.fork(DECIDED, at=review_entry.id, new_run_id=FORK)
        await engine.signal(FORK, "decide", Decision(approved=False, comment="not on a Friday"))
        await engine.resume(FORK)
        await engine.run(fragile, {"size": 3}, run_id=FAILED)
    finally:
        engine.close()


def fill(url: str) -> None:
    """Make the runs the tests look at on the store at ``url``."""
    crash_research(url)
    asyncio.run(_fill_in_process(url))
