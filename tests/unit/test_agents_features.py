"""Durable agents: handled failures, retries and breakers, usage, streaming, DurableAgent."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import ModelFallback
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelResponse,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage, UsageLimits

from phaseledger import CircuitBreaker, Context, Engine, RetryPolicy, Workflow
from phaseledger.agents import (
    AgentRunFailed,
    DurableAgent,
    PhaseledgerDurability,
    UnsupportedPydanticAI,
    check_pydantic_ai_version,
)
from tests.test_agent_kit import Outcome, Recorder, Report, Script, ScriptState, outcome_of, scripted_agent

FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)


def answer(text: str, tokens: int = 10) -> ModelResponse:
    return ModelResponse(parts=[TextPart(text)], usage=RequestUsage(input_tokens=tokens, output_tokens=2))


def one_phase(agent: Agent[Any, Any], name: str = "one", **run_kwargs: Any) -> Workflow[ScriptState]:
    workflow = Workflow(name, state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        return (await ctx.run_agent(agent, ctx.state.prompt, **run_kwargs)).output

    return workflow


# -- handled failures, retries, breakers -------------------------------------------------


async def test_handled_failure_is_journaled_so_the_fallback_path_replays() -> None:
    calls = {"primary": 0, "backup": 0}
    crash = {"on": True}

    def primary(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls["primary"] += 1
        raise ModelHTTPError(503, "primary", body="overloaded")

    def backup(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls["backup"] += 1
        return answer("from backup")

    backup_model = FunctionModel(backup, model_name="backup")
    agent = Agent(
        FunctionModel(primary, model_name="primary"), name="fallback",
        capabilities=[ModelFallback(backup_model), PhaseledgerDurability(models={"backup": backup_model})],
    )
    workflow = Workflow("fallback", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        output = (await ctx.run_agent(agent, "go")).output
        await ctx.step("after", lambda: crash.update(seen=True) if not crash["on"] else 1 / 0)
        return output

    async with Engine("memory://", workflows=[workflow]) as engine:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed" and calls == {"primary": 1, "backup": 1}
        entries = engine.store.load("r").journal
        errors = [e for e in entries.values() if e.error]
        assert [e.error["type"] for e in errors] == ["ModelHTTPError"]
        crash["on"] = False
        run = await engine.retry("r")
    assert run.status == "completed" and run.output == "from backup"
    assert calls == {"primary": 1, "backup": 1}  # the recorded 503 replayed: the same fallback, nothing re-run


async def test_provider_429_is_retried_and_400_is_not() -> None:
    statuses = [429, 429]
    calls = {"n": 0}

    def flaky(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls["n"] += 1
        if statuses:
            raise ModelHTTPError(statuses.pop(0), "flaky")
        return answer("ok")

    agent = Agent(FunctionModel(flaky, model_name="flaky"), name="retrying",
                  capabilities=[PhaseledgerDurability(model_retry=FAST)])
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow]) as engine:
        run = await engine.run(workflow, {}, run_id="ok")
        assert run.status == "completed" and run.output == "ok" and calls["n"] == 3
        failed_attempts = [e.data for e in engine.history("ok") if e.type == "StepAttemptFailed"]
        assert [(a["attempt"], a["retryable"]) for a in failed_attempts] == [(1, True), (2, True)]

        statuses[:] = [400]
        calls["n"] = 0
        run = await engine.run(workflow, {}, run_id="bad")
    assert run.status == "failed" and calls["n"] == 1  # a 4xx fails at once
    assert run.error["type"] == "ModelHTTPError"


async def test_tool_calls_follow_their_retry_policy() -> None:
    fails = {"left": 2, "calls": 0}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("fetch", {"url": "u"}, tool_call_id="c1")])
        return answer(str(messages[-1].parts[0].content))

    agent = Agent(FunctionModel(model), name="tools", capabilities=[PhaseledgerDurability(tool_retry=FAST)])

    @agent.tool_plain
    def fetch(url: str) -> str:
        fails["calls"] += 1
        if fails["left"]:
            fails["left"] -= 1
            raise ConnectionError("reset by peer")
        return f"page {url}"

    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow]) as engine:
        run = await engine.run(workflow, {})
    assert run.status == "completed" and run.output == "page u" and fails["calls"] == 3


async def test_circuit_breakers_are_named_per_model() -> None:
    statuses = [503]

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if statuses:
            raise ModelHTTPError(statuses.pop(0), "m")
        return answer("fine")

    breaker = CircuitBreaker("provider:flaky", failure_threshold=1, reset_timeout=0.0)
    agent = Agent(
        FunctionModel(model, model_name="flaky"), name="breaker",
        capabilities=[PhaseledgerDurability(model_retry=FAST, model_breaker=lambda model_id: f"provider:{model_id}")],
    )
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow], breakers={"provider:flaky": breaker}) as engine:
        run = await engine.run(workflow, {})
        assert engine.breaker("provider:flaky") is breaker
    assert run.status == "completed"
    assert breaker.state == "closed" and breaker.failures == 0  # opened by the 503, closed by the probe


# -- journal size, usage ------------------------------------------------------------------


async def test_journal_grows_linearly_with_the_conversation() -> None:
    script = Script([[("square", turn)] for turn in range(200)])
    recorder = Recorder()
    workflow = one_phase(scripted_agent(script, recorder), name="long", usage_limits=UsageLimits(request_limit=None))
    async with Engine("memory://", workflows=[workflow]) as engine:
        run = await engine.run(workflow, {}, run_id="long")
        assert run.status == "completed"
        sizes = [e.size for e in engine.history("long") if e.type == "StepRecorded" and e.data["kind"] == "model"]
    assert len(sizes) == 201
    assert sizes[199] <= 2 * sizes[9], (sizes[9], sizes[199])


class TwoAgents(BaseModel):
    prompt: str = "go"
    first: str = ""


async def test_usage_sums_phases_and_agents_and_counts_tokens_saved() -> None:
    first = Recorder()
    second = Recorder(crash_at=4)
    planner = scripted_agent(Script([[("square", 2)]]), first, name="planner")
    writer = scripted_agent(Script([[("lookup", 3)], [("square", 4)]]), second, name="writer")
    results: dict[str, Outcome] = {}
    workflow = Workflow("two", state=TwoAgents)

    @workflow.phase(initial=True, to="write")
    async def plan(ctx: Context[TwoAgents]) -> None:
        result = await ctx.run_agent(planner, ctx.state.prompt)
        results["plan"] = outcome_of(result)
        ctx.state.first = result.output

    @workflow.phase(final=True)
    async def write(ctx: Context[TwoAgents]) -> Any:
        a = await ctx.run_agent(writer, ctx.state.first)
        b = await ctx.run_agent(planner, "again")
        results["write"], results["again"] = outcome_of(a), outcome_of(b)
        return a.output

    async with Engine("memory://", workflows=[workflow]) as engine:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed"
        second.crash_at = None
        run = await engine.retry("r")
    assert run.status == "completed"
    total = [results[k].usage for k in ("plan", "write", "again")]
    assert run.usage.requests == sum(u["requests"] for u in total) == 7
    assert run.usage.input_tokens == sum(u["input_tokens"] for u in total)
    assert run.usage.output_tokens == sum(u["output_tokens"] for u in total)
    assert run.usage.replayed_requests == 2  # the writer's two recorded requests came from the log
    assert run.usage.saved_input_tokens == 23 + 29 and run.usage.saved_output_tokens == 4 + 4


async def test_delegate_agent_usage_inside_a_tool_is_kept() -> None:
    delegate_calls = {"n": 0}
    crash = {"on": True}

    def delegate_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        delegate_calls["n"] += 1
        return answer("delegated", tokens=100)

    delegate = Agent(FunctionModel(delegate_model), name="delegate", capabilities=[PhaseledgerDurability()])

    def outer_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("ask", {"q": "x"}, tool_call_id="c1")],
                                 usage=RequestUsage(input_tokens=10, output_tokens=1))
        if crash["on"]:
            raise RuntimeError("crash after the tool")
        return answer("done", tokens=20)

    outer = Agent(FunctionModel(outer_model), name="outer", capabilities=[PhaseledgerDurability()])

    @outer.tool
    async def ask(ctx: RunContext[None], q: str) -> str:
        return (await delegate.run(q, usage=ctx.usage)).output

    usages: list[Any] = []
    workflow = Workflow("delegating", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        result = await ctx.run_agent(outer, "go")
        usages.append(result.usage)
        return result.output

    clean_usage = (await outer.run("go")) if False else None  # noqa: F841  (see the assertions below)
    async with Engine("memory://", workflows=[workflow]) as engine:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed"
        tool_entry = next(e for e in engine.store.load("r").journal.values() if e.kind == "tool")
        assert tool_entry.usage["input_tokens"] == 100 and tool_entry.usage["requests"] == 1
        crash["on"] = False
        run = await engine.retry("r")
    assert run.status == "completed" and delegate_calls["n"] == 1
    assert run.usage.requests == 3 and run.usage.input_tokens == 130  # outer 10 + 20, delegate 100
    # the outer run's own usage counts the delegate's request the same way live and on replay
    assert usages[0].requests == 3 and usages[0].input_tokens == 130 and usages[0].tool_calls == 1


# -- streaming and telemetry ------------------------------------------------------------


async def test_event_stream_handler_gets_live_events_only() -> None:
    seen: list[str] = []

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        async for event in events:
            if isinstance(event, FunctionToolCallEvent):
                seen.append(f"call:{event.part.tool_call_id}")
            elif isinstance(event, FunctionToolResultEvent):
                seen.append(f"result:{event.tool_call_id}")

    recorder = Recorder(crash_at=5)  # in the lookup tool, before it runs
    agent = scripted_agent(Script([[("square", 1), ("square", 2)], [("lookup", 3)]]), recorder, event_stream_handler=handler)
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow]) as engine:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed"
        before = list(seen)
        recorder.crash_at = None
        run = await engine.retry("r")
    assert run.status == "completed", run.error
    assert sorted(before) == ["call:s0-0", "call:s0-1", "call:s1-0", "result:s0-0", "result:s0-1"]
    assert seen[len(before):] == ["result:s1-0"]  # replayed events are not delivered again


# -- DurableAgent -------------------------------------------------------------------------


async def test_durable_agent_runs_and_resumes_by_run_id(tmp_path: Any) -> None:
    script = Script([[("square", 6)], [("lookup", 8)]], structured=True)
    recorder = Recorder(crash_at=4)
    agent = scripted_agent(script, recorder, name="solo")
    checkpoints: list[tuple[str, str]] = []
    resumes: list[tuple[str, str]] = []
    durable = DurableAgent(
        agent, engine=f"sqlite:///{tmp_path}/agents.db", retry=RetryPolicy(max_attempts=1),
        on_checkpoint=lambda run_id, label: checkpoints.append((run_id, label)),
        on_resume=lambda run_id, reason: resumes.append((run_id, reason)),
    )
    try:
        with pytest.raises(AgentRunFailed) as failed:
            await durable.run("go", run_id="solo-1")
        assert failed.value.run.status == "failed"
        assert [label for _, label in checkpoints] == [
            "solo__model.request", "solo__function_toolset__<agent>.call_tool:square", "solo__model.request"
        ]
        recorder.crash_at = None
        result = await durable.run("go", run_id="solo-1")
        assert resumes == [("solo-1", "retry")]
        assert result.status == "completed" and isinstance(result.output, Report)
        assert result.output.count == 2 and result.result is not None
        assert result.usage.requests == 3 and result.usage.replayed_requests == 2
        assert all(count == 1 for count in recorder.calls.values())
        again = await durable.run("go", run_id="solo-1")  # completed: the recorded output, nothing runs
        assert again.output == result.output and again.result is None
        assert recorder.total == script.side_effects + 1
    finally:
        durable.close()


# -- versions and tool settings ------------------------------------------------------------


def test_supported_pydantic_ai_versions_are_checked() -> None:
    assert check_pydantic_ai_version("2.68.0") == "2.68.0"
    assert check_pydantic_ai_version("2.71.3") == "2.71.3"
    for version in ("2.67.9", "2.36.0", "3.0.0", "1.9"):
        with pytest.raises(UnsupportedPydanticAI, match=">=2.68,<3"):
            check_pydantic_ai_version(version)


async def test_a_tool_marked_inline_is_not_journaled() -> None:
    calls = {"inline": 0}

    def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("clock", {}, tool_call_id="c1")])
        return answer("done")

    agent = Agent(FunctionModel(model), name="inline", capabilities=[PhaseledgerDurability()])

    @agent.tool_plain(metadata={"phaseledger": False})
    def clock() -> str:
        calls["inline"] += 1
        return "noon"

    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow]) as engine:
        run = await engine.run(workflow, {})
        kinds = [e.data["kind"] for e in engine.history(run.run_id) if e.type == "StepRecorded"]
    assert run.status == "completed" and calls["inline"] == 1 and kinds == ["model", "model"]


async def test_run_start_time_is_journaled_for_timeouts() -> None:
    recorder = Recorder(crash_at=3)
    workflow = one_phase(scripted_agent(Script([[("square", 2)]]), recorder), timeout=30)
    async with Engine("memory://", workflows=[workflow]) as engine:
        assert (await engine.run(workflow, {}, run_id="t")).status == "failed"
        started = engine.store.load("t").journal["a0:start:time"].result
        recorder.crash_at = None
        run = await engine.retry("t")
        assert run.status == "completed"
        assert engine.store.load("t").journal["a0:start:time"].result == started  # replayed, not re-read
