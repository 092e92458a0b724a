"""(3) What durability adds to a pydantic-ai agent run, per journaled unit; (6) bytes per model call.

The agent uses a ``FunctionModel`` (no I/O): it asks for a tool, then answers, so a run is
two model requests and one tool call, three journaled units. Each repeat times, back to
back, ``runs`` plain agent runs (no capability, no workflow: the floor) and the same
number of runs of the same agent with ``PhaseledgerDurability`` inside one phase via
``ctx.run_agent``, committing every unit. Reported: time per agent run (ratio to the
plain run) and the added time per journaled unit; on durable stores also the bytes stored
per model request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from benchmarks._harness import Backends, Result, bracketed, now
from benchmarks.bench_storage import table_bytes
from benchmarks.workloads import Timings
from phaseledger import Context, Engine, Workflow
from phaseledger.store.eventstore import Store


@dataclass(frozen=True)
class Sizes:
    """How big and how often."""

    runs: int = 50
    repeats: int = 5


def _model(messages: list[Any], info: Any) -> Any:
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.usage import RequestUsage

    usage = RequestUsage(input_tokens=40 * len(messages), output_tokens=10)
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("lookup", {"key": "answer"})], usage=usage)
    return ModelResponse(parts=[TextPart(f"The answer is {messages[-1].parts[0].content}.")], usage=usage)


def make_agent(durable: bool) -> Any:
    """The benchmark agent, with or without phaseledger's durability capability."""
    from pydantic_ai import Agent
    from pydantic_ai.models.function import FunctionModel

    from phaseledger import PhaseledgerDurability

    agent = Agent(FunctionModel(_model), name="bench", capabilities=[PhaseledgerDurability()] if durable else [])

    @agent.tool_plain
    def lookup(key: str) -> str:
        return f"42 ({key})"

    return agent


class Runs(BaseModel):
    """How many agent runs the phase makes."""

    n: int


def agents_workflow(agent: Any, timings: Timings) -> Workflow[Runs]:
    """One phase making ``n`` durable agent runs (marks before the first and after the last)."""
    wf = Workflow("bench-agents", state=Runs)

    @wf.phase(initial=True, final=True)
    async def talk(ctx: Context[Runs]) -> int:
        timings.mark(ctx.run_id)
        for _ in range(ctx.state.n):
            result = await ctx.run_agent(agent, "What is the answer?")
            if not result.output.startswith("The answer is 42"):
                raise RuntimeError(f"unexpected agent output {result.output!r}")
        timings.mark(ctx.run_id)
        return ctx.state.n

    return wf


def plain_seconds(agent: Any, runs: int) -> float:
    """Seconds per plain agent run."""

    async def main() -> float:
        start = now()
        for _ in range(runs):
            await agent.run("What is the answer?")
        return (now() - start) / runs

    return asyncio.run(main())


async def durable_run(url: str, agent: Any, runs: int) -> tuple[float, int, str]:
    """``(seconds per agent run, journaled units, run id)`` of one durable run."""
    timings = Timings()
    wf = agents_workflow(agent, timings)
    engine = Engine(url, workflows=[wf])
    try:
        run = await engine.run(wf, Runs(n=runs))
        if run.status != "completed":
            raise RuntimeError(f"benchmark run ended {run.status}: {run.error}")
        units = sum(1 for e in engine.history(run.run_id) if e.type == "StepRecorded")
        first, last = timings.marks[run.run_id]
        return (last - first) / runs, units, run.run_id
    finally:
        engine.close()


def unavailable() -> str | None:
    """Why the agent benchmark cannot run here, or None."""
    try:
        import pydantic_ai  # noqa: F401

        from phaseledger import PhaseledgerDurability  # noqa: F401
    except ImportError as exc:
        return f"pydantic-ai durability is not available: {exc}"
    return None


def run(backends: Backends, sizes: Sizes = Sizes()) -> list[Result]:
    """Measure durable agent overhead on memory, SQLite and (when reachable) PostgreSQL."""
    plain, durable = make_agent(False), make_agent(True)
    results = []
    for backend in ["memory", *backends.durable]:
        values, floors, per_unit = [], [], []
        units_per_run = 0.0
        model_bytes: float | None = None
        for _ in range(sizes.repeats):
            with backends.store_url(backend, "agents") as url:
                measured: dict[str, Any] = {}

                def subject(url: str = url) -> float:
                    seconds, units, run_id = asyncio.run(durable_run(url, durable, sizes.runs))
                    measured.update(units=units, run_id=run_id)
                    return seconds

                value, floor = bracketed(lambda: plain_seconds(plain, sizes.runs), subject)
                if backend != "memory" and model_bytes is None:
                    model_bytes = _model_call_bytes(url)
            units_per_run = measured["units"] / sizes.runs
            values.append(value * 1e3)
            floors.append(floor * 1e3)
            per_unit.append((value - floor) / units_per_run * 1e6)
        results.append(Result.paired(
            "agents", f"{backend}, {units_per_run:g} units per agent run", "per agent run", "ms", values,
            "plain agent run", floors, runs=sizes.runs, units_per_run=units_per_run,
        ))
        results.append(Result.paired(
            "agents", f"{backend}, added per journaled unit", "per unit", "µs", per_unit,
            units_per_run=units_per_run,
        ))
        if model_bytes is not None:
            results.append(Result.paired(
                "storage", f"{backend} model request (FunctionModel)", "bytes per model call", "B", [model_bytes],
            ))
    return results


def _model_call_bytes(url: str) -> float:
    store = Store(url)
    try:
        table = store.app.recorder.events_table_name  # type: ignore[attr-defined]
        rows, size = table_bytes(store, table, "StepRecorded", kind="model")
    finally:
        store.close()
    return size / rows if rows else 0.0
