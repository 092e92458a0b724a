"""OpenTelemetry spans of the engine: a drive, its phase visits and its live calls; replayed
calls are not traced again, and pydantic-ai's own spans land in the same trace."""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from pydantic_ai.models.instrumented import InstrumentationSettings

from phaseledger import Context, Engine, Workflow
from phaseledger.demo.research import build_research


class Ticket(BaseModel):
    notes: list[str] = []
    answer: str = ""


def _workflow() -> Workflow[Ticket]:
    wf = Workflow("ticket", state=Ticket, signals={"answer": None})

    def note(text: str) -> str:
        return text.upper()

    def flaky(state: dict[str, int]) -> str:
        state["calls"] += 1
        if state["calls"] == 1:
            raise ValueError("first attempt fails")
        return "ok"

    attempts = {"calls": 0}

    @wf.phase(initial=True, to="done")
    async def triage(ctx: Context[Ticket]) -> None:
        ctx.state.notes.append(await ctx.step("note", note, "a"))
        ctx.state.notes.append(await ctx.step("note", note, "b"))
        ctx.state.answer = await ctx.wait_for_signal("answer")
        from phaseledger import RetryPolicy

        ctx.state.notes.append(await ctx.step("flaky", flaky, attempts,
                                              retry=RetryPolicy(max_attempts=2, initial_delay=0.0)))

    @wf.phase(final=True)
    async def done(ctx: Context[Ticket]) -> str:
        return ctx.state.answer

    return wf


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _names(spans: list[ReadableSpan]) -> list[str]:
    return [s.name for s in sorted(spans, key=lambda s: s.start_time or 0)]


def test_spans_of_a_drive_its_phases_and_live_calls_and_none_for_replayed_ones() -> None:
    wf = _workflow()
    provider, exporter = _provider()

    async def go() -> None:
        engine = Engine("memory://", workflows=[wf], max_inline_wait=0)
        engine.instrument(provider)
        try:
            first = await engine.run(wf, {}, run_id="t1")
            assert first.status == "waiting"
            spans = exporter.get_finished_spans()
            assert _names(list(spans)) == ["phaseledger run ticket", "phaseledger phase triage",
                                           "phaseledger step note", "phaseledger step note"]
            drive = next(s for s in spans if s.name == "phaseledger run ticket")
            phase = next(s for s in spans if s.name == "phaseledger phase triage")
            steps = [s for s in spans if s.name == "phaseledger step note"]
            assert {s.context.trace_id for s in spans} == {drive.context.trace_id}
            assert phase.parent is not None and phase.parent.span_id == drive.context.span_id
            assert all(s.parent is not None and s.parent.span_id == phase.context.span_id for s in steps)
            assert phase.attributes is not None and phase.attributes["phaseledger.stopped"] == "suspended"
            assert phase.status.is_ok and drive.attributes["phaseledger.run_id"] == "t1"
            assert [s.attributes["phaseledger.call.key"] for s in steps] == ["0", "1"]  # type: ignore[index]
            exporter.clear()

            await engine.signal("t1", "answer", "forty-two")
            done = await engine.resume("t1")
            assert done.status == "completed" and done.output == "forty-two"
            spans = exporter.get_finished_spans()
            # The resumed visit replays the two notes and the signal from the log: no span for them.
            assert _names(list(spans)) == ["phaseledger run ticket", "phaseledger phase triage",
                                           "phaseledger step flaky", "phaseledger phase done"]
            triage = next(s for s in spans if s.name == "phaseledger phase triage")
            assert triage.attributes is not None and triage.attributes["phaseledger.replayed_calls"] == 2
            flaky = next(s for s in spans if s.name == "phaseledger step flaky")
            assert flaky.status.is_ok  # its failed first attempt was retried
        finally:
            engine.close()

    asyncio.run(go())


def test_a_failing_phase_marks_its_spans_as_errors_and_tracing_is_off_by_default() -> None:
    wf = Workflow("boom", state=Ticket)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[Ticket]) -> None:
        raise RuntimeError("broken")

    provider, exporter = _provider()

    async def go() -> None:
        engine = Engine("memory://", workflows=[wf])
        try:
            assert not engine.tracing.enabled
            await engine.run(wf, {}, run_id="quiet")
            assert exporter.get_finished_spans() == ()
            engine.instrument(provider)
            assert (await engine.run(wf, {}, run_id="loud")).status == "failed"
        finally:
            engine.close()

    asyncio.run(go())
    phase = next(s for s in exporter.get_finished_spans() if s.name == "phaseledger phase only")
    assert not phase.status.is_ok and "RuntimeError: broken" in (phase.status.description or "")
    assert [e.name for e in phase.events] == ["exception"]


def test_pydantic_ai_spans_of_an_instrumented_agent_are_children_of_the_phase() -> None:
    research = build_research()
    provider, exporter = _provider()
    settings = InstrumentationSettings(tracer_provider=provider)

    async def go() -> Any:
        engine = Engine("memory://", workflows=[research])
        engine.instrument(provider)
        from pydantic_ai import Agent

        try:
            Agent.instrument_all(settings)
            return await engine.run(research, {"topic": "tracing"}, run_id="r1")
        finally:
            Agent.instrument_all(False)
            engine.close()

    run = asyncio.run(go())
    assert run.status == "completed"
    spans = list(exporter.get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}
    chats = [s for s in spans if (s.attributes or {}).get("gen_ai.operation.name") == "chat"]
    assert chats, "the instrumented agents made no chat spans"
    assert {s.context.trace_id for s in spans} == {spans[0].context.trace_id}

    def phase_above(span: ReadableSpan) -> str | None:
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            if span.name.startswith("phaseledger phase "):
                return span.name.removeprefix("phaseledger phase ")
        return None

    assert {phase_above(s) for s in chats} >= {"planning", "execution", "validation"}
    assert any(s.name.startswith("phaseledger model ") for s in spans)


def test_the_environment_switches_tracing_on_with_the_global_provider() -> None:
    import subprocess
    import sys

    code = """
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from phaseledger import Context, Engine, Workflow

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

class S(BaseModel):
    n: int = 0

wf = Workflow("env", state=S)

@wf.phase(initial=True, final=True)
async def only(ctx: Context[S]) -> int:
    return await ctx.step("one", lambda: 1)

engine = Engine("memory://", workflows=[wf])
asyncio.run(engine.run(wf, {}))
engine.close()
print(sorted(span.name for span in exporter.get_finished_spans()))
"""
    import os

    for value, expected in (("1", "['phaseledger phase only', 'phaseledger run env', 'phaseledger step one']"),
                            ("0", "[]")):
        env = {**os.environ, "PHASELEDGER_TRACING": value}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        assert out.stdout.strip() == expected
