"""The four-phase research workflow with pydantic-ai agents, on SQLite.

planning -> execution -> validation -> completion, where validation sends the run back to
execution while questions are open. Every model request and tool call of the planner,
researcher and validator agents is an event of the run. Interrupt it (Ctrl-C) and run the
same command again: the run resumes from its log and recorded calls are not paid again.

    python examples/research.py [--store sqlite:///research.db] [--run-id ID] [--model openai:gpt-4o]

Without --model the agents use a deterministic local model (no API key needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from phaseledger import Engine, RunNotFound
from phaseledger.demo.research import Research, build_research


async def main(store: str, run_id: str, topic: str, model: str | None, latency: float) -> None:
    workflow = build_research(model=model, latency=latency)
    async with Engine(store, workflows=[workflow]) as engine:
        # A run that exists already is returned when finished, resumed from its log otherwise.
        with contextlib.suppress(RunNotFound):
            if not (await engine.get_async(run_id)).finished:
                print(f"resuming run {run_id} from its log")
        run = await engine.run(workflow, Research(topic=topic), run_id=run_id, if_exists="return")
        history = engine.history(run_id)

    print(f"\nrun {run.run_id}: {run.status}, {run.version} events")
    print("phases:", " -> ".join(e.data["phase"] for e in history if e.type == "PhaseEntered"))
    print("steps:")
    for event in history:
        if event.type == "StepRecorded":
            data = event.data
            usage = data.get("usage") or {}
            tokens = f"  {usage['input_tokens']}+{usage['output_tokens']} tokens" if usage else ""
            print(f"  {data['seq']:>3} {data['kind']:<6} {data['name']}{tokens}")
    usage = run.usage
    print(f"usage: {usage.requests} requests, {usage.input_tokens} input + {usage.output_tokens} output tokens"
          f" ({usage.replayed_requests} requests, {usage.tokens_saved} tokens served from the log)")
    state = run.state
    print(f"final state: {len(state.questions)} questions, {len(state.findings)} findings in {state.rounds} rounds, "
          f"verdict {state.verdict.model_dump() if state.verdict else None}")
    print(f"output: {run.output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///research.db")
    parser.add_argument("--run-id", default="research-1")
    parser.add_argument("--topic", default="durable execution for AI agents")
    parser.add_argument("--model", default=None, help="a pydantic-ai model name; default: the local model")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per local model request")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.store, args.run_id, args.topic, args.model, args.latency))
    except KeyboardInterrupt:  # Ctrl-C: the run stopped at its last recorded step, nothing is lost
        print(f"interrupted: run {args.run_id} stopped at its last recorded step; "
              "run the same command again to resume it from its log", file=sys.stderr)
        sys.exit(130)
