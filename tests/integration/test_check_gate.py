"""The deploy gate over a store holding research runs in every phase, on SQLite and PostgreSQL.

Runs are left as a crash leaves them: the research workflow runs once, and each prefix of
its log becomes a run of its own (stopped right after that event was committed), so the
store holds unfinished runs before the first phase, in every phase, and at every call of
each. The gate then checks them against each variant of ``gate_flows`` and must classify
every run right, through the Python API and the command, and leave the store as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from phaseledger import CheckReport, Engine, Store, check_deploy, generate_cipher_key
from phaseledger.store.eventstore import StoreURL
from tests.integration.gate_flows import build
from tests.integration.test_cli import cli

FLOWS = str(Path(__file__).with_name("gate_flows.py"))
PHASES = {None, "planning", "execution", "validation", "completion"}


async def seed(url: str, *, version: int = 1, cipher_key: str | None = None, prefix: str = "p") -> int:
    """A completed reference run, and one unfinished run per prefix of its log; returns how many."""
    workflow = build("same", version)
    engine = Engine(url, workflows=[workflow], cipher_key=cipher_key)
    try:
        reference = f"{prefix}-done"
        await engine.run(workflow, {"topic": "deploy gates"}, run_id=reference)
        events = engine.store.events(reference)
        for k in range(1, len(events)):
            engine.store.append([dataclasses.replace(e, originator_id=f"{prefix}{k:03d}") for e in events[:k]])
        return len(events) - 1
    finally:
        engine.close()


def store_contents(url: str) -> Any:
    """Every row of every table of the store (and, for SQLite, the file's bytes)."""
    parsed = StoreURL.parse(url)
    if parsed.sqlite_path is not None:
        path = Path(parsed.sqlite_path)
        conn = sqlite3.connect(path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            rows = {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        finally:
            conn.close()
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.glob(path.name + "*"))}
        return rows, files
    import psycopg

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(parsed.postgres_conninfo or "") as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY table_name", (schema,))]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{schema}"."{t}"'))) for t in tables}


def by_id(report: CheckReport) -> dict[str, Any]:
    return {run.run_id: run for run in report.runs}


async def test_each_change_is_classified_and_the_store_is_left_as_it_was(durable_store_url: str) -> None:
    url = durable_store_url
    count = await seed(url)
    before = store_contents(url)

    same = await check_deploy(url, [build("same")])
    assert len(same.runs) == count and {r.phase for r in same.runs} == PHASES
    assert same.counts["compatible"] == count and same.ok
    assert all(r.stopped_at is not None or r.phase == "completion" for r in same.runs)
    agent_stops = {r.stopped_at.kind for r in same.runs if r.stopped_at is not None}
    assert {"model", "tool", "phase"} <= agent_stops  # agent phases replay up to their first live unit
    assert max(r.replayed_calls for r in same.runs) >= 10

    compatible = await check_deploy(url, [build("compatible")])
    assert compatible.counts["compatible"] == count and compatible.ok

    upcast = await check_deploy(url, [build("upcast")])
    assert upcast.counts["upcast"] == count and upcast.ok
    first = by_id(upcast)["p010"]
    assert first.verdict == "upcast" and not first.breaking
    assert first.upcast == ["the state of phase 'execution' (ResearchV2): drops rounds; adds iterations"]

    breaking = await check_deploy(url, [build("breaking")])
    assert not breaking.ok and breaking.counts["diverges"] > 0
    runs = by_id(breaking)
    # execution with recorded agent calls: the new step goes live where the log holds a model request
    execution = runs["p010"]
    assert (execution.verdict, execution.phase, execution.breaking) == ("diverges", "execution", True)
    assert execution.new is not None and (execution.new.kind, execution.new.name) == ("step", "batch size")
    assert execution.recorded is not None and execution.recorded.kind == "model"
    assert execution.sequence == min(
        r.sequence for r in breaking.runs if r.phase == "execution" and r.sequence is not None)
    # validation with its model request recorded: same request, another prompt: fingerprints differ
    validation = next(r for r in breaking.runs if r.phase == "validation" and r.verdict == "diverges")
    assert validation.recorded is not None and validation.new is not None
    assert validation.recorded.name == validation.new.name and validation.recorded.kind == "model"
    assert validation.recorded.fingerprint != validation.new.fingerprint
    assert validation.recorded.key == validation.new.key
    # phases with nothing recorded yet, and the phases the change does not touch, stay compatible
    untouched = [r for r in breaking.runs if r.verdict == "compatible"]
    assert {r.phase for r in untouched} == PHASES
    assert all(r.replayed_calls == 0 for r in untouched if r.phase in ("execution", "validation"))

    assert store_contents(url) == before  # four checks wrote nothing


async def test_old_versions_stay_pinned_while_their_runs_need_them(durable_store_url: str) -> None:
    url = durable_store_url
    count = await seed(url, version=1)

    both = await check_deploy(url, [build("same", 1), build("breaking", 2)])
    assert both.ok and both.counts["pinned"] == count
    assert all(r.version_registered and r.workflow_version == 1 for r in both.runs)
    uses = {(u.version): u for u in both.versions}
    assert (uses[1].unfinished_runs, uses[1].latest, uses[1].safe_to_retire) == (count, False, False)
    assert (uses[2].unfinished_runs, uses[2].latest) == (0, True)

    dropped = await check_deploy(url, [build("same", 2)])
    assert not dropped.ok and dropped.counts["pinned"] == count
    assert all(r.breaking and not r.version_registered for r in dropped.runs)
    assert "does not register" in dropped.runs[0].detail
    assert {(u.version, u.registered, u.unfinished_runs) for u in dropped.versions} == {(1, False, count), (2, True, 0)}

    # an old version kept in the code, but changed under its runs: they diverge, pinned or not
    changed = await check_deploy(url, [build("breaking", 1), build("same", 2)])
    assert not changed.ok and changed.counts["diverges"] > 0
    assert all(r.verdict in ("pinned", "diverges") for r in changed.runs)


async def test_the_whole_procedure_deploy_both_then_retire(durable_store_url: str) -> None:
    from tests.integration.test_versions import ticket_workflow

    url = durable_store_url
    v1 = ticket_workflow(1)
    old_code = Engine(url, workflows=[v1])
    for n in range(3):
        await old_code.run(v1, {"text": f"old {n}"}, run_id=f"old-{n}")  # each waits for its approval
    old_code.close()

    v1_again, v2 = ticket_workflow(1), ticket_workflow(2)
    gate = await check_deploy(url, [v1_again, v2])
    assert gate.ok and gate.counts["pinned"] == 3
    assert all(r.stopped_at is not None and r.stopped_at.kind == "signal" for r in gate.runs)

    deployed = Engine(url, workflows=[v1_again, v2])
    new = await deployed.run(deployed.registry.get("ticket"), {"text": "new"}, run_id="new")
    assert new.workflow_version == 2
    assert not (await check_deploy(deployed.store, [v1_again, v2])).versions[0].safe_to_retire
    for n in range(3):
        await deployed.signal(f"old-{n}", "approved")
        assert (await deployed.resume(f"old-{n}")).output == "answered by v1 (v1)"

    after = await check_deploy(deployed.store, [v1_again, v2])
    v1_use = next(u for u in after.versions if u.version == 1)
    assert (v1_use.unfinished_runs, v1_use.safe_to_retire) == (0, True)
    assert [r.run_id for r in after.runs] == ["new"] and after.runs[0].verdict == "compatible"
    retired = await check_deploy(deployed.store, [ticket_workflow(2)])
    assert retired.ok and [(u.version, u.latest) for u in retired.versions] == [(2, True)]
    deployed.close()


@pytest.mark.parametrize("variant, status", [("same", 0), ("compatible", 0), ("upcast", 0), ("breaking", 4)])
async def test_the_command_exits_with_the_verdict(tmp_path: Path, variant: str, status: int) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    count = await seed(url)
    before = store_contents(url)
    env = {"GATE_VARIANT": variant}
    table = cli("check", "-w", FLOWS, "--store", url, cwd=tmp_path, env=env, check=status)
    assert table.stdout.startswith("verdict") and "latest: new runs start here" in table.stdout
    assert table.stdout.rstrip().endswith("do not deploy this code as it is" if status else "would break")
    document = json.loads(cli("check", "-w", FLOWS, "--store", url, "--json", cwd=tmp_path, env=env,
                              check=status).stdout)
    assert set(document) == {"store", "checked_on", "workflows", "runs", "versions", "unreadable", "counts", "ok"}
    assert document["ok"] is (status == 0) and document["workflows"] == ["research@1"]
    assert sum(document["counts"].values()) == len(document["runs"]) == count
    run = document["runs"][0]
    assert set(run) == {"run_id", "workflow", "workflow_version", "status", "phase", "verdict", "version_registered",
                        "replayed_calls", "stopped_at", "sequence", "recorded", "new", "upcast", "detail", "breaking"}
    assert document["versions"] == [{"workflow": "research", "version": 1, "registered": True, "latest": True,
                                     "unfinished_runs": count, "safe_to_retire": False}]
    if variant == "breaking":
        diverging = [r for r in document["runs"] if r["verdict"] == "diverges"]
        assert diverging and all(r["breaking"] and r["recorded"] and r["new"] for r in diverging)
        assert "diverges" in table.stdout and "batch size" in table.stdout
    assert store_contents(url) == before


async def test_the_command_pins_and_reads_encrypted_stores(tmp_path: Path) -> None:
    key = generate_cipher_key()
    url = f"sqlite:///{tmp_path}/secret.db"
    count = await seed(url, cipher_key=key)
    env = {"PHASELEDGER_CIPHER_KEY": key, "GATE_VERSIONS": "1,2", "GATE_VARIANT": "breaking"}
    kept = cli("check", "-w", FLOWS, "--store", url, "--json", cwd=tmp_path, env=env)
    assert json.loads(kept.stdout)["counts"]["pinned"] == count
    dropped = cli("--store", url, "-w", FLOWS, "check", cwd=tmp_path, env={**env, "GATE_VERSIONS": "2"}, check=4)
    assert "not registered" in dropped.stdout
    unkeyed = cli("check", "-w", FLOWS, "--store", url, cwd=tmp_path, env={"GATE_VARIANT": "same"}, check=1)
    assert unkeyed.stderr.startswith("error: ") and "Traceback" not in unkeyed.stderr
    missing = cli("check", "-w", FLOWS, "--store", f"sqlite:///{tmp_path}/none.db", cwd=tmp_path, check=1)
    assert "does not exist" in missing.stderr and not (tmp_path / "none.db").exists()


async def test_a_store_object_is_left_open_and_unwritten(postgres_url: str) -> None:
    await seed(postgres_url)
    before = store_contents(postgres_url)
    store = Store(postgres_url)
    try:
        report = await check_deploy(store, [build("breaking")])
        assert not report.ok
        assert store.exists("p001")  # still open
    finally:
        store.close()
    assert store_contents(postgres_url) == before


async def test_a_step_in_doubt_ends_the_check_before_its_policy_runs(tmp_path: Path) -> None:
    """The reconcile function of a step in doubt is user code that may call the outside world:
    the gate stops at the step instead, and the run is compatible up to there."""
    from pydantic import BaseModel

    from phaseledger import Context, Effect, Workflow

    class Payment(BaseModel):
        receipt: str = ""

    asked: list[str] = []
    entered = asyncio.Event()

    def did_it_happen(key: str) -> str:
        asked.append(key)
        return "receipt-from-reconcile"

    async def pay() -> str:
        entered.set()
        await asyncio.sleep(3600)  # cancelled here: the intent is recorded, the result never is
        return "receipt"

    def payments() -> Workflow[Payment]:
        wf = Workflow("payments", state=Payment)

        @wf.phase(initial=True, final=True)
        async def charge(ctx: Context[Payment]) -> str:
            ctx.state.receipt = await ctx.step("pay", pay, effect=Effect(on_doubt="reconcile", reconcile=did_it_happen))
            return ctx.state.receipt

        return wf

    url = f"sqlite:///{tmp_path}/runs.db"
    engine = Engine(url, workflows=[payments()])
    driving = asyncio.ensure_future(engine.run(payments(), run_id="pay-1"))
    await asyncio.wait_for(entered.wait(), 30)
    driving.cancel()
    await asyncio.gather(driving, return_exceptions=True)
    assert engine.get("pay-1").in_doubt  # the intent is in the log, no result
    engine.close()
    before = store_contents(url)

    report = await check_deploy(url, [payments()])
    (run,) = report.runs
    assert run.verdict == "compatible" and report.ok
    assert asked == []  # the gate never called the reconcile function
    assert store_contents(url) == before
