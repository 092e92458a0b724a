"""The research workflow with real pydantic-ai agents: planning -> execution -> validation -> completion.

- **planning**: a planner agent turns the topic into research questions (structured output).
- **execution**: a researcher agent with tools (``search``, ``fetch``) answers the open
  questions, two per round.
- **validation**: a validator agent returns a :class:`Verdict` (structured output); while
  questions remain open the run goes back to execution (it does at least once).
- **completion**: the findings are assembled into a report.

Every agent carries :class:`~phaseledger.PhaseledgerDurability`, so each model request and
tool call is a journaled event of the run: a run killed anywhere resumes without paying
again for what was recorded.

By default the agents use a deterministic local ``FunctionModel`` that reports realistic
token usage (and waits ``latency`` seconds per request, to look like a provider). Pass any
pydantic-ai model name (``"openai:gpt-4o"``, ``"anthropic:claude-sonnet-4-5"``, ...) to
use a real model instead::

    workflow = build_research()                        # local deterministic model
    workflow = build_research(model="openai:gpt-4o")   # a real one (needs its API key)
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from phaseledger import Context, PhaseledgerDurability, Workflow

BATCH = 2
"""Questions the researcher takes on per execution round."""
MAX_ROUNDS = 4
"""Execution rounds after which validation must move on to completion."""


class Plan(BaseModel):
    """The planner's output: the questions the research must answer."""

    questions: list[str] = Field(min_length=1, max_length=6)


class Finding(BaseModel):
    """The researcher's answer to one question."""

    question: str
    answer: str


class Verdict(BaseModel):
    """The validator's output: is the research complete, and what is missing."""

    complete: bool
    missing: list[str] = []
    confidence: float = Field(ge=0.0, le=1.0)


class Research(BaseModel):
    """The state of a research run."""

    topic: str
    questions: list[str] = []
    findings: list[Finding] = []
    rounds: int = 0
    verdict: Verdict | None = None
    report: str | None = None

    def open_questions(self) -> list[str]:
        """Questions without a finding yet."""
        answered = {f.question for f in self.findings}
        return [q for q in self.questions if q not in answered]


# -- the deterministic local model ----------------------------------------------------------


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _history_text(messages: list[ModelMessage]) -> str:
    chunks: list[str] = []
    for message in messages:
        for part in message.parts:
            content = getattr(part, "content", None) or getattr(part, "args", None) or ""
            chunks.append(content if isinstance(content, str) else str(content))
    return "\n".join(chunks)


def _prompt(messages: list[ModelMessage]) -> str:
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    return part.content
    return ""


def _respond(messages: list[ModelMessage], parts: list[Any], overhead: int) -> ModelResponse:
    """A response whose usage is what a provider would bill: the whole history in, the parts out."""
    produced = "".join(p.content if isinstance(p, TextPart) else str(p.args) for p in parts)
    usage = RequestUsage(input_tokens=overhead + _tokens(_history_text(messages)), output_tokens=8 + _tokens(produced))
    return ModelResponse(parts=parts, usage=usage)


def _local_model(role: str, latency: float) -> FunctionModel:
    """The deterministic stand-in for a provider model for one agent role."""

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if latency:
            await asyncio.sleep(latency)
        prompt = _prompt(messages)
        if role == "planner":
            topic = prompt.rsplit(":", 1)[-1].strip() or "the topic"
            plan = {"questions": [f"What is {topic}?", f"Who uses {topic}, and for what?",
                                  f"What are the limits of {topic}?"]}
            return _respond(messages, [ToolCallPart(info.output_tools[0].name, plan)], overhead=180)
        if role == "validator":
            missing = re.findall(r"^- \[ \] (.+)$", prompt, flags=re.MULTILINE)
            answered = len(re.findall(r"^- \[x\] ", prompt, flags=re.MULTILINE))
            verdict = {"complete": not missing, "missing": missing,
                       "confidence": round(answered / max(1, answered + len(missing)), 2)}
            return _respond(messages, [ToolCallPart(info.output_tools[0].name, verdict)], overhead=220)
        # the researcher: search, then fetch the best hit, then answer
        returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
        question = prompt.split(":", 1)[-1].strip()
        if not returns:
            call = ToolCallPart("search", {"query": question}, tool_call_id=f"search-{_slug(question)}")
            return _respond(messages, [call], overhead=260)
        if len(returns) == 1:
            hits = returns[0].content if isinstance(returns[0].content, list) else []
            url = hits[0]["url"] if hits else f"https://example.org/{_slug(question)}"
            call = ToolCallPart("fetch", {"url": url}, tool_call_id=f"fetch-{_slug(question)}")
            return _respond(messages, [call], overhead=260)
        page = str(returns[-1].content)
        answer = f"{question} In short: {page.split('. ', 1)[0]}."
        return _respond(messages, [TextPart(answer)], overhead=260)

    return FunctionModel(respond, model_name=f"local-{role}")


