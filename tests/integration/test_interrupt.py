"""Ctrl-C while a run is driven: the run stops at its last recorded step, its lease is given
back, and it resumes; the research example says so in one line (the CLI's own Ctrl-C tests
are in test_cli.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, RunNotFound, Workflow

ROOT = Path(__file__).resolve().parents[2]


class Ticks(BaseModel):
    n: int = 0


def ticking() -> Workflow[Ticks]:
    wf = Workflow("ticking", state=Ticks)

    async def tick(n: int) -> int:
        await asyncio.sleep(0.05)
        return n + 1

    @wf.phase(initial=True, final=True)
    async def count(ctx: Context[Ticks]) -> int:
        while ctx.state.n < 20:
            ctx.state.n = await ctx.step("tick", tick, ctx.state.n)
        return ctx.state.n

    return wf


async def test_leaving_the_engine_stops_a_drive_its_cancelled_caller_left_behind(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    wf = ticking()
    async with Engine(store, workflows=[wf]) as engine:
        caller = asyncio.create_task(engine.run(wf, run_id="t"))
        while "t" not in engine.control.active or engine.get("t").steps < 2:
            await asyncio.sleep(0.02)
        caller.cancel()  # what asyncio.run does to the main task on Ctrl-C
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert engine.control.active  # the drive itself is shielded: it is still going
    # leaving the engine stopped the drive while the store was open, and gave its lease back
    async with Engine(store, workflows=[wf]) as engine:
        stopped = engine.get("t")
        assert stopped.status == "running" and stopped.driving is None
        run = await engine.resume("t")
    assert run.status == "completed" and run.output == 20
    assert run.replayed_steps >= 2  # the steps recorded before the stop came from the log


def test_ctrl_c_in_the_research_example_is_one_line_and_it_resumes(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/r.db"
    command = [sys.executable, str(ROOT / "examples" / "research.py"), "--store", store, "--latency", "0.3"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_sigint_default)  # noqa: PLW1509 - only resets a signal
    try:
        _wait_for_a_step(store, "research-1")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("interrupted: run research-1 stopped") and "run the same command again" in lines[0]

    again = subprocess.run(command[:-2], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                           check=False)
    assert again.returncode == 0, again.stderr
    assert "resuming run research-1 from its log" in again.stdout and "run research-1: completed" in again.stdout


def _sigint_default() -> None:
    """In the child: Ctrl-C's default disposition, even when this process was started ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_a_step(store: str, run_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(store.removeprefix("sqlite:///")).exists():
            engine = Engine(store)
            try:
                with contextlib.suppress(RunNotFound):  # the run is not there yet
                    if engine.get(run_id).steps >= 1:
                        return
            finally:
                engine.close()
        time.sleep(0.2)
    raise AssertionError(f"run {run_id!r} recorded no step in {timeout} s")
