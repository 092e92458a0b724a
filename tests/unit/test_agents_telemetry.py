"""Telemetry of durable agents: replayed model requests and tool calls are not traced or metered twice.

pydantic-ai instruments an agent run with OpenTelemetry: an ``invoke_agent`` span for the
run, a ``chat`` span per model request, an ``execute_tool`` span per tool call, and a
``gen_ai.client.token.usage`` histogram per model request. A resumed phaseledger run
replays the agent from the start, serving recorded units from the journal; the capability
runs the agent in pydantic-ai's ``replay_scope()`` and reports every unit with
``record_durable_unit``, so only work that really runs is exported again.

The measurement: an in-memory span exporter and metric reader per phase of the test (the
agent's own ``instrument=`` settings, so no global instrumentation is switched on).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.models.instrumented import InstrumentationSettings

from phaseledger import Context, Engine, Workflow
from tests.test_agent_kit import (
    Crash,
    Outcome,
    Recorder,
    Script,
    ScriptState,
    outcome_of,
    scripted_agent,
    uninterrupted,
)

SCRIPT = Script([[("square", 2), ("lookup", 31)], [("square", 5)]])
"""Request 1 calls two tools in parallel, request 2 calls one more, request 3 answers."""

REQUEST_2 = 1 + len(SCRIPT.turns[0]) + 1
"""The side-effect position of model request 2: after request 1 and its tool calls."""

VIA = ["ctx.run_agent", "agent.run"]


def _operation(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get("gen_ai.operation.name"))


@dataclass
class Telemetry:
    """A tracer and a meter provider for one agent, keeping what it exports in memory."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    settings: InstrumentationSettings

    @classmethod
    def attach(cls, agent: Agent[Any, Any]) -> Telemetry:
        """Instrument ``agent`` (only it) with fresh in-memory providers; replaces earlier ones."""
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        reader = InMemoryMetricReader()
        settings = InstrumentationSettings(
            tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
        )
        agent.instrument = settings
        return cls(exporter, reader, settings)

    def spans(self, operation: str) -> list[ReadableSpan]:
        """The exported spans of one ``gen_ai.operation.name`` (chat, execute_tool, invoke_agent)."""
        return [s for s in self.exporter.get_finished_spans() if _operation(s) == operation]

    def operations(self) -> Counter[str]:
        """How many spans of each operation were exported."""
        return Counter(_operation(s) for s in self.exporter.get_finished_spans())

    def answered(self) -> dict[int, ReadableSpan]:
        """The exported ``chat`` spans of model requests that got a response, by request (1-based).

        Request n of a scripted run gets 1 + 2(n - 1) input messages: the prompt, then a
        response and the tool returns per earlier request. (The span of a request a crash
        interrupted carries no messages.)
        """
        answered: dict[int, ReadableSpan] = {}
        for span in self.spans("chat"):
            messages = (span.attributes or {}).get("gen_ai.input.messages")
            if messages is not None:
                request = (len(json.loads(str(messages))) + 1) // 2
                assert request not in answered, f"model request {request} traced twice"
                answered[request] = span
        return answered

    def chat_requests(self) -> list[int]:
        """The model requests whose ``chat`` span was exported with a response."""
        return sorted(self.answered())

    def chat_tokens(self, request: int) -> int:
        """The input tokens the ``chat`` span of model request ``request`` reports."""
        return int(self.answered()[request].attributes["gen_ai.usage.input_tokens"])

    def tool_calls(self) -> list[str]:
        """The tool call ids of the exported ``execute_tool`` spans."""
        return sorted(str(s.attributes["gen_ai.tool.call.id"]) for s in self.spans("execute_tool"))

    def token_metrics(self) -> dict[str, tuple[int, int]]:
        """``gen_ai.client.token.usage`` by token type: (tokens, model requests recorded)."""
        totals: dict[str, tuple[int, int]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "gen_ai.client.token.usage":
                        continue
                    for point in metric.data.data_points:
                        kind = str(point.attributes["gen_ai.token.type"])
                        tokens, requests = totals.get(kind, (0, 0))
                        totals[kind] = (tokens + int(point.sum), requests + point.count)
        return totals


def agent_workflow(
    agent: Agent[None, Any], via: str, outcomes: dict[str, Outcome], crash_after_agent: set[str]
) -> Workflow[ScriptState]:
    """One phase running ``agent`` by ``ctx.run_agent`` or a plain ``agent.run``.

    A run whose id is in ``crash_after_agent`` crashes once after the agent run finished,
    before the phase completes: every unit of the agent run is recorded, the run is not.
    """
    workflow = Workflow(f"telemetry-{via}", state=ScriptState)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        if via == "ctx.run_agent":
            result = await ctx.run_agent(agent, ctx.state.prompt)
        else:
            result = await agent.run(ctx.state.prompt)
        if ctx.run_id in crash_after_agent:
            crash_after_agent.discard(ctx.run_id)
            raise Crash("crash after the agent run, before the phase completes")
        outcomes[ctx.run_id] = outcome_of(result)
        return outcomes[ctx.run_id].output

    return workflow


def fresh_engine(store_url: str, first: Engine, workflow: Workflow[Any]) -> Engine:
    """A new engine on the store of ``first`` (the same store object for memory://)."""
    return Engine(first.store if store_url.startswith("memory") else store_url, workflows=[workflow])


@pytest.mark.parametrize("via", VIA)
async def test_resume_after_a_crash_in_model_request_2_traces_only_live_work(store_url: str, via: str) -> None:
    clean = await uninterrupted(SCRIPT)
    recorder = Recorder(crash_at=REQUEST_2, crash_mode="unwind")
    agent = scripted_agent(SCRIPT, recorder)
    outcomes: dict[str, Outcome] = {}
    workflow = agent_workflow(agent, via, outcomes, set())

    before = Telemetry.attach(agent)
    first = Engine(store_url, workflows=[workflow])
    with pytest.raises(Crash):
        await first.run(workflow, {}, run_id="r")
    first.close()
    assert recorder.calls == {"model:0": 1, "tool:s0-0": 1, "tool:s0-1": 1}
    # Before the crash everything ran live and was traced: request 1, its two tools, and
    # request 2, whose span ends (without a response) with the crash.
    assert before.chat_requests() == [1]
    assert before.tool_calls() == ["s0-0", "s0-1"]
    assert before.operations() == {"chat": 2, "execute_tool": 2, "invoke_agent": 1}
    request_1_tokens = before.chat_tokens(1)

    resumed = Telemetry.attach(agent)
    recorder.crash_at = None
    async with fresh_engine(store_url, first, workflow) as second:
        run = await second.resume("r")
    assert run.status == "completed" and outcomes["r"] == clean
    assert all(count == 1 for count in recorder.calls.values()), recorder.calls
    # The replayed request 1 and its tools export nothing; request 2 (in flight at the
    # crash), the live tool it asks for and request 3 do, under one new run span.
    assert resumed.chat_requests() == [2, 3]
    assert resumed.tool_calls() == ["s1-0"]
    assert resumed.operations() == {"chat": 2, "execute_tool": 1, "invoke_agent": 1}
    # Token metrics count the live requests only: request 1's tokens are not metered again.
    live_input = clean.usage["input_tokens"] - request_1_tokens
    assert resumed.token_metrics()["input"] == (live_input, 2)
    assert sum(resumed.chat_tokens(n) for n in (2, 3)) == live_input
    # The run span reports the agent run's usage once: equal to the uninterrupted run's.
    (agent_span,) = resumed.spans("invoke_agent")
    assert agent_span.attributes["gen_ai.aggregated_usage.input_tokens"] == clean.usage["input_tokens"]
    assert agent_span.attributes["gen_ai.aggregated_usage.output_tokens"] == clean.usage["output_tokens"]
    assert run.usage.replayed_requests == 1 and run.usage.saved_input_tokens == request_1_tokens


@pytest.mark.parametrize("via", VIA)
async def test_a_fully_recorded_agent_run_replays_without_exporting_anything(store_url: str, via: str) -> None:
    clean = await uninterrupted(SCRIPT)
    recorder = Recorder()
    agent = scripted_agent(SCRIPT, recorder)
    outcomes: dict[str, Outcome] = {}
    workflow = agent_workflow(agent, via, outcomes, {"r"})

    live = Telemetry.attach(agent)
    first = Engine(store_url, workflows=[workflow])
    with pytest.raises(Crash):
        await first.run(workflow, {}, run_id="r")
    first.close()
    assert live.chat_requests() == [1, 2, 3]
    assert live.tool_calls() == ["s0-0", "s0-1", "s1-0"]
    assert live.operations() == {"chat": 3, "execute_tool": 3, "invoke_agent": 1}
    assert live.token_metrics()["input"] == (clean.usage["input_tokens"], 3)
    side_effects = recorder.total

    replayed = Telemetry.attach(agent)
    async with fresh_engine(store_url, first, workflow) as second:
        run = await second.resume("r")
    assert run.status == "completed" and outcomes["r"] == clean
    assert recorder.total == side_effects  # nothing ran again
    # Every unit came from the journal, so no span at all (not even invoke_agent) and no
    # token metric is exported a second time.
    assert [span.name for span in replayed.exporter.get_finished_spans()] == []
    assert replayed.token_metrics() == {}
    assert run.usage.replayed_requests == 3
