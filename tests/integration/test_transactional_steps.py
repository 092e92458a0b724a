"""Transactional steps: a step's writes to the store's own database commit with its record, or not at all.

On a SQLite file and on PostgreSQL: the happy path, replay, a real SIGKILL of the driving
process between the user's write and the commit, a failing function, a run taken over
while the step ran (the lease fence), a signal appended meanwhile, encryption and
snapshots; and the clear error of a ``memory://`` store.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from phaseledger import (
    Context,
    Engine,
    LeaseLost,
    RetryPolicy,
    TransactionsUnsupported,
    Workflow,
    WorkflowRun,
    generate_cipher_key,
)
from phaseledger.store.leasebook import DriverId, open_lease_book
from tests.integration import txflows
from tests.integration.crashflows import EFFECTS_ENV

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of the children (and of in-process runs: the effects file)."""
    monkeypatch.setenv(EFFECTS_ENV, str(tmp_path / "effects.log"))
    yield {**os.environ, "PYTHONPATH": str(ROOT), EFFECTS_ENV: str(tmp_path / "effects.log")}


def effects(env: dict[str, str]) -> Counter[str]:
    path = Path(env[EFFECTS_ENV])
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split("\t")[1] for line in lines)


def records(store_url: str, run_id: str, name: str) -> list[WorkflowRun.StepRecorded]:
    """The run's recorded results of step ``name``, read from the store."""
    engine = Engine(store_url)
    try:
        return [e for e in engine.store.events(run_id) if isinstance(e, WorkflowRun.StepRecorded) and e.name == name]
    finally:
        engine.close()


def child(env: dict[str, str], store: str, run_id: str, how: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.txflows", store, run_id, how], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


# -- committed together ----------------------------------------------------------------------

def test_the_writes_and_the_record_commit_together(durable_store_url: str, env: dict[str, str]) -> None:
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[txflows.reporting]) as engine:
            run = await engine.run(txflows.reporting, {"store": durable_store_url}, run_id="r1")
            assert run.status == "completed" and run.output == 1

    asyncio.run(main())
    assert txflows.rows(durable_store_url, "r1") == ["report"]
    [record] = records(durable_store_url, "r1", "save")
    assert record.result == 1 and record.detail == {"transaction": True} and record.kind == "step"
    assert effects(env) == Counter({"prepare": 1, "save": 1, "after": 1})


class Waiting(BaseModel):
    store: str = ""
    saved: int = 0


waiting = Workflow("tx-waiting", state=Waiting)


@waiting.phase(initial=True, final=True)
async def save_then_wait(ctx: Context[Waiting]) -> int:
    ctx.state.saved = await ctx.transaction("save", txflows.save, ctx.state.store, ctx.run_id, "waiting")
    await ctx.wait_for_signal("go")
    return ctx.state.saved


def test_replay_returns_the_recorded_result_without_calling_fn(durable_store_url: str, env: dict[str, str]) -> None:
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[waiting]) as engine:
            run = await engine.run(waiting, {"store": durable_store_url}, run_id="w1")
            assert run.status == "waiting"
        async with Engine(durable_store_url, workflows=[waiting]) as engine:  # another process's engine
            await engine.signal("w1", "go")
            run = await engine.resume("w1")
            assert run.status == "completed" and run.output == 1

    asyncio.run(main())
    assert effects(env)["save"] == 1
    assert txflows.rows(durable_store_url, "w1") == ["waiting"]
    assert len(records(durable_store_url, "w1", "save")) == 1


# -- a crash between the user's write and the commit -----------------------------------------

