"""The research workflow with pydantic-ai agents: it loops back, and resumes after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phaseledger import Engine
from phaseledger.demo.research import Research, build_research

ROOT = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Stops the process state dead (nothing uncommitted survives)."""


async def test_research_crashes_mid_execution_and_resumes_equal(tmp_path: Path) -> None:
    workflow = build_research()
    async with Engine("memory://", workflows=[workflow]) as engine:
        clean = await engine.run(workflow, Research(topic="event sourcing"), run_id="r")
    assert clean.status == "completed"
    phases = ["planning", "execution", "validation", "execution", "validation", "completion"]

    store = f"sqlite:///{tmp_path}/research.db"
    crashing = Engine(store, workflows=[workflow])
    recorded: list[int] = []

    def crash_in_second_execution(run) -> None:  # noqa: ANN001  (the engine's testing hook)
        if run.phase == "execution" and run.attempts.get("execution") == 2:
            recorded.append(run.steps)
            if len(recorded) == 4:
                raise Crash()

    crashing.event_observer = crash_in_second_execution
    with pytest.raises(BaseException):
        await crashing.run(workflow, Research(topic="event sourcing"), run_id="r")
    crashing.close()

    async with Engine(store, workflows=[build_research()]) as engine:
        run = await engine.resume("r")
        entered = [e.data["phase"] for e in engine.history("r") if e.type == "PhaseEntered"]
    assert run.status == "completed"
    assert entered == phases
    assert run.state == clean.state and run.output == clean.output
    assert run.usage.requests == clean.usage.requests and run.usage.input_tokens == clean.usage.input_tokens
    assert run.usage.replayed_requests >= 1 and run.usage.tokens_saved > 0


def test_the_example_runs_on_sqlite(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "research.py"), "--store", f"sqlite:///{tmp_path}/r.db"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "phases: planning -> execution -> validation -> execution -> validation -> completion" in done.stdout
    assert "run research-1: completed" in done.stdout and "call_tool:search" in done.stdout