def _slug(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# -- the agents and the workflow ---------------------------------------------------------------


def build_agents(model: str | None = None, latency: float = 0.0) -> dict[str, Agent[None, Any]]:
    """The planner, researcher and validator agents, each with the durable capability."""

    def pick(role: str) -> Any:
        return model if model is not None else _local_model(role, latency)

    planner: Agent[None, Plan] = Agent(
        pick("planner"), name="research-planner", output_type=Plan,
        instructions="Split the research topic into three to five precise questions.",
        capabilities=[PhaseledgerDurability()],
    )
    researcher: Agent[None, str] = Agent(
        pick("researcher"), name="research-researcher",
        instructions="Answer the question: search, fetch the most relevant source, answer in two sentences.",
        capabilities=[PhaseledgerDurability()],
    )
    validator: Agent[None, Verdict] = Agent(
        pick("validator"), name="research-validator", output_type=Verdict,
        instructions="Judge whether every question has a satisfying answer; list the open ones in `missing`.",
        capabilities=[PhaseledgerDurability()],
    )

    @researcher.tool_plain
    def search(query: str) -> list[dict[str, str]]:
        """Search the web; returns titles and urls."""
        slug = _slug(query)
        return [{"title": f"{query} - overview", "url": f"https://example.org/{slug}"},
                {"title": f"{query} - discussion", "url": f"https://example.net/{slug}"}]

    @researcher.tool_plain
    def fetch(url: str) -> str:
        """Fetch a page and return its text."""
        return (f"The page at {url} explains the subject with examples. It cites three sources "
                "and compares the common approaches.")

    return {"planner": planner, "researcher": researcher, "validator": validator}


def build_research(model: str | None = None, latency: float = 0.0) -> Workflow[Research]:
    """The research workflow; ``model`` is a pydantic-ai model name, None for the local model.

    ``latency`` is the seconds the local model waits per request (ignored with a real model).
    """
    agents = build_agents(model, latency if model is None else 0.0)
    workflow: Workflow[Research] = Workflow(
        "research", state=Research, version=1,
        description="Plan, research with tools, validate with structured output (looping back), report.",
    )

    @workflow.phase(initial=True, to="execution")
    async def planning(ctx: Context[Research]) -> None:
        result = await ctx.run_agent(agents["planner"], f"Plan the research on: {ctx.state.topic}")
        ctx.state.questions = result.output.questions

    @workflow.phase(to="validation")
    async def execution(ctx: Context[Research]) -> None:
        ctx.state.rounds += 1
        for question in ctx.state.open_questions()[:BATCH]:
            result = await ctx.run_agent(agents["researcher"], f"Research this question: {question}")
            ctx.state.findings.append(Finding(question=question, answer=result.output))

    @workflow.phase(to={"execution": lambda s: s.rounds < MAX_ROUNDS, "completion": None})
    async def validation(ctx: Context[Research]) -> str:
        answered = {f.question for f in ctx.state.findings}
        checklist = "\n".join(f"- [{'x' if q in answered else ' '}] {q}" for q in ctx.state.questions)
        result = await ctx.run_agent(agents["validator"], f"Are these questions answered?\n{checklist}")
        ctx.state.verdict = result.output
        if ctx.state.open_questions() and ctx.state.rounds < MAX_ROUNDS:
            return "execution"
        return "completion"

    @workflow.phase(final=True)
    async def completion(ctx: Context[Research]) -> dict[str, Any]:
        lines = [f"# {ctx.state.topic}", ""]
        lines += [f"## {f.question}\n{f.answer}\n" for f in ctx.state.findings]
        ctx.state.report = "\n".join(lines)
        confidence = ctx.state.verdict.confidence if ctx.state.verdict else 0.0
        return {"questions": len(ctx.state.questions), "findings": len(ctx.state.findings),
                "rounds": ctx.state.rounds, "confidence": confidence}

    return workflow


research = build_research()
"""The workflow with the local model (what ``phaseledger -w phaseledger.demo.research`` loads)."""