def test_sigkill_between_the_write_and_the_commit_leaves_neither_then_resume_writes_once(
    durable_store_url: str, env: dict[str, str], tmp_path: Path,
) -> None:
    txflows.create_table(durable_store_url)
    wrote, gate = tmp_path / "wrote", tmp_path / "gate"
    driver = child({**env, txflows.WROTE_ENV: str(wrote), txflows.GATE_ENV: str(gate)}, durable_store_url,
                   "k1", "start")
    deadline = time.monotonic() + 60
    while not wrote.exists():
        assert driver.poll() is None, driver.communicate()
        assert time.monotonic() < deadline, "the child never reached its write"
        time.sleep(0.02)
    # The row is written in the open transaction, and the step's record is not appended yet.
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert driver.returncode == -signal.SIGKILL

    assert txflows.rows(durable_store_url, "k1") == []
    assert records(durable_store_url, "k1", "save") == []
    assert records(durable_store_url, "k1", "prepare") != []  # committed before the step began

    gate.touch()
    result = outcome(child(env, durable_store_url, "k1", "resume"))
    assert result == {"status": "completed", "output": 1}
    assert txflows.rows(durable_store_url, "k1") == ["report"]
    [record] = records(durable_store_url, "k1", "save")
    assert record.result == 1
    assert effects(env) == Counter({"prepare": 1, "save": 2, "after": 1})  # ran twice, committed once


# -- failures --------------------------------------------------------------------------------

class Flaky(BaseModel):
    store: str = ""
    fail_times: int = 0


flaky = Workflow("tx-flaky", state=Flaky, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))


def save_or_fail(conn: Any, store: str, run_id: str, fail_times: int) -> int:
    """Insert a row, then fail while this step has run fewer than ``fail_times`` times."""
    name = txflows.table(store)
    txflows.insert(conn, name, run_id, f"attempt-{txflows.count(conn, name, run_id)}")
    if txflows.effect("save") < fail_times:
        raise ConnectionError("the report service hung up after the row was written")
    return txflows.count(conn, name, run_id)


@flaky.phase(initial=True, final=True)
async def save_flaky(ctx: Context[Flaky]) -> int:
    return await ctx.transaction("save", save_or_fail, ctx.state.store, ctx.run_id, ctx.state.fail_times)


def test_a_failed_attempt_keeps_nothing_and_the_retry_writes_once(durable_store_url: str, env: dict[str, str]) -> None:
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[flaky]) as engine:
            run = await engine.run(flaky, {"store": durable_store_url, "fail_times": 1}, run_id="f1")
            assert run.status == "completed" and run.output == 1
            failed = [e for e in engine.store.events("f1") if isinstance(e, WorkflowRun.StepAttemptFailed)]
            assert [(e.attempt, e.error_type) for e in failed] == [(1, "ConnectionError")]

    asyncio.run(main())
    assert txflows.rows(durable_store_url, "f1") == ["attempt-0"]  # the first attempt's row was rolled back
    assert len(records(durable_store_url, "f1", "save")) == 1


def test_a_step_that_keeps_failing_leaves_neither_rows_nor_record(durable_store_url: str, env: dict[str, str]) -> None:
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[flaky]) as engine:
            run = await engine.run(flaky, {"store": durable_store_url, "fail_times": 99}, run_id="f2")
            assert run.status == "failed"
            assert run.error is not None and run.error["type"] == "StepFailed"
            failed = [e for e in engine.store.events("f2") if isinstance(e, WorkflowRun.StepAttemptFailed)]
            assert [e.attempt for e in failed] == [1, 2]

    asyncio.run(main())
    assert txflows.rows(durable_store_url, "f2") == []
    assert records(durable_store_url, "f2", "save") == []
    assert effects(env)["save"] == 2


# -- the lease fence -------------------------------------------------------------------------

class Fenced(BaseModel):
    store: str = ""


fenced = Workflow("tx-fenced", state=Fenced)


def steal(store: str, run_id: str) -> bool:
    """Another driver takes the run over (``steal=True``), as a second process would."""
    engine = Engine(store)
    try:
        open_lease_book(engine.store).acquire(run_id, DriverId.here("thief"), 60, steal=True)
    finally:
        engine.close()
    return True


@fenced.phase(initial=True, final=True)
async def taken_over(ctx: Context[Fenced]) -> int:
    await ctx.step("taken over", steal, ctx.state.store, ctx.run_id)
    # This driver has not noticed yet: its transaction must not commit.
    return await ctx.transaction("save", txflows.save, ctx.state.store, ctx.run_id, "zombie")


def test_a_driver_that_lost_its_lease_commits_neither_rows_nor_record(
    durable_store_url: str, env: dict[str, str],
) -> None:
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[fenced]) as engine:
            with pytest.raises(LeaseLost):
                await engine.run(fenced, {"store": durable_store_url}, run_id="z1")

    asyncio.run(main())
    assert effects(env)["save"] == 1  # it ran, wrote its row, and the commit was refused
    assert txflows.rows(durable_store_url, "z1") == []
    assert records(durable_store_url, "z1", "save") == []
    assert len(records(durable_store_url, "z1", "taken over")) == 1


