"""The research workflow of ``phaseledger.demo.research`` and the changes a deploy may bring to it.

The phases are a faithful copy of the demo's (its agents, with the deterministic local
models, are the demo's own), built in one of these variants:

- ``same``: the demo's code, unchanged;
- ``compatible``: tools and the report changed where no recorded call is affected;
- ``upcast``: the state's ``rounds`` renamed ``iterations``, with a ``mode="before"``
  validator that migrates what runs recorded;
- ``breaking``: execution records a step before its agent calls, and validation asks its
  agent another prompt (so the model request's fingerprint differs).

``workflows`` (the module's list) is picked by ``$GATE_VARIANT`` and ``$GATE_VERSIONS``, so
the command line can load the same file as a deploy would (``-w gate_flows.py``).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, model_validator

from phaseledger import Context, Workflow
from phaseledger.demo.research import MAX_ROUNDS, Finding, Research, Verdict, build_agents


class ResearchV2(BaseModel):
    """The research state with ``rounds`` renamed ``iterations`` (and its upcaster)."""

    topic: str
    questions: list[str] = []
    findings: list[Finding] = []
    iterations: int = 0
    verdict: Verdict | None = None
    report: str | None = None

    @model_validator(mode="before")
    @classmethod
    def from_rounds(cls, data: Any) -> Any:
        """State recorded before the rename has ``rounds``: it becomes ``iterations``."""
        if isinstance(data, dict) and "rounds" in data:
            data = {**data, "iterations": data["rounds"]}
            del data["rounds"]
        return data

    def open_questions(self) -> list[str]:
        answered = {f.question for f in self.findings}
        return [q for q in self.questions if q not in answered]


def build(variant: str = "same", version: int = 1) -> Workflow[Any]:
    """The research workflow in ``variant``, registered as ``version``."""
    agents = build_agents()
    state: type[BaseModel] = ResearchV2 if variant == "upcast" else Research
    workflow: Workflow[Any] = Workflow("research", state=state, version=version)

    def rounds(s: Any) -> int:
        return int(s.iterations if variant == "upcast" else s.rounds)

    def count_round(s: Any) -> None:
        if variant == "upcast":
            s.iterations += 1
        else:
            s.rounds += 1

    @workflow.phase(initial=True, to="execution")
    async def planning(ctx: Context[Any]) -> None:
        result = await ctx.run_agent(agents["planner"], f"Plan the research on: {ctx.state.topic}")
        ctx.state.questions = result.output.questions

    @workflow.phase(to="validation")
    async def execution(ctx: Context[Any]) -> None:
        count_round(ctx.state)
        batch = 2
        if variant == "breaking":
            batch = await ctx.step("batch size", lambda: 2)
        for question in ctx.state.open_questions()[:batch]:
            result = await ctx.run_agent(agents["researcher"], f"Research this question: {question}")
            ctx.state.findings.append(Finding(question=question, answer=result.output))

    @workflow.phase(to={"execution": lambda s: rounds(s) < MAX_ROUNDS, "completion": None})
    async def validation(ctx: Context[Any]) -> str:
        answered = {f.question for f in ctx.state.findings}
        mark = "*" if variant == "breaking" else "x"
        checklist = "\n".join(f"- [{mark if q in answered else ' '}] {q}" for q in ctx.state.questions)
        result = await ctx.run_agent(agents["validator"], f"Are these questions answered?\n{checklist}")
        ctx.state.verdict = result.output
        if ctx.state.open_questions() and rounds(ctx.state) < MAX_ROUNDS:
            return "execution"
        return "completion"

    @workflow.phase(final=True)
    async def completion(ctx: Context[Any]) -> dict[str, Any]:
        heading = "Research report: " if variant == "compatible" else "# "
        lines = [f"{heading}{ctx.state.topic}", ""]
        lines += [f"## {f.question}\n{f.answer}\n" for f in ctx.state.findings]
        ctx.state.report = "\n".join(lines)
        confidence = ctx.state.verdict.confidence if ctx.state.verdict else 0.0
        return {"questions": len(ctx.state.questions), "findings": len(ctx.state.findings),
                "rounds": rounds(ctx.state), "confidence": confidence}

    return workflow


def _from_env() -> list[Workflow[Any]]:
    variant = os.environ.get("GATE_VARIANT", "same")
    versions = [int(v) for v in os.environ.get("GATE_VERSIONS", "1").split(",")]
    # the newest version is the variant; older ones are kept as they were
    return [build("same" if v != versions[-1] else variant, v) for v in versions]


workflows = _from_env()
