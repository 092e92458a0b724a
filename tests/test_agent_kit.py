"""Scripted pydantic-ai agents for the durable-agent tests (and a child process entry point).

A *script* is what the model will do, turn by turn: call some tools (several at once means
parallel tool calls), then answer with text or with structured output. The model is a
``FunctionModel`` whose every response is derived from the message history alone, so a
replayed run and a live run see the same answers. A :class:`Recorder` counts each real
model call and tool call (the side effects a durable run must not repeat) and can crash
the process at the n-th one: with an exception, a ``BaseException`` that unwinds without
committing (an in-process hard crash), or ``SIGKILL``.

Run as ``python -m tests.test_agent_kit child ...`` it drives one run in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.usage import RequestUsage

from phaseledger import Context, Engine, Workflow
from phaseledger.agents import PhaseledgerDurability
from phaseledger.domain.values import strip_volatile

TOOLS = ("square", "lookup", "flaky")


class Report(BaseModel):
    """The structured output of a scripted agent."""

    summary: str
    count: int


@dataclass
class Script:
    """Turns of tool calls, each a list of ``(tool, arg)``, then a final answer."""

    turns: list[list[tuple[str, int]]]
    structured: bool = False

    def to_json(self) -> str:
        return json.dumps({"turns": self.turns, "structured": self.structured})

    @classmethod
    def from_json(cls, text: str) -> Script:
        data = json.loads(text)
        return cls([[(t, a) for t, a in turn] for turn in data["turns"]], data["structured"])

    @property
    def side_effects(self) -> int:
        """Model calls plus tool calls of an uninterrupted run (flaky tools run twice)."""
        tools = sum(2 if t == "flaky" else 1 for turn in self.turns for t, _ in turn)
        retries = sum(1 for turn in self.turns if any(t == "flaky" for t, _ in turn))
        return len(self.turns) + 1 + retries + tools


class InjectedFailure(RuntimeError):
    """A failure injected by a test; permanent, so retry policies do not retry it."""

    retryable = False


class Crash(BaseException):
    """An in-process hard crash: unwinds everything without committing (like a power cut)."""


@dataclass
class Recorder:
    """Counts real model and tool calls, and crashes at the n-th of them when told to."""

    crash_at: int | None = None
    crash_mode: str = "exception"  # exception | unwind | kill
    crash_after: bool = False
    """Crash after the n-th side effect happened (it then runs again on resume) instead of before."""
    log: Path | None = None
    transient: set[int] = field(default_factory=set)
    """Side-effect positions that first fail with a transient error (retried by a RetryPolicy)."""
    calls: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def hit(self, what: str) -> None:
        if self.total + 1 in self.transient:
            self.transient.discard(self.total + 1)
            raise ConnectionError(f"transient failure before {what}")
        self.total += 1
        if not self.crash_after:
            self._maybe_crash()
        self.calls[what] = self.calls.get(what, 0) + 1
        if self.log is not None:
            with self.log.open("a") as f:
                f.write(what + "\n")
        if self.crash_after:
            self._maybe_crash()

    def _maybe_crash(self) -> None:
        if self.crash_at is None or self.total != self.crash_at:
            return
        if self.crash_mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.crash_mode == "unwind":
            raise Crash(f"crash at side effect {self.total}")
        raise InjectedFailure(f"injected failure at side effect {self.total}")


def _step_of(call_id: str) -> int:
    return int(call_id.split("-")[0][1:])


def _asks_retry(part: Any) -> bool:
    if isinstance(part, RetryPromptPart):
        return part.tool_name is not None
    return isinstance(part, ToolReturnPart) and getattr(part, "outcome", None) == "retried"


def scripted_model(script: Script, recorder: Recorder) -> FunctionModel:
    """A model that follows ``script``, deciding each response from the history only."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        last = messages[-1]
        assert isinstance(last, ModelRequest)
        retries = [p for p in last.parts if _asks_retry(p)]
        calls = [p for m in messages if isinstance(m, ModelResponse) for p in m.parts if isinstance(p, ToolCallPart)]
        step = 1 + max((_step_of(c.tool_call_id) for c in calls), default=-1)
        usage = RequestUsage(input_tokens=20 + 3 * len(messages), output_tokens=4 + len(retries))
        if retries:  # the model calls the tools that asked for a retry again
            by_id = {c.tool_call_id: c for c in calls}
            parts = [
                ToolCallPart(by_id[r.tool_call_id].tool_name, by_id[r.tool_call_id].args, tool_call_id=f"{r.tool_call_id}r")
                for r in retries
            ]
            recorder.hit(f"model:{step}:retry")
            return ModelResponse(parts=parts, usage=usage)
        recorder.hit(f"model:{step}")
        if step < len(script.turns):
            parts = [
                ToolCallPart(tool, {"x": arg}, tool_call_id=f"s{step}-{i}") for i, (tool, arg) in enumerate(script.turns[step])
            ]
            return ModelResponse(parts=parts, usage=usage)
        returns = [
            f"{p.tool_call_id}={p.content}"
            for m in messages if isinstance(m, ModelRequest) for p in m.parts
            if isinstance(p, ToolReturnPart) and not _asks_retry(p)
        ]
        summary = ";".join(returns) or "nothing"
        if script.structured:
            tool = info.output_tools[0].name
            return ModelResponse(parts=[ToolCallPart(tool, {"summary": summary, "count": len(returns)}, tool_call_id=f"s{step}-out")], usage=usage)
        return ModelResponse(parts=[TextPart(summary)], usage=usage)

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        response = respond(messages, info)
        for part in response.parts:
            if isinstance(part, TextPart):
                for i in range(0, len(part.content), 8):
                    yield part.content[i : i + 8]
            else:
                assert isinstance(part, ToolCallPart)
                yield {part.tool_call_id: DeltaToolCall(part.tool_name, json.dumps(part.args), tool_call_id=part.tool_call_id)}

    return FunctionModel(respond, stream_function=stream, model_name="scripted")