# -- a signal appended while the step ran ----------------------------------------------------

signalled = Workflow("tx-signalled", state=Fenced)


@signalled.phase(initial=True, final=True)
async def save_while_signalled(ctx: Context[Fenced]) -> Any:
    saved = await ctx.transaction("save", save_and_signal, ctx.state.store, ctx.run_id)
    return [saved, await ctx.wait_for_signal("note")]


def save_and_signal(conn: Any, store: str, run_id: str) -> int:
    """Write, and the first time have another process append a signal to the run meanwhile."""
    if txflows.effect("save") == 0:
        subprocess.run([sys.executable, "-c", (
            "import asyncio, sys; from phaseledger import Engine\n"
            "from tests.integration.test_transactional_steps import signalled\n"
            "async def main():\n"
            "    async with Engine(sys.argv[1], workflows=[signalled]) as engine:\n"
            "        await engine.signal(sys.argv[2], 'note', 'hi')\n"
            "asyncio.run(main())"), store, run_id], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    name = txflows.table(store)
    txflows.insert(conn, name, run_id, "signalled")
    return txflows.count(conn, name, run_id)


@pytest.mark.postgres
def test_a_signal_appended_during_the_step_makes_it_run_again_and_write_once(
    postgres_url: str, env: dict[str, str],
) -> None:
    """On PostgreSQL another process can append while the step's transaction is open (on
    SQLite it would wait for the file's write lock): the step's append then conflicts, its
    writes roll back, the signal is read in and the step runs again."""
    txflows.create_table(postgres_url)

    async def main() -> None:
        async with Engine(postgres_url, workflows=[signalled]) as engine:
            run = await engine.run(signalled, {"store": postgres_url}, run_id="s1")
            assert run.status == "completed" and run.output == [1, "hi"]

    asyncio.run(main())
    assert effects(env)["save"] == 2
    assert txflows.rows(postgres_url, "s1") == ["signalled"]
    assert len(records(postgres_url, "s1", "save")) == 1


deferred = Workflow("tx-deferred", state=Fenced, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))


