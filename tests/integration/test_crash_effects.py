"""Effect steps killed between their intent and their result, and caught failures killed after: real SIGKILLs.

Each child process is killed right after the step body ran (its effect written to the
effects file, outside the event store) and before its result was recorded. The run then
holds the step's intent and no outcome: it is in doubt, and a new process resumes it under
the step's policy. The effects file counts what really ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phaseledger import Engine
from phaseledger.testing.crash import CrashHarness, KillPoint
from tests.integration.crashflows import EFFECTS_ENV

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
KEY = "r:2.0"  # the charge step's idempotency key: run r, phase entered at version 2, first call


def _effects(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]  # type: ignore[misc]


def _harness(target: str, store: str, tmp_path: Path) -> CrashHarness:
    return CrashHarness(f"tests.integration.crashflows:{target}", store, cwd=ROOT, workdir=tmp_path,
                        env={EFFECTS_ENV: str(tmp_path / "effects.tsv")})


def _killed_in_doubt(harness: CrashHarness, store: str, policy: str) -> None:
    """Kill the child after the charge ran and before its result was recorded; check the run shows it in doubt."""
    assert harness.run_child("r", KillPoint("in_step", 1)).killed
    engine = Engine(store)
    try:
        view = engine.get("r")
        assert view.status == "running" and view.driver_status is not None
        [doubt] = view.in_doubt
        assert (doubt.name, doubt.key, doubt.effect_key, doubt.policy) == ("charge", "0", KEY, policy)
        assert doubt.since <= view.updated_on
    finally:
        engine.close()


def test_retry_runs_an_effect_in_doubt_again_with_the_same_key(durable_store_url: str, tmp_path: Path) -> None:
    with _harness("effect_retry", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "retry")
        assert harness.run_child("r").status == "completed"
        types = [type(e).__name__ for e in harness._events("r")]
    assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge"), (KEY, "charge")]  # at least once, one key
    assert types.count("EffectIntended") == 1 and types.count("StepRecorded") == 1


def test_fail_fails_the_run_and_retry_runs_the_effect_again(durable_store_url: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EFFECTS_ENV, str(tmp_path / "effects.tsv"))  # this process retries the run
    with _harness("effect_fail", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "fail")
        assert harness.run_child("r").status == "failed"
        assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge")]  # not run again
        engine = Engine(durable_store_url, workflows=harness_workflows("effect_fail"))
        try:
            view = engine.get("r")
            assert view.error is not None and view.error["type"] == "EffectInDoubt"
            assert KEY in view.error["message"] and view.in_doubt[0].effect_key == KEY
        finally:
            engine.close()
    # A person checked: it did not happen. Retrying runs it again, with the same key.
    engine = Engine(durable_store_url, workflows=harness_workflows("effect_fail"))
    try:
        import asyncio

        view = asyncio.run(engine.retry("r"))
    finally:
        engine.close()
    assert view.status == "completed" and view.in_doubt == []
    assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge"), (KEY, "charge")]


def test_reconcile_takes_the_answer_of_the_external_system(durable_store_url: str, tmp_path: Path) -> None:
    with _harness("effect_reconcile", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "reconcile")
        assert harness.run_child("r").status == "completed"
    assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge")]  # exactly once: the effect happened once
    engine = Engine(durable_store_url)
    try:
        assert engine.get("r").output == f"receipt-42 (reconciled {KEY})"
        [entry] = [e for e in engine.history("r") if e.type == "StepRecorded"]
        assert entry.data["detail"] == {"effect": "reconciled"}
    finally:
        engine.close()


def test_reconcile_runs_the_step_again_when_it_did_not_happen(durable_store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.tsv"
    with _harness("effect_reconcile", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "reconcile")
        effects.write_text("")  # the external system has no trace of it (the call never reached it)
        assert harness.run_child("r").status == "completed"
        types = [type(e).__name__ for e in harness._events("r")]
    assert _effects(effects) == [(KEY, "charge")]
    assert types.count("EffectIntended") == 2  # a new intent before it ran again


@pytest.mark.parametrize("happened", [True, False])
def test_ask_suspends_until_a_person_decides(durable_store_url: str, tmp_path: Path, happened: bool) -> None:
    import asyncio

    with _harness("effect_ask", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "ask")
        waited = harness.run_child("r")
        assert waited.status == "waiting" and waited.suspended is not None
        assert waited.suspended["reason"] == "effect" and waited.suspended["signal"] == "effect:0"
        assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge")]  # nothing ran while it waited
        engine = Engine(durable_store_url, workflows=harness_workflows("effect_ask"))
        try:
            view = engine.get("r")
            assert view.awaits_effect_decision and view.in_doubt[0].policy == "ask"
            asyncio.run(engine.resolve("r", happened=happened, result="receipt-42 (checked by hand)"))
            asyncio.run(engine.resolve("r", happened=not happened))  # a second decision is not delivered
        finally:
            engine.close()
        assert harness.run_child("r").status == "completed"
    engine = Engine(durable_store_url)
    try:
        view = engine.get("r")
    finally:
        engine.close()
    if happened:
        assert view.output == "receipt-42 (checked by hand)"
        assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge")]
    else:
        assert view.output == "receipt-42"
        assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge"), (KEY, "charge")]


def test_a_caught_step_failure_replays_without_running_the_step(durable_store_url: str, tmp_path: Path) -> None:
    with _harness("caught_step", durable_store_url, tmp_path) as harness:
        assert harness.run_child("r", KillPoint("in_step", 1)).killed  # in the step after the caught failure
        assert harness.run_child("r").status == "completed"
    engine = Engine(durable_store_url)
    try:
        output = engine.get("r").output
    finally:
        engine.close()
    ran = [name for _, name in _effects(tmp_path / "effects.tsv")]
    assert ran.count("decline") == 1 and ran.count("after") == 2
    assert output == "step 'charge' failed after 1 attempt(s): ValueError: card declined for 42 / noted"


def test_a_tool_failure_that_ended_the_agent_run_replays_without_running_the_tool(
        durable_store_url: str, tmp_path: Path) -> None:
    with _harness("caught_agent", durable_store_url, tmp_path) as harness:
        assert harness.run_child("r", KillPoint("in_step", 1)).killed  # in the step after the caught failure
        assert harness.run_child("r").status == "completed"
        errors = [e for e in harness._events("r") if getattr(e, "kind", None) == "tool" and e.error]
    engine = Engine(durable_store_url)
    try:
        output = engine.get("r").output
    finally:
        engine.close()
    ran = [name for _, name in _effects(tmp_path / "effects.tsv")]
    assert ran.count("refund") == 1 and ran.count("after") == 2
    assert output == "RuntimeError: the refund of 7 bounced / noted"
    assert len(errors) == 1 and errors[0].error["type"] == "RuntimeError"


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phaseledger.cli", "--store", store, *args], check=False, cwd=ROOT,
                          text=True,
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_cli_lists_steps_in_doubt_and_sends_the_decision(durable_store_url: str, tmp_path: Path) -> None:
    with _harness("effect_ask", durable_store_url, tmp_path) as harness:
        _killed_in_doubt(harness, durable_store_url, "ask")
        listed = _cli(durable_store_url, "in-doubt", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert (row["run_id"], row["name"], row["effect_key"], row["policy"], row["awaits_decision"]) == (
            "r", "charge", KEY, "ask", False)
        assert harness.run_child("r").status == "waiting"
        shown = _cli(durable_store_url, "show", "r")
        assert "a decision on an effect in doubt" in shown.stdout and KEY in shown.stdout
        assert _cli(durable_store_url, "resolve", "r", "--not-happened", "--result", "1").returncode == 1
        decided = _cli(durable_store_url, "resolve", "r", "--happened", "--result", '"receipt-42 (by hand)"',
                       "--json")
        assert decided.returncode == 0, decided.stderr
        assert harness.run_child("r").status == "completed"
        assert json.loads(_cli(durable_store_url, "in-doubt", "--json").stdout) == []
    assert json.loads(_cli(durable_store_url, "show", "r", "--json").stdout)["output"] == "receipt-42 (by hand)"
    assert _effects(tmp_path / "effects.tsv") == [(KEY, "charge")]


def harness_workflows(target: str) -> list:
    import tests.integration.crashflows as flows

    return [getattr(flows, target)]
