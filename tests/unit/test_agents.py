"""Durable pydantic-ai agents: journaled model requests and tool calls, replay, determinism."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import FunctionModel

from phaseledger import Context, Engine, NonDeterminismError, Workflow
from phaseledger.agents import AgentNotDurable, PhaseledgerDurability
from tests.test_agent_kit import (
    Crash,
    Outcome,
    Recorder,
    Script,
    ScriptState,
    outcome_of,
    script_workflow,
    scripted_agent,
    uninterrupted,
)

SCRIPT = Script([[("square", 2), ("lookup", 31)], [("flaky", 4), ("square", 5)], [("lookup", 7)]])


async def model_call_positions(script: Script) -> list[int]:
    """1-based side-effect positions of the model calls of an uninterrupted run."""
    order: list[str] = []
    recorder = Recorder()
    original = recorder.hit

    def hit(what: str) -> None:
        order.append(what)
        original(what)

    recorder.hit = hit  # type: ignore[method-assign]
    await scripted_agent(script, recorder).run("go")
    return [i + 1 for i, what in enumerate(order) if what.startswith("model:")]


@pytest.mark.parametrize("nth", [1, 2, 4])
async def test_exception_in_nth_model_request_then_resume(store_url: str, nth: int) -> None:
    clean = await uninterrupted(SCRIPT)
    recorder = Recorder(crash_at=(await model_call_positions(SCRIPT))[nth - 1])
    outcomes: dict[str, Outcome] = {}
    workflow = script_workflow(scripted_agent(SCRIPT, recorder), outcomes)
    async with Engine(store_url, workflows=[workflow]) as engine:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed" and "injected failure" in failed.error["message"]
        recorder.crash_at = None
        run = await engine.retry("r")
        assert run.status == "completed"
        assert outcomes["r"] == clean
        assert all(count == 1 for count in recorder.calls.values()), recorder.calls
        assert recorder.total == SCRIPT.side_effects + 1  # the crashed request ran again; nothing else did
        assert run.usage.requests == clean.usage["requests"]
        assert run.usage.input_tokens == clean.usage["input_tokens"]
        assert run.usage.replayed_requests == nth - 1
        assert (run.usage.tokens_saved > 0) == (nth > 1)


async def test_hard_crash_then_resume_in_a_new_engine_replays_without_calling_anything() -> None:
    clean = await uninterrupted(SCRIPT)
    recorder = Recorder(crash_at=6, crash_mode="unwind", crash_after=True)
    outcomes: dict[str, Outcome] = {}
    workflow = script_workflow(scripted_agent(SCRIPT, recorder), outcomes)
    first = Engine("memory://", workflows=[workflow])
    with pytest.raises(BaseException) as crashed:
        await first.run(workflow, {}, run_id="r")
    assert crashed.group_contains(Crash) if isinstance(crashed.value, BaseExceptionGroup) else crashed.type is Crash
    recorded = first.store.load("r").journal
    recorder.crash_at = None
    second = Engine(first.store, workflows=[workflow])
    run = await second.resume("r")
    assert run.status == "completed" and outcomes["r"] == clean
    for key, entry in recorded.items():  # a call that was recorded before the crash never ran again
        if entry.kind == "tool":
            assert recorder.calls[f"tool:{key.split(':')[-1]}"] == 1


async def test_many_parallel_tool_calls_replay_by_tool_call_id() -> None:
    script = Script([[("square", x) for x in range(3, 33)], [("lookup", 1)]])
    clean = await uninterrupted(script)
    recorder = Recorder(crash_at=20, crash_mode="unwind", crash_after=True)
    outcomes: dict[str, Outcome] = {}
    workflow = script_workflow(scripted_agent(script, recorder), outcomes)
    first = Engine("memory://", workflows=[workflow])
    with pytest.raises(BaseException):
        await first.run(workflow, {}, run_id="r")
    journal = first.store.load("r").journal
    tools = {key.split(":")[-1]: entry for key, entry in journal.items() if entry.kind == "tool"}
    assert len(tools) >= 10
    order = sorted(tools, key=lambda call_id: tools[call_id].seq)
    assert order != sorted(order, key=lambda call_id: int(call_id.split("-")[1]))  # they finished out of order
    for call_id, entry in tools.items():  # each recorded result is its own call's
        assert entry.result == {"result": (3 + int(call_id.split("-")[1])) ** 2, "kind": "tool_return"}
    recorder.crash_at = None
    run = await Engine(first.store, workflows=[workflow]).resume("r")
    assert run.status == "completed"
    assert outcomes["r"] == clean  # never swapped: every square is reported for its own call
    for call_id in tools:
        assert recorder.calls[f"tool:{call_id}"] == 1


async def test_outside_a_workflow_the_agent_behaves_normally() -> None:
    recorder = Recorder()
    result = await scripted_agent(SCRIPT, recorder).run("go")
    assert outcome_of(result).output == (await uninterrupted(SCRIPT)).output
    assert recorder.total == SCRIPT.side_effects


async def test_run_agent_makes_a_plain_named_agent_durable_for_the_run() -> None:
    """An agent built without the capability gets it for the run: its calls are journaled and replayed."""
    calls = {"model": 0, "tool": 0}
    fail = [True]

    def model(messages: list[Any], info: Any) -> ModelResponse:
        calls["model"] += 1
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("add", {"a": 1, "b": 2}, tool_call_id="t1")])
        if fail[0]:
            raise ConnectionError("provider down")
        return ModelResponse(parts=[TextPart("done")])

    plain = Agent(FunctionModel(model), name="plain")

    @plain.tool_plain
    def add(a: int, b: int) -> int:
        calls["tool"] += 1
        return a + b

    workflow = Workflow("plain", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        return (await ctx.run_agent(plain, "go")).output

    async with Engine("memory://", workflows=[workflow]) as engine:
        view = await engine.run(workflow, {}, run_id="r")
        assert view.status == "failed" and calls == {"model": 2, "tool": 1}
        fail[0] = False
        view = await engine.retry("r")
        assert view.output == "done" and view.usage.replayed_requests == 1
        assert calls == {"model": 3, "tool": 1}  # the first request and the tool came from the log
        kinds = [e.data["kind"] for e in engine.history("r") if e.type == "StepRecorded"]
        assert kinds == ["model", "tool", "model"]
    assert PhaseledgerDurability.from_agent(plain) is None  # the agent itself is left as it was


async def test_run_agent_needs_a_named_agent() -> None:
    nameless = Agent(FunctionModel(lambda m, i: ModelResponse(parts=[TextPart("hi")])))
    workflow = Workflow("nameless", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        return (await ctx.run_agent(nameless, "go")).output

    async with Engine("memory://", workflows=[workflow]) as engine:
        view = await engine.run(workflow, {})
    assert view.status == "failed" and view.error["type"] == AgentNotDurable.__name__
    assert "name=" in view.error["message"]


async def test_plain_agent_run_in_a_handler_is_journaled_too() -> None:
    recorder = Recorder()
    agent = scripted_agent(SCRIPT, recorder)
    workflow = Workflow("plain-run", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        return (await agent.run(ctx.state.prompt)).output

    async with Engine("memory://", workflows=[workflow]) as engine:
        view = await engine.run(workflow, {})
        kinds = [e.data["kind"] for e in engine.history(view.run_id) if e.type == "StepRecorded"]
    assert view.status == "completed"
    assert kinds.count("model") == 5 and kinds.count("tool") == 6  # flaky runs twice


# -- determinism -----------------------------------------------------------------------


async def _crash_then_retry_with(changed_workflow: Workflow[Any], workflow: Workflow[Any], recorder: Recorder) -> Any:
    engine = Engine("memory://", workflows=[workflow])
    failed = await engine.run(workflow, {}, run_id="r")
    assert failed.status == "failed"
    recorder.crash_at = None
    other = Engine(engine.store, workflows=[changed_workflow])
    with pytest.raises(NonDeterminismError) as error:
        await other.retry("r")
    assert other.store.load("r").status == "failed"  # nothing was appended
    return error.value


async def test_changed_prompt_raises_non_determinism() -> None:
    recorder = Recorder(crash_at=(await model_call_positions(SCRIPT))[2])
    workflow = script_workflow(scripted_agent(SCRIPT, recorder), {})
    changed = Workflow("agent-script", state=ScriptState)
    agent = scripted_agent(SCRIPT, recorder)

    @changed.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        return (await ctx.run_agent(agent, "another prompt")).output

    error = await _crash_then_retry_with(changed, workflow, recorder)
    assert error.run_id == "r" and error.seq == 0
    assert "scripted__model.request" in error.recorded and "prompt" in error.asked


class DoubleArguments(AbstractCapability[Any]):
    """A code change under a running run: tool arguments are rewritten before the call."""

    async def before_tool_execute(self, ctx: RunContext[Any], *, call: Any, tool_def: Any, args: Any) -> Any:
        return {**args, "x": args["x"] * 2}


async def test_changed_tool_arguments_raise_non_determinism() -> None:
    recorder = Recorder(crash_at=(await model_call_positions(SCRIPT))[2])
    workflow = script_workflow(scripted_agent(SCRIPT, recorder), {})
    changed = script_workflow(scripted_agent(SCRIPT, recorder, extra_capabilities=[DoubleArguments()]), {})
    error = await _crash_then_retry_with(changed, workflow, recorder)
    assert "call_tool:square" in error.recorded and 'arguments {"x": 4}' in error.asked


async def test_another_model_raises_non_determinism() -> None:
    recorder = Recorder(crash_at=(await model_call_positions(SCRIPT))[2])
    workflow = script_workflow(scripted_agent(SCRIPT, recorder), {})
    changed = script_workflow(scripted_agent(SCRIPT, recorder, model_name="another"), {})
    error = await _crash_then_retry_with(changed, workflow, recorder)
    assert "'scripted'" in error.recorded and "'another'" in error.asked
