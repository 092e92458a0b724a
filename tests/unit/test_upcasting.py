"""Rows stored by earlier releases (class version 1: no ``class_version`` in their state) read as this release's.

``StepAttemptFailed`` gained ``started_at``; the run's snapshots gained ``signal_ids``,
``phase_entered_on`` and the ``started_at`` of failed attempts (version 2), then the
``intents`` of effect steps (version 3). Their upcasters fill in what
an old row lacks, on the store's own read path (its mapper, then :func:`project_run`).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.persistence import Mapper

from phaseledger import CorruptEvent, Store
from phaseledger.domain.run import WorkflowRun, project_run
from tests.unit.test_run_aggregate import started, step

STARTED = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def store() -> Store:
    return Store("memory://", cipher_key="", compress=False)


def stored_state(store: Store, event: Any) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(store.app.mapper.to_stored_event(event).state)
    return state


def reread(store: Store, event: Any, edit: Any) -> Any:
    """``event`` stored, its stored state changed by ``edit``, then read back through the store's mapper."""
    row = store.app.mapper.to_stored_event(event)
    state = json.loads(row.state)
    edit(state)
    return store.app.mapper.to_domain_event(dataclasses.replace(row, state=json.dumps(state).encode()))


def failed_attempt(run: WorkflowRun) -> Any:
    """Record a failed attempt (started at :data:`STARTED`) in ``run``; return its event."""
    run.trigger_event(
        WorkflowRun.StepAttemptFailed, seq=run.next_seq, key="9", name="s9", error_type="E", message="m",
        retryable=True, attempt=1, retry_at=None, started_at=STARTED,
    )
    return run.pending_events[-1]


def as_first_release(state: dict[str, Any]) -> None:
    """What the first release stored of a failed attempt: no class version, no ``started_at``."""
    del state["class_version"], state["started_at"]


def test_this_release_stores_its_class_versions(store: Store) -> None:
    run = started()
    failed_attempt(run)
    first, *_, last = run.collect_events()
    assert "class_version" not in stored_state(store, first)  # RunStarted: version 1
    assert stored_state(store, last)["class_version"] == 2
    assert stored_state(store, WorkflowRun.Snapshot.take(run))["state"]["class_version"] == 4


def test_a_failed_attempt_of_the_first_release_reads_with_started_at_unknown(store: Store) -> None:
    event = reread(store, failed_attempt(started()), as_first_release)
    assert type(event) is WorkflowRun.StepAttemptFailed and event.started_at is None
    assert (event.name, event.attempt, event.message) == ("s9", 1, "m")
    run = project_run(None, [*started().collect_events(), event])
    assert run is not None and run.failures["9"][0].started_at is None


def test_a_failed_attempt_stored_without_class_version_keeps_its_started_at(store: Store) -> None:
    event = reread(store, failed_attempt(started()), lambda state: state.pop("class_version"))
    assert event.started_at == STARTED


def test_a_failed_attempt_of_this_release_lacking_started_at_is_corrupt(store: Store) -> None:
    # Stored in full (as releases before the compact form stored events): every field is there.
    row = Mapper.to_stored_event(store.app.mapper, failed_attempt(started()))
    state = json.loads(row.state)
    del state["started_at"]
    with pytest.raises(CorruptEvent, match="started_at"):
        store.app.mapper.to_domain_event(dataclasses.replace(row, state=json.dumps(state).encode()))


def test_a_compact_failed_attempt_lacks_only_fields_at_their_default(store: Store) -> None:
    # Stored compact (phaseledger.store.compact): a field at None is left out and reads as None.
    assert reread(store, failed_attempt(started()), lambda state: state.pop("started_at")).started_at is None
    with pytest.raises(CorruptEvent, match="message"):
        reread(store, failed_attempt(started()), lambda state: state.pop("message"))


def test_a_snapshot_of_the_first_release_folds_to_this_releases_state(store: Store) -> None:
    run = started()
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="taken", name="a", payload=1)
    step(run, "0", kind="signal", detail={"signal_id": "taken"})
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="waiting", name="b", payload=2)
    failed_attempt(run)
    run.collect_events()
    expected = dict(vars(run), phase_entered_on=None)
    expected["failures"] = {"9": [run.failures["9"][0]._replace(started_at=None)]}

    def first_release(state: dict[str, Any]) -> None:
        run_state = state["state"]
        del run_state["class_version"], run_state["signal_ids"], run_state["phase_entered_on"]
        del run_state["failures"]["9"][0]["started_at"]
        del run_state["visit_calls"], run_state["visit_usage"], run_state["journal_elided"]

    snapshot = reread(store, WorkflowRun.Snapshot.take(run, journal=True), first_release)
    loaded = project_run(None, [snapshot])
    assert loaded is not None and vars(loaded) == expected
    assert loaded.signal_ids == ["taken", "waiting"]  # what the snapshot still shows of them


def test_a_snapshot_stored_without_class_version_keeps_its_state(store: Store) -> None:
    run = started()
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="x", name="a", payload=1)
    failed_attempt(run)
    run.collect_events()
    snapshot = reread(store, WorkflowRun.Snapshot.take(run), lambda state: state["state"].pop("class_version"))
    loaded = project_run(None, [snapshot])
    assert loaded is not None and vars(loaded) == vars(run)


def intended(run: WorkflowRun, key: str = "7") -> None:
    run.trigger_event(WorkflowRun.EffectIntended, seq=run.next_seq, key=key, name="charge", effect_key=f"r:1.{key}",
                      fingerprint="abc", policy="ask", signal_id=None)


def test_a_snapshot_of_version_2_folds_with_no_intents(store: Store) -> None:
    run = started()
    failed_attempt(run)
    run.collect_events()

    def version_2(state: dict[str, Any]) -> None:
        state["state"]["class_version"] = 2
        del state["state"]["intents"]
        del state["state"]["visit_calls"], state["state"]["visit_usage"], state["state"]["journal_elided"]

    loaded = project_run(None, [reread(store, WorkflowRun.Snapshot.take(run, journal=True), version_2)])
    assert loaded is not None and loaded.intents == {} and vars(loaded) == vars(run)


def test_a_snapshot_of_version_3_holds_the_whole_journal_and_counts_it(store: Store) -> None:
    run = started()
    step(run, "0", kind="model", usage={"requests": 1, "input_tokens": 5, "output_tokens": 2})
    step(run, "1")
    failed_attempt(run)
    run.collect_events()

    def version_3(state: dict[str, Any]) -> None:
        state["state"]["class_version"] = 3
        del state["state"]["visit_calls"], state["state"]["visit_usage"], state["state"]["journal_elided"]

    loaded = project_run(None, [reread(store, WorkflowRun.Snapshot.take(run, journal=True), version_3)])
    assert loaded is not None and vars(loaded) == vars(run)
    assert loaded.visit_calls == 2 and loaded.visit_usage["input_tokens"] == 5 and loaded.journal_elided is None


def test_a_snapshot_keeps_the_intents_in_doubt_typed(store: Store) -> None:
    run = started()
    intended(run)
    run.collect_events()
    loaded = project_run(None, [reread(store, WorkflowRun.Snapshot.take(run), lambda state: None)])
    assert loaded is not None and vars(loaded) == vars(run)
    assert loaded.intents["7"].effect_key == "r:1.7" and loaded.intents["7"].policy == "ask"