def scripted_agent(
    script: Script, recorder: Recorder, *, name: str = "scripted", model_name: str = "scripted",
    extra_capabilities: list[Any] | None = None, **capability: Any,
) -> Agent[None, Any]:
    """An agent with the durable capability, three tools and the scripted model."""
    model = scripted_model(script, recorder)
    if model_name != "scripted":
        model = FunctionModel(model.function, stream_function=model.stream_function, model_name=model_name)
    agent: Agent[None, Any] = Agent(
        model, name=name, output_type=Report if script.structured else str,
        capabilities=[*(extra_capabilities or []), PhaseledgerDurability(**capability)],
    )

    @agent.tool
    async def square(ctx: RunContext[None], x: int) -> int:
        """Square a number (slower for some inputs, so parallel calls finish out of order)."""
        await asyncio.sleep(((x * 7) % 5) * 0.001)
        recorder.hit(f"tool:{ctx.tool_call_id}")
        return x * x

    @agent.tool
    async def lookup(ctx: RunContext[None], x: int) -> dict[str, Any]:
        """Look a number up."""
        await asyncio.sleep(((x * 3) % 4) * 0.001)
        recorder.hit(f"tool:{ctx.tool_call_id}")
        return {"key": x, "value": str(x)[::-1]}

    @agent.tool
    async def flaky(ctx: RunContext[None], x: int) -> str:
        """Asks the model to retry the first time."""
        recorder.hit(f"tool:{ctx.tool_call_id}")
        if ctx.retry == 0:
            raise ModelRetry(f"try {x} again")
        return f"ok{x}"

    return agent


class Outcome(BaseModel):
    """What a run of a scripted agent produced, comparable across runs."""

    output: Any
    usage: dict[str, int]
    messages: Any


def outcome_of(result: Any) -> Outcome:
    """The comparable outcome of an ``AgentRunResult`` (message timestamps stripped)."""
    usage = result.usage
    output = result.output.model_dump() if isinstance(result.output, BaseModel) else result.output
    messages = strip_volatile(ModelMessagesTypeAdapter.dump_python(result.all_messages(), mode="json"))
    return Outcome(
        output=output,
        usage={"requests": usage.requests, "tool_calls": usage.tool_calls,
               "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        messages=messages,
    )


class ScriptState(BaseModel):
    prompt: str = "go"


def script_workflow(agent: Agent[None, Any], outcomes: dict[str, Outcome], *, name: str = "agent-script") -> Workflow[ScriptState]:
    """A one-phase workflow running ``agent``; each finished run's outcome lands in ``outcomes``."""
    workflow = Workflow(name, state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        result = await ctx.run_agent(agent, ctx.state.prompt)
        outcome = outcome_of(result)
        outcomes[ctx.run_id] = outcome
        return outcome.output

    return workflow


async def uninterrupted(script: Script, run_id: str = "r") -> Outcome:
    """The outcome of the script run without any crash (on a memory store) as run ``run_id``.

    Agent run ids (and so conversation ids) derive from the workflow run id, so compare
    runs with the same id.
    """
    outcomes: dict[str, Outcome] = {}
    recorder = Recorder()
    workflow = script_workflow(scripted_agent(script, recorder), outcomes)
    async with Engine("memory://", workflows=[workflow]) as engine:
        run = await engine.run(workflow, {}, run_id=run_id)
        assert run.status == "completed", run.error
    return outcomes[run_id]


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--script", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--crash-at", type=int, default=None)
    parser.add_argument("--crash-after", action="store_true")
    args = parser.parse_args(argv)
    script = Script.from_json(args.script)
    recorder = Recorder(crash_at=args.crash_at, crash_mode="kill", crash_after=args.crash_after, log=Path(args.log))
    outcomes: dict[str, Outcome] = {}
    workflow = script_workflow(scripted_agent(script, recorder), outcomes)

    async def main() -> None:
        async with Engine(args.store, workflows=[workflow]) as engine:
            if args.run_id in engine.store.run_ids():
                run = await engine.resume(args.run_id)
            else:
                run = await engine.run(workflow, {}, run_id=args.run_id)
            usage = run.usage.model_dump()
        Path(args.out).write_text(json.dumps(
            {"status": run.status, "outcome": outcomes[args.run_id].model_dump(mode="json"), "usage": usage}
        ))

    asyncio.run(main())


def test_scripted_agent_runs_without_a_workflow() -> None:
    """Outside a workflow the capability is transparent: the agent runs like any agent."""
    script = Script([[("square", 3), ("lookup", 12)], [("flaky", 5)]], structured=True)
    recorder = Recorder()
    result = scripted_agent(script, recorder).run_sync("go")
    assert result.output == Report(summary="s0-0=9;s0-1={'key': 12, 'value': '21'};s1-0r=ok5", count=3)
    assert recorder.total == script.side_effects
    assert result.usage.requests == 4


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "child":
    _child(sys.argv[2:])
