"""Forks of runs with durable pydantic-ai agents: recorded model requests and tool calls are
replayed from the log, never sent or paid again; after the fork point a swapped model runs live."""

from __future__ import annotations

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from phaseledger import Context, Engine, Workflow
from phaseledger.agents import PhaseledgerDurability


class Article(BaseModel):
    topic: str = "ants"
    findings: str = ""
    draft: str = ""


def build(calls: dict[str, int]) -> tuple[Workflow[Article], dict[str, FunctionModel]]:
    def researcher_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls["researcher"] += 1
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("search", {"query": "ants"}, tool_call_id="s1")],
                                 usage=RequestUsage(input_tokens=100, output_tokens=10))
        return ModelResponse(parts=[TextPart(f"found: {messages[-1].parts[0].content}")],
                             usage=RequestUsage(input_tokens=150, output_tokens=20))

    def writer(name: str) -> FunctionModel:
        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            calls[name] += 1
            return ModelResponse(parts=[TextPart(f"{name} draft")], usage=RequestUsage(input_tokens=50, output_tokens=5))

        return FunctionModel(respond, model_name=name)

    researcher = Agent(FunctionModel(researcher_model, model_name="researcher"), name="researcher",
                       capabilities=[PhaseledgerDurability()])

    @researcher.tool_plain
    def search(query: str) -> str:
        calls["search"] += 1
        return f"{query} farm fungus"

    writers = {"cheap": writer("cheap"), "smart": writer("smart")}
    writer_agent = Agent(writers["cheap"], name="writer", capabilities=[PhaseledgerDurability(models=writers)])
    workflow = Workflow("article", state=Article)

    @workflow.phase(initial=True, to="write")
    async def research(ctx: Context[Article]) -> str:
        ctx.state.findings = (await ctx.run_agent(researcher, ctx.state.topic)).output
        await ctx.checkpoint("researched")
        return "write"

    @workflow.phase(final=True)
    async def write(ctx: Context[Article]) -> str:
        model = writers[ctx.overrides.get("writer", "cheap")]
        ctx.state.draft = (await ctx.run_agent(writer_agent, ctx.state.findings, model=model)).output
        return ctx.state.draft

    return workflow, writers


async def test_a_fork_replays_agent_calls_and_runs_a_swapped_model_live(store_url: str) -> None:
    calls = {"researcher": 0, "search": 0, "cheap": 0, "smart": 0}
    workflow, _ = build(calls)
    engine = Engine(store_url, workflows=[workflow])
    source = await engine.run(workflow, {}, run_id="article")
    assert source.output == "cheap draft"
    assert calls == {"researcher": 2, "search": 1, "cheap": 1, "smart": 0}
    assert source.usage.input_tokens == 300

    fork = await engine.fork("article", at="researched", new_run_id="article-smart", overrides={"writer": "smart"})
    assert fork.status == "completed" and fork.output == "smart draft"
    # nothing recorded before the fork point was sent again; only the swapped writer ran
    assert calls == {"researcher": 2, "search": 1, "cheap": 1, "smart": 1}
    assert fork.state.findings == source.state.findings

    comparison = engine.compare("article", "article-smart")
    assert comparison.output_differences[0].a == "cheap draft"
    assert comparison.output_differences[0].b == "smart draft"
    assert comparison.b.inherited_tokens == 280  # the researcher's tokens, paid by the source
    assert comparison.b.spent_tokens == comparison.a.spent_tokens - 280 == 55
    assert comparison.tokens_delta == 55 - 335

    twin = await engine.fork("article", at="researched", new_run_id="article-twin")
    assert calls["cheap"] == 2 and calls["researcher"] == 2
    assert engine.compare("article", "article-twin").identical
    assert twin.output == source.output
