"""Typed journal entries: read by attribute in memory, stored in snapshots as plain dicts (fields at their default left out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from phaseledger.domain.journal import FailedAttempt, PendingSignal, RecordedCall
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.usage import add_usage
from phaseledger.store.eventstore import Store
from tests.unit.test_run_aggregate import started, step

WHEN = datetime(2030, 1, 1, tzinfo=UTC)


def busy_run() -> WorkflowRun:
    """A run whose current phase visit has a recorded call, a checkpoint, a failed attempt and a pending signal."""
    run = started()
    step(run, "0", usage={"requests": 1, "input_tokens": 10, "output_tokens": 3, "cost": 0.25})
    run.trigger_event(WorkflowRun.CheckpointSaved, seq=run.next_seq, key="1", label="halfway", state={"n": 2})
    run.trigger_event(
        WorkflowRun.StepAttemptFailed, seq=run.next_seq, key="2", name="s2", error_type="ConnectionError",
        message="reset", retryable=True, attempt=1, retry_at=WHEN, started_at=WHEN,
    )
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="sig-1", name="go", payload={"ok": True})
    run.collect_events()  # as when a snapshot is taken: after the events were saved
    return run


def test_the_apply_methods_build_typed_entries() -> None:
    run = busy_run()
    assert run.journal["0"] == RecordedCall(
        seq=0, name="s0", kind="step", result={"k": "0"}, result_type=None, fingerprint=None, error=None,
        usage={"requests": 1, "input_tokens": 10, "output_tokens": 3, "cost": 0.25}, detail=None,
    )
    checkpoint = run.journal["1"]
    assert (checkpoint.kind, checkpoint.name, checkpoint.result) == ("checkpoint", "halfway", {"n": 2})
    assert run.failures["2"] == [FailedAttempt("s2", 1, WHEN, "ConnectionError", "reset", True, WHEN)]
    assert run.inbox == [PendingSignal("sig-1", "go", {"ok": True})]
    with pytest.raises(AttributeError):  # immutable
        run.journal["0"].result = None  # type: ignore[misc]


def test_snapshots_store_the_entries_as_plain_dicts_without_their_defaults() -> None:
    store = Store("memory://")
    stored = store.app.mapper.to_stored_event(WorkflowRun.Snapshot.take(busy_run(), journal=True))
    state = json.loads(stored.state)["state"]
    assert state["journal"]["0"] == {
        "seq": 0, "name": "s0", "result": {"k": "0"},
        "usage": {"requests": 1, "input_tokens": 10, "output_tokens": 3, "cost": 0.25},
    }
    assert state["journal"]["1"] == {"seq": 1, "name": "halfway", "kind": "checkpoint", "result": {"n": 2}}
    [attempt] = state["failures"]["2"]
    assert list(attempt) == ["name", "attempt", "retry_at", "error_type", "message", "retryable", "started_at"]
    assert state["inbox"] == [{"signal_id": "sig-1", "name": "go", "payload": {"ok": True}}]


def test_entries_stored_in_full_by_earlier_releases_load_the_same() -> None:
    run = busy_run()
    snapshot = WorkflowRun.Snapshot.take(run, journal=True)
    snapshot.state["journal"] = {key: RecordedCall(**entry)._asdict() for key, entry in snapshot.state["journal"].items()}
    assert snapshot.state["journal"]["1"] == {
        "seq": 1, "name": "halfway", "kind": "checkpoint", "result": {"n": 2}, "result_type": None,
        "fingerprint": None, "error": None, "usage": None, "detail": None,
    }
    assert snapshot.mutate(None).journal == run.journal


def test_a_snapshot_loads_back_into_the_same_typed_entries() -> None:
    run = busy_run()
    store = Store("memory://")
    mapper = store.app.mapper
    loaded = mapper.to_domain_event(mapper.to_stored_event(WorkflowRun.Snapshot.take(run, journal=True))).mutate(None)
    assert (loaded.journal, loaded.failures, loaded.inbox) == (run.journal, run.failures, run.inbox)
    assert isinstance(loaded.journal["0"], RecordedCall) and loaded.journal["0"].usage["cost"] == 0.25
    assert WorkflowRun.Snapshot.take(loaded, journal=True).state == WorkflowRun.Snapshot.take(run, journal=True).state


def test_a_failed_attempt_of_a_snapshot_older_than_started_at_loads() -> None:
    snapshot = WorkflowRun.Snapshot.take(busy_run(), journal=True)
    del snapshot.state["failures"]["2"][0]["started_at"]
    [attempt] = snapshot.mutate(None).failures["2"]
    assert attempt.started_at is None and attempt.next_attempt == 2


def test_a_refusal_by_an_open_breaker_keeps_its_attempt_number() -> None:
    refused = FailedAttempt("s", 2, WHEN, "CircuitOpen", "open", True, WHEN)
    failed = refused._replace(error_type="ConnectionError")
    assert (refused.refused, refused.next_attempt) == (True, 2)
    assert (failed.refused, failed.next_attempt) == (False, 3)


def test_usage_adds_counters_and_cost_and_counts_what_is_not_a_number_as_zero() -> None:
    total = {"requests": 1, "input_tokens": 5, "output_tokens": 1}
    add_usage(total, {"requests": 1, "input_tokens": 10, "output_tokens": 3, "cost": 0.1, "model": "m"})
    add_usage(total, {"requests": "?", "input_tokens": None, "cost": "unknown"})
    add_usage(total, None)
    assert total == {"requests": 2, "input_tokens": 15, "output_tokens": 4, "cost": 0.1}
