"""One owner per live run: a run that a live process drives is never taken over silently.

Child processes drive ``tests.integration.ownership_flows`` (steps that wait at a gate
file), so a test can hold a driver in the middle of a step while the CLI, a worker or
another engine tries to take the run. Side effects are counted per idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from phaseledger import Context, Engine, LeaseLost, RunBusy, Store, Workflow
from phaseledger.store.leasebook import DriverId, open_lease_book
from tests.integration.crashflows import EFFECTS_ENV
from tests.integration.ownership_flows import GATE_ENV, Tally
from tests.integration.test_cli import cli

ROOT = Path(__file__).resolve().parents[2]
FLOWS = "tests.integration.ownership_flows"


_CHILDREN: list[subprocess.Popen[str]] = []


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "PYTHONPATH": str(ROOT), EFFECTS_ENV: str(tmp_path / "effects.log"),
           GATE_ENV: str(tmp_path / "gate")}
    while _CHILDREN:  # a test that failed half-way leaves no driver waiting at its gate
        child = _CHILDREN.pop()
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


def driver(env: dict[str, str], store: str, run_id: str, how: str = "start") -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-m", FLOWS, store, run_id, how], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _CHILDREN.append(child)
    return child


def effects(env: dict[str, str]) -> Counter[str]:
    path = Path(env[EFFECTS_ENV])
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split("\t")[1] for line in lines)


def wait_for(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def outcome(process: subprocess.Popen[str]) -> dict[str, object]:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def open_gate(env: dict[str, str]) -> None:
    Path(env[GATE_ENV]).touch()


def test_a_live_run_is_not_taken_over_by_resume_the_cli_or_a_worker(
    durable_store_url: str, env: dict[str, str], tmp_path: Path,
) -> None:
    """Problem 1: a resume (API or CLI) or a worker while another process drives the run."""
    owner = driver(env, durable_store_url, "r1")
    wait_for(lambda: effects(env)["step-0"] == 1, "the driver to start its first step")

    async def try_resume() -> None:
        async with Engine(durable_store_url, workflows=[]) as engine:
            with pytest.raises(RunBusy) as busy:
                await engine.resume("r1")
            assert busy.value.pid == owner.pid and busy.value.run_id == "r1"
            view = engine.get("r1")
            assert view.driving is not None and view.driving.pid == owner.pid and view.driving.live
            assert view.driver_status is not None and view.driver_status.startswith("running on ")

    asyncio.run(try_resume())
    refused = cli("--store", durable_store_url, "-w", FLOWS, "resume", "r1", cwd=ROOT, env=env, check=1)
    assert f":{owner.pid}" in refused.stderr and "--steal" in refused.stderr
    shown = cli("--store", durable_store_url, "show", "r1", cwd=ROOT, env=env)
    assert "running on" in shown.stdout and f":{owner.pid}" in shown.stdout
    listed = cli("--store", durable_store_url, "runs", cwd=ROOT, env=env)
    assert f":{owner.pid}" in listed.stdout
    worker = cli("--store", durable_store_url, "-w", FLOWS, "worker", "--until-idle", "--poll", "0.1",
                 cwd=ROOT, env=env, check=None) if "postgresql" in durable_store_url else None
    if worker is not None:  # PostgreSQL: the worker sees a held lease and does not claim the run
        assert worker.returncode == 0, worker.stderr
    assert effects(env) == Counter({"step-0": 1})  # nobody else ran the step in flight

    open_gate(env)
    result = outcome(owner)
    assert result == {"status": "completed", "output": [0, 1, 2]}
    assert effects(env) == Counter({"step-0": 1, "step-1": 1, "step-2": 1})
    after = cli("--store", durable_store_url, "show", "r1", cwd=ROOT, env=env)
    assert "running on" not in after.stdout


def test_a_sqlite_worker_leaves_a_run_driven_elsewhere_alone(tmp_path: Path, env: dict[str, str]) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    owner = driver(env, store, "r1")
    wait_for(lambda: effects(env)["step-0"] == 1, "the driver to start its first step")
    # The worker claims the run from its index, is refused by the run's lease, and counts the
    # run as held elsewhere: with nothing else to do it is idle.
    worker = cli("--store", store, "-w", FLOWS, "worker", "--until-idle", "--poll", "0.1", "--json",
                 cwd=ROOT, env=env)
    stats = json.loads(worker.stdout)
    assert stats["lost"] >= 1 and stats["completed"] == 0, stats
    assert effects(env) == Counter({"step-0": 1})
    open_gate(env)
    assert outcome(owner)["status"] == "completed"
    assert effects(env) == Counter({"step-0": 1, "step-1": 1, "step-2": 1})


def test_steal_takes_the_run_and_the_old_driver_raises(durable_store_url: str, env: dict[str, str]) -> None:
    """An explicit takeover: the step in flight runs twice (same key), the old driver raises LeaseLost."""
    owner = driver(env, durable_store_url, "r1")
    wait_for(lambda: effects(env)["step-0"] == 1, "the driver to start its first step")
    thief = driver(env, durable_store_url, "r1", "steal")
    wait_for(lambda: effects(env)["step-0"] == 2, "the thief to run the step in flight again")
    open_gate(env)
    lost, won = outcome(owner), outcome(thief)
    assert lost["error"] == "LeaseLost" and "r1" in str(lost["message"])
    assert won == {"status": "completed", "output": [0, 1, 2]}
    assert effects(env) == Counter({"step-0": 2, "step-1": 1, "step-2": 1})

    async def check() -> None:
        async with Engine(durable_store_url, workflows=[]) as engine:
            recorded = [e.data["name"] for e in engine.history("r1") if e.type == "StepRecorded"]
            assert recorded == ["step-0", "step-1", "step-2"]  # the loser appended nothing

    asyncio.run(check())


def test_a_crashed_driver_is_taken_over_at_once_on_its_host(durable_store_url: str, env: dict[str, str]) -> None:
    owner = driver(env, durable_store_url, "r1")
    wait_for(lambda: effects(env)["step-0"] == 1, "the driver to start its first step")
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=30)
    shown = cli("--store", durable_store_url, "show", "r1", cwd=ROOT, env=env)
    assert "orphaned" in shown.stdout and "process is gone" in shown.stdout
    open_gate(env)
    resumed = driver(env, durable_store_url, "r1", "resume")  # no wait for the lease to expire
    assert outcome(resumed) == {"status": "completed", "output": [0, 1, 2]}
    assert effects(env) == Counter({"step-0": 2, "step-1": 1, "step-2": 1})  # the step in flight, again


def test_a_lease_of_another_host_holds_until_it_expires(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/runs.db")
    wf = Workflow("one", state=Tally)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[Tally]) -> str:
        return "done"

    async def scenario() -> None:
        engine = Engine(store, workflows=[wf])
        await engine.start(wf, run_id="r1")
        elsewhere = DriverId(owner="far:7:abc", host="far-away-host", pid=7, proc_start=None)
        open_lease_book(store).acquire("r1", elsewhere, 0.6)
        with pytest.raises(RunBusy, match="far-away-host:7"):
            await engine.resume("r1")
        assert engine.runs()[0].driver_status.startswith("running on far-away-host:7")  # type: ignore[union-attr]
        await asyncio.sleep(0.7)
        assert engine.get("r1").driver_status.startswith("orphaned")  # type: ignore[union-attr]
        assert (await engine.resume("r1")).status == "completed"

    asyncio.run(scenario())
    store.close()


def _blocking_workflow(gate: asyncio.Event, ran: Counter[str]) -> Workflow[Tally]:
    wf = Workflow("blocking", state=Tally)

    async def slow(n: int) -> int:
        ran[f"step-{n}"] += 1
        await gate.wait()
        return n

    @wf.phase(initial=True, to="end")
    async def work(ctx: Context[Tally]) -> None:
        for n in range(2):
            ctx.state.done.append(await ctx.step(f"step-{n}", slow, n))

    @wf.phase(final=True)
    async def end(ctx: Context[Tally]) -> list[int]:
        return ctx.state.done

    return wf


async def test_the_heartbeat_keeps_a_short_lease(store_url: str) -> None:
    """Leases of 0.3 s stay held through a step of over a second: the heartbeat renews them."""
    gate, ran = asyncio.Event(), Counter[str]()
    wf = _blocking_workflow(gate, ran)
    store = Store(store_url)
    first = Engine(store, workflows=[wf], lease_seconds=0.3)
    second = Engine(store, workflows=[wf], lease_seconds=0.3)
    driving = asyncio.ensure_future(first.run(wf, run_id="r1"))
    while not ran:
        await asyncio.sleep(0.01)
    for _ in range(4):
        await asyncio.sleep(0.3)
        with pytest.raises(RunBusy):
            await second.resume("r1")
    gate.set()
    assert (await driving).output == [0, 1]
    assert ran == Counter({"step-0": 1, "step-1": 1})
    assert (await asyncio.to_thread(second.get, "r1")).driving is None
    store.close()


async def test_a_driver_whose_run_was_stolen_raises_lease_lost(store_url: str) -> None:
    gate, ran = asyncio.Event(), Counter[str]()
    wf = _blocking_workflow(gate, ran)
    store = Store(store_url)
    first, second = Engine(store, workflows=[wf]), Engine(store, workflows=[wf])
    driving = asyncio.ensure_future(first.run(wf, run_id="r1"))
    while not ran:
        await asyncio.sleep(0.01)
    stealing = asyncio.ensure_future(second.resume("r1", steal=True))
    while ran["step-0"] < 2:
        await asyncio.sleep(0.01)
    gate.set()
    with pytest.raises(LeaseLost, match="r1"):
        await driving
    assert (await stealing).output == [0, 1]
    history = await asyncio.to_thread(second.history, "r1")
    assert [e.data["name"] for e in history if e.type == "StepRecorded"] == ["step-0", "step-1"]
    store.close()


def test_leases_taken_at_once_on_a_store_whose_tables_are_missing_all_succeed(durable_store_url: str) -> None:
    """Threads racing to make the lease tables: the ones that lose the race run their statement again."""
    import threading

    store = Store(durable_store_url)
    try:
        book = open_lease_book(store)
        barrier, failures = threading.Barrier(8), []
        me = DriverId.here()

        def take(i: int) -> None:
            barrier.wait()
            try:
                book.acquire(f"race-{i}", me, 30.0)
            except Exception as exc:  # collected: the assertion below names them
                failures.append(exc)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert set(book.held()) == {f"race-{i}" for i in range(8)}
    finally:
        store.close()