def break_a_deferred_constraint(conn: Any, store: str, run_id: str) -> int:
    """Two rows with one key, under a unique constraint checked at commit."""
    txflows.effect("save")
    schema = store.rsplit("schema=", 1)[1]
    conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.once (k text UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    conn.execute(f"INSERT INTO {schema}.once VALUES (%s), (%s)", (run_id, run_id))
    return 1


@deferred.phase(initial=True, final=True)
async def save_deferred(ctx: Context[Fenced]) -> int:
    return await ctx.transaction("save", break_a_deferred_constraint, ctx.state.store, ctx.run_id)


@pytest.mark.postgres
def test_a_commit_the_database_refuses_is_a_failed_attempt(postgres_url: str, env: dict[str, str]) -> None:
    """A deferred constraint fails at COMMIT, after the record was appended: that is the
    function's failure (retried, then StepFailed), not another writer's append."""

    async def main() -> None:
        async with Engine(postgres_url, workflows=[deferred]) as engine:
            run = await engine.run(deferred, {"store": postgres_url}, run_id="d1")
            assert run.status == "failed" and run.error is not None and run.error["type"] == "StepFailed"
            failed = [e for e in engine.store.events("d1") if isinstance(e, WorkflowRun.StepAttemptFailed)]
            assert [e.attempt for e in failed] == [1, 2] and "refused to commit" in failed[0].message

    asyncio.run(main())
    assert effects(env)["save"] == 2
    assert records(postgres_url, "d1", "save") == []


concurrent = Workflow("tx-concurrent", state=Fenced)


def slow_save(conn: Any, store: str, run_id: str) -> int:
    """Write, then take long enough for the handler's other call to finish first."""
    txflows.insert(conn, txflows.table(store), run_id, "slow")
    time.sleep(0.3)
    return 7


async def quick(n: int) -> int:
    return n


@concurrent.phase(initial=True, final=True)
async def save_and_step_together(ctx: Context[Fenced]) -> Any:
    saved, stepped = await asyncio.gather(
        ctx.transaction("save", slow_save, ctx.state.store, ctx.run_id), ctx.step("quick", quick, 5))
    return [saved, stepped, await ctx.step("after", quick, 6)]


def test_a_call_recorded_while_the_transaction_runs_follows_its_record(durable_store_url: str) -> None:
    """Another call of the handler recorded during the step's transaction is appended after the
    step's record, and both replay."""
    txflows.create_table(durable_store_url)

    async def main() -> None:
        async with Engine(durable_store_url, workflows=[concurrent]) as engine:
            run = await engine.run(concurrent, {"store": durable_store_url}, run_id="c1")
            assert run.status == "completed" and run.output == [7, 5, 6]
            names = [e.name for e in engine.store.events("c1") if isinstance(e, WorkflowRun.StepRecorded)]
            assert names == ["save", "quick", "after"]
            assert sorted(entry.seq for entry in engine.store.load("c1").journal.values()) == [0, 1, 2]

    asyncio.run(main())
    assert txflows.rows(durable_store_url, "c1") == ["slow"]


# -- encryption and snapshots ----------------------------------------------------------------

class Many(BaseModel):
    store: str = ""
    saved: list[int] = []


many = Workflow("tx-many", state=Many)


@many.phase(initial=True, final=True)
async def save_many(ctx: Context[Many]) -> list[int]:
    for n in range(6):
        ctx.state.saved.append(await ctx.transaction(f"save-{n}", txflows.save, ctx.state.store, ctx.run_id,
                                                     f"secret-{n}"))
    return ctx.state.saved


def test_encrypted_and_snapshotted_records_of_transactional_steps(tmp_path: Path, env: dict[str, str]) -> None:
    url = f"sqlite:///{tmp_path}/enc.db"
    txflows.create_table(url)
    key = generate_cipher_key()

    async def main() -> None:
        async with Engine(url, workflows=[many], cipher_key=key, snapshot_every=4) as engine:
            run = await engine.run(many, {"store": url}, run_id="e1")
            assert run.status == "completed" and run.output == [1, 2, 3, 4, 5, 6]
            assert engine.store.has_snapshot("e1", 4) and engine.store.has_snapshot("e1", 8)
            assert engine.store.load("e1").journal["5"].result == 6  # folded from a snapshot and events

    asyncio.run(main())
    assert txflows.rows(url, "e1") == [f"secret-{n}" for n in range(6)]
    with sqlite3.connect(tmp_path / "enc.db") as db:
        states = [row[0] for row in db.execute("SELECT state FROM stored_events WHERE originator_id = 'e1'")]
        snapshots = [row[0] for row in db.execute("SELECT state FROM stored_snapshots")]
    assert len(states) == 9 and len(snapshots) == 2
    assert not any(b"secret" in state or b"transaction" in state for state in states + snapshots)


# -- a store without a database --------------------------------------------------------------

def test_a_memory_store_refuses_transactional_steps_before_running_them(env: dict[str, str]) -> None:
    async def main() -> None:
        async with Engine("memory://", workflows=[txflows.reporting]) as engine:
            run = await engine.run(txflows.reporting, {"store": "memory://"}, run_id="m1")
            assert run.status == "failed"
            assert run.error is not None and run.error["type"] == TransactionsUnsupported.__name__
            assert "sqlite:///" in run.error["message"]
            assert not [e for e in engine.store.events("m1") if isinstance(e, WorkflowRun.StepAttemptFailed)]

    asyncio.run(main())
    assert effects(env)["save"] == 0


def test_an_async_function_is_refused(tmp_path: Path) -> None:
    async def write(conn: Any) -> None: ...

    refusing = Workflow("tx-async", state=Fenced)

    @refusing.phase(initial=True, final=True)
    async def only(ctx: Context[Fenced]) -> None:
        await ctx.transaction("save", write)

    async def main() -> None:
        async with Engine(f"sqlite:///{tmp_path}/a.db", workflows=[refusing]) as engine:
            run = await engine.run(refusing, run_id="a1")
            assert run.status == "failed" and run.error is not None and run.error["type"] == "TypeError"
            assert "plain function" in run.error["message"]

    asyncio.run(main())
