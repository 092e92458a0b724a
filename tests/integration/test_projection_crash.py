"""Crash test: a projection process is killed (SIGKILL) at random points, then started again.

Afterwards no event has been applied twice or skipped: the tables equal a rebuild from
scratch and every count agrees with the log. On SQLite the killed process catches up in
pages; on PostgreSQL it also follows the log with eventsourcing's ProjectionRunner while
runs are being written. A follower is also killed in the middle of a batch: after it has
written a batch's rows, before its commit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from phaseledger.engine.journal import current_journal
from phaseledger.projections import Reports
from phaseledger.projections.projection import count_after

CHILD = r"""
import random, sys, time
from phaseledger.projections import Reports

url, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
reports = Reports(url)
print("ready", flush=True)
if mode == "follow":
    reports.follow(interval=0.02)
    while True:
        time.sleep(1)
while reports.lag():
    reports.catch_up(lambda done, total: time.sleep(0.002), page_size=rng.randint(1, 25), max_events=25)
print("done", flush=True)
"""

BATCH_KILLER = r"""
import os, signal, sys, time
from phaseledger.projections import Reports, _fold

flush = _fold.Fold.flush

def flush_then_die(fold):
    flush(fold)  # the batch's rows are written, in its open transaction
    if fold.applied > 1:
        print("killed", fold.applied, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

_fold.Fold.flush = flush_then_die
reports = Reports(sys.argv[1])
print("ready", flush=True)
reports.follow(interval=0.02)
while True:
    time.sleep(1)
"""


class Count(BaseModel):
    n: int = 0


def make_workflow() -> Workflow[Count]:
    wf = Workflow("crashy", state=Count, version=1, checkpoint_every_n_steps=5)

    @wf.phase(initial=True, to={"loop": None, "done": None})
    async def loop(ctx: Context[Count]) -> str:
        for _ in range(6):
            ctx.state.n = await ctx.step("inc", lambda n: n + 1, ctx.state.n)
        journal = current_journal()
        await journal.call(journal.next_key(), "model", "m", lambda: "ok",
                           outcome=lambda _: ({"requests": 1, "input_tokens": 3, "output_tokens": 1,
                                               "model": "tiny", "cost": 0.001}, None))
        return "loop" if ctx.attempt < 3 else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Count]) -> int:
        return ctx.state.n

    return wf


async def add_runs(engine: Engine, wf: Workflow[Count], first: int, count: int) -> None:
    for i in range(first, first + count):
        await engine.run(wf, {}, run_id=f"r{i:03d}")


def start_child(url: str, mode: str, seed: int, code: str = CHILD) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", code, url, mode, str(seed)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def check_exactly_once(engine: Engine, reports: Reports) -> None:
    reports.catch_up()
    incremental = reports.dump()
    runs = {row["run_id"]: row for row in incremental["report_runs"]}
    assert set(runs) == {run_id for run_id in engine.store.run_ids()}
    events = 0
    for run_id, row in runs.items():
        history = [e.type for e in engine.history(run_id)]
        events += len(history)
        assert row["version"] == len(history)
        assert row["steps"] == history.count("StepRecorded")
        assert row["phase_visits"] == history.count("PhaseEntered") == len(reports.timeline(run_id))
        assert row["status"] == "completed"
    assert events == count_after(engine.store, None)  # every event of the log belongs to one run
    days = incremental["report_token_usage"]  # one row per model and day: a run may straddle midnight
    calls, requests = sum(d["calls"] for d in days), sum(d["requests"] for d in days)
    assert calls == requests == sum(r["model_requests"] for r in runs.values()) == 3 * len(runs)
    reports.rebuild(page_size=200)
    assert reports.dump() == incremental


async def test_killed_projection_processes_apply_each_event_once(durable_store_url: str) -> None:
    rng = random.Random(7)
    wf = make_workflow()
    engine = Engine(durable_store_url, workflows=[wf])
    await add_runs(engine, wf, 0, 25)
    head = count_after(engine.store, None)
    positions = []
    with Reports(engine.store) as reports:
        for attempt in range(3):  # a process catching up in pages of random sizes
            child = start_child(durable_store_url, "catch_up", attempt)
            await asyncio.sleep(rng.uniform(0.02, 0.3))
            kill(child)
            positions.append(reports.position() or 0)
        assert any(position < head for position in positions), positions  # killed part-way at least once
        for attempt in range(2):  # a process following the log while runs are written
            child = start_child(durable_store_url, "follow", attempt)
            await add_runs(engine, wf, 25 + 4 * attempt, 4)
            await asyncio.sleep(rng.uniform(0.0, 0.1))
            kill(child)
        check_exactly_once(engine, reports)
    engine.close()


async def test_a_follower_killed_in_the_middle_of_a_batch_writes_none_of_it(durable_store_url: str) -> None:
    wf = make_workflow()
    engine = Engine(durable_store_url, workflows=[wf])
    await add_runs(engine, wf, 0, 6)
    with Reports(engine.store) as reports:
        done = reports.catch_up(max_events=37)
        position = reports.position()
        before = reports.dump()
        child = start_child(durable_store_url, "follow", 0, BATCH_KILLER)  # behind: applies in batches
        assert child.stdout is not None
        words = child.stdout.readline().split()
        assert child.wait(30) == -signal.SIGKILL
        assert words[0] == "killed" and int(words[1]) > 1, words
        assert reports.position() == position and reports.dump() == before  # the batch left no trace
        reports.view.reset(reports.application_name)
        assert reports.catch_up(max_events=done) == done
        assert reports.dump() == before  # what stands equals a rebuild up to that position
        await add_runs(engine, wf, 6, 2)
        child = start_child(durable_store_url, "follow", 1)  # a follower without the fault takes over
        reports.wait(timeout=30)
        kill(child)
        check_exactly_once(engine, reports)
    engine.close()
