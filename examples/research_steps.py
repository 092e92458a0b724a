"""The four-phase research workflow with plain Python steps (no LLM).

planning -> execution -> validation -> completion, with validation sending the run back
to execution until enough findings are in (a guarded loop). Run it twice with the same
run id to see the second run resume from the log instead of redoing work:

    python examples/research_steps.py [--store sqlite:///research.db] [--run-id ID]
"""

from __future__ import annotations

import argparse
import asyncio

from pydantic import BaseModel

from phaseledger import Context, Engine, RunExists, Workflow


class Research(BaseModel):
    """The state of a research run."""

    topic: str
    plan: list[str] = []
    findings: list[str] = []
    attempts: int = 0
    verdict: str | None = None


research = Workflow("research-steps", state=Research, version=1)


def make_plan(topic: str) -> list[str]:
    return [f"what is {topic}", f"who uses {topic}", f"limits of {topic}"]


async def investigate(question: str) -> str:
    await asyncio.sleep(0.05)  # stands in for a search or an API call
    return f"{question}: answered"


def needs_rework(state: Research) -> bool:
    return len(state.findings) < len(state.plan)


@research.phase(initial=True, to="execution")
async def planning(ctx: Context[Research]) -> None:
    ctx.state.plan = await ctx.step("make_plan", make_plan, ctx.state.topic)
    print(f"  planning: {len(ctx.state.plan)} questions")


@research.phase(to="validation")
async def execution(ctx: Context[Research]) -> None:
    ctx.state.attempts += 1
    # first pass answers two questions, the rework pass answers the rest
    todo = ctx.state.plan[len(ctx.state.findings):][: 2 if ctx.state.attempts == 1 else None]
    for question in todo:
        ctx.state.findings.append(await ctx.step("investigate", investigate, question))
        print(f"  execution #{ctx.attempt}: {ctx.state.findings[-1]}")


@research.phase(to={"execution": lambda s: s.attempts < 3, "completion": None})
async def validation(ctx: Context[Research]) -> str:
    rework = needs_rework(ctx.state)
    print(f"  validation: {'rework needed' if rework else 'complete'}")
    return "execution" if rework else "completion"


@research.phase(final=True)
async def completion(ctx: Context[Research]) -> dict[str, object]:
    ctx.state.verdict = f"{len(ctx.state.findings)} findings on {ctx.state.topic}"
    return {"verdict": ctx.state.verdict, "findings": ctx.state.findings}


async def main(store: str, run_id: str, topic: str) -> None:
    engine = Engine(store, workflows=[research])
    try:
        run = await engine.run(research, Research(topic=topic), run_id=run_id)
    except RunExists:
        run = engine.get(run_id)
        if not run.finished:
            run = await engine.resume(run_id)
    print(f"run {run.run_id}: {run.status} in {run.phase}, {run.steps} steps, {run.version} events")
    print(f"output: {run.output}")
    engine.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///research.db")
    parser.add_argument("--run-id", default="research-1")
    parser.add_argument("--topic", default="event sourcing")
    args = parser.parse_args()
    asyncio.run(main(args.store, args.run_id, args.topic))
