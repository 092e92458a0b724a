"""SIGKILL a real process in the middle of a multi-tool agent run, resume it in a new one.

The child process runs a scripted agent (parallel tool calls, a tool that asks for a retry,
structured output) in a one-phase workflow on SQLite or PostgreSQL and kills itself with
SIGKILL at a chosen model or tool call, before or after that call's side effect. A second
process resumes the run. Every call recorded in the store before the kill must have run
exactly once across both processes, and the output, usage and message history must equal
those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from phaseledger.store.eventstore import Store
from tests.test_agent_kit import Script, uninterrupted

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Script([[("square", 3), ("lookup", 14), ("square", 5)], [("flaky", 2), ("lookup", 9)], [("square", 11)]],
                structured=True)


def _child(store: str, run_id: str, log: Path, out: Path, crash_at: int | None, crash_after: bool) -> int:
    args = [sys.executable, "-m", "tests.test_agent_kit", "child", "--store", store, "--run-id", run_id,
            "--script", SCRIPT.to_json(), "--log", str(log), "--out", str(out)]
    if crash_at is not None:
        args += ["--crash-at", str(crash_at)]
    if crash_after:
        args.append("--crash-after")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=ROOT, env=env, timeout=60, capture_output=True, text=True).returncode


def _kill_points(seed: int, count: int) -> list[tuple[int, bool]]:
    rng = random.Random(seed)
    return [(point, rng.random() < 0.5) for point in sorted(rng.sample(range(1, SCRIPT.side_effects + 1), count))]


async def _kill_and_resume(store: str, tmp_path: Path, crash_at: int, crash_after: bool) -> None:
    run_id = "r"
    log, out = tmp_path / f"calls-{crash_at}.log", tmp_path / f"out-{crash_at}.json"
    code = _child(store, run_id, log, out, crash_at, crash_after)
    assert code == -signal.SIGKILL, f"the child was to be killed at side effect {crash_at}, exit code {code}"
    assert not out.exists()

    recorded = Store(store).load(run_id).journal  # what the log held when the process died
    before = log.read_text().split() if log.exists() else []
    code = _child(store, run_id, log, out, None, False)
    assert code == 0, f"the resuming child failed with exit code {code}"

    result = json.loads(out.read_text())
    clean = await uninterrupted(SCRIPT, run_id=run_id)
    assert result["status"] == "completed"
    assert result["outcome"] == clean.model_dump(mode="json")  # output, usage and message history

    after = Counter(log.read_text().split()[len(before):])  # what the resuming process ran
    recorded_tools = [k.split(":")[-1] for k, e in recorded.items() if e.kind == "tool" and not e.error]
    recorded_models = [k for k, e in recorded.items() if e.kind == "model" and not e.error]
    assert all(after[f"tool:{call_id}"] == 0 for call_id in recorded_tools), (recorded_tools, after)
    model_calls = sum(n for what, n in after.items() if what.startswith("model:"))
    assert model_calls == clean.usage["requests"] - len(recorded_models)
    assert result["usage"]["requests"] == clean.usage["requests"]
    assert result["usage"]["replayed_requests"] == len(recorded_models)


@pytest.mark.parametrize("crash_at,crash_after", _kill_points(seed=7, count=3))
async def test_sigkill_then_resume_on_sqlite(tmp_path: Path, crash_at: int, crash_after: bool) -> None:
    await _kill_and_resume(f"sqlite:///{tmp_path}/agents.db", tmp_path, crash_at, crash_after)


@pytest.mark.postgres
@pytest.mark.parametrize("crash_at,crash_after", _kill_points(seed=11, count=2))
async def test_sigkill_then_resume_on_postgres(postgres_url: str, tmp_path: Path, crash_at: int, crash_after: bool) -> None:
    await _kill_and_resume(postgres_url, tmp_path, crash_at, crash_after)
