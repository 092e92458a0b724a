"""Run events stored compact (no fields at their default, an integer timestamp) read back as they were written."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from phaseledger import CorruptEvent, DecryptionFailed, Store, generate_cipher_key
from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.store.compact import COMPACT
from tests.unit.test_run_aggregate import started, step

WHEN = datetime(2030, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)


def every_event() -> list[Any]:
    """One event of each run event type (RunStarted, PhaseEntered, the calls, the ends), some fields at None."""
    run = started()
    step(run, "0")
    step(run, "x", kind="model", usage={"requests": 1}, detail={"signal_id": "s"})
    run.trigger_event(WorkflowRun.CheckpointSaved, seq=run.next_seq, key="2", label="half", state={"n": 2})
    run.trigger_event(WorkflowRun.StepAttemptFailed, seq=run.next_seq, key="3", name="s3", error_type="E",
                      message="m", retryable=True, attempt=1, retry_at=None, started_at=WHEN)
    run.trigger_event(WorkflowRun.EffectIntended, seq=3, key="3", name="s3", effect_key="k", fingerprint=None,
                      policy="ask", signal_id=None)
    run.trigger_event(WorkflowRun.TimerStarted, seq=4, key="4", wake_at=WHEN)
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="s", name="go", payload=None)
    run.trigger_event(WorkflowRun.RunSuspended, reason="signal", until=None, signal="go")
    run.trigger_event(WorkflowRun.RunResumed, reason="signal")
    run.trigger_event(WorkflowRun.RunFailed, error={"type": "E", "message": "m", "traceback": ""})
    run.trigger_event(WorkflowRun.RunCompleted, output=None, output_type=None, state={"n": 3})
    run.trigger_event(WorkflowRun.RunCancelled, reason="r")
    return list(run.collect_events())


@pytest.fixture(params=["plain", "compressed", "encrypted"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "encrypted":
        pytest.importorskip("cryptography")
        return Store("memory://", cipher_key=generate_cipher_key(), compress=True)
    return Store("memory://", cipher_key="", compress=request.param == "compressed")


def test_every_run_event_type_is_written_compact() -> None:
    assert {type(event) for event in every_event()} == set(COMPACT)


def test_every_run_event_reads_back_as_it_was_written(store: Store) -> None:
    for event in every_event():
        read = store.app.mapper.to_domain_event(store.app.mapper.to_stored_event(event))
        assert type(read) is type(event) and read == event, type(event).__name__
        assert read.timestamp.tzinfo is UTC
        assert event_fields(read) == event_fields(event)


def test_a_trivial_step_stores_what_is_not_a_default() -> None:
    store = Store("memory://", cipher_key="", compress=False)
    run = started()
    run.trigger_event(WorkflowRun.StepRecorded, seq=0, key="0", name="count", kind="step", result=1, result_type=None,
                      fingerprint=None, usage=None, duration=0.5, error=None, detail=None)
    [*_, event] = run.collect_events()
    state = json.loads(store.app.mapper.to_stored_event(event).state)
    micros = (event.timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert state == {"timestamp": micros, "seq": 0, "name": "count", "result": 1, "duration": 0.5}


def test_values_that_only_look_like_defaults_are_kept() -> None:
    store = Store("memory://", cipher_key="", compress=False)
    run = started()
    run.trigger_event(WorkflowRun.StepRecorded, seq=7, key="other", name="n", kind="model", result=0, result_type=None,
                      fingerprint="", usage={}, duration=0.0, error=None, detail=None)
    [*_, event] = run.collect_events()
    stored = store.app.mapper.to_stored_event(event)
    assert {"key": "other", "kind": "model", "result": 0, "fingerprint": "", "usage": {}}.items() <= json.loads(
        stored.state).items()
    assert store.app.mapper.to_domain_event(stored) == event


def test_a_timestamp_not_in_utc_is_written_in_full_and_keeps_its_offset() -> None:
    store = Store("memory://", cipher_key="", compress=False)
    [event] = started().collect_events()[:1]
    paris = dataclasses.replace(event, timestamp=WHEN.astimezone(timezone(timedelta(hours=1))))
    stored = store.app.mapper.to_stored_event(paris)
    assert json.loads(stored.state)["timestamp"]["_type_"] == "datetime_iso"
    read = store.app.mapper.to_domain_event(stored)
    assert read == paris and read.timestamp.utcoffset() == timedelta(hours=1)


def test_rows_stored_in_full_by_earlier_releases_read_as_before(store: Store) -> None:
    for event in every_event():
        full = Mapper.to_stored_event(store.app.mapper, event)  # eventsourcing's own form, every field written
        assert store.app.mapper.to_domain_event(full) == event


def _journal_entry(store: Store, stored: Any) -> Any:
    return store.app.mapper.journal_entry(stored.originator_id, stored.originator_version, stored.topic,  # type: ignore[attr-defined]
                                          stored.state)


def test_journal_rows_read_straight_into_the_entries_their_events_record(store: Store) -> None:
    events = every_event()
    first_step = next(e for e in events if isinstance(e, WorkflowRun.StepRecorded))
    events.append(dataclasses.replace(first_step, key="other", result={"_type_": "x", "n": [1, None]},
                                      result_type="a.Model", fingerprint="f", error={"type": "E"}))
    for event in events:
        stored = store.app.mapper.to_stored_event(event)
        journaled = isinstance(event, (WorkflowRun.StepRecorded, WorkflowRun.CheckpointSaved))
        expected = (event.key, event.entry()) if journaled else None
        assert _journal_entry(store, stored) == expected, type(event).__name__
        full = Mapper.to_stored_event(store.app.mapper, event)  # a row of an earlier release
        assert _journal_entry(store, full) == expected, type(event).__name__


def test_a_damaged_journal_row_is_reported_as_the_event_path_reports_it() -> None:
    store = Store("memory://", cipher_key="", compress=False)
    step_event = next(e for e in every_event() if isinstance(e, WorkflowRun.StepRecorded))
    stored = store.app.mapper.to_stored_event(step_event)
    without_name = {k: v for k, v in json.loads(stored.state).items() if k != "name"}
    for state in (b"not json", json.dumps(without_name).encode()):
        damaged = dataclasses.replace(stored, state=state)
        with pytest.raises((CorruptEvent, DecryptionFailed)) as raised:  # not JSON: perhaps encrypted
            _journal_entry(store, damaged)
        with pytest.raises((CorruptEvent, DecryptionFailed)) as by_event:
            store.app.mapper.to_domain_event(damaged)
        assert (type(raised.value), str(raised.value)) == (type(by_event.value), str(by_event.value))
