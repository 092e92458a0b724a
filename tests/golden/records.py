"""Golden log files: stored rows written out as JSON, put back into a store, and the runs resumed.

A golden file holds the rows of some runs exactly as a release stored them (events and
snapshots apart: topic, run id, version and the stored state in base64) and what a later
release must make of them (see ``make_golden.py`` for how one is written). Only
eventsourcing's recorder interface is used to read and insert the rows, so the same code
works on every store and with every release.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from eventsourcing.persistence import StoredEvent

from phaseledger import Engine, Store
from tests.golden.workflow import CALLS

HERE = Path(__file__).parent

LOADED_FIELDS = ("status", "phase", "state", "output", "error", "version", "usage", "attempts", "steps",
                 "replayed_steps", "suspended", "parent", "created_on", "updated_on", "finished_on")
"""The fields of a run's view a golden file records as the run loads."""

RESUMED_FIELDS = ("status", "phase", "state", "output", "error")
"""The fields recorded once the run has resumed: its result (the events a release appends may differ)."""


def golden_files() -> list[Path]:
    """The golden files, oldest format first."""
    return sorted(HERE.glob("v*-log.json"))


def read(path: Path) -> dict[str, Any]:
    """A golden file's content."""
    golden: dict[str, Any] = json.loads(path.read_text())
    return golden


def rows_of(store: Store, run_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The stored rows of these runs: their events, and the latest snapshot of each (the one a load reads)."""
    events: list[StoredEvent] = []
    snapshots: list[StoredEvent] = []
    for run_id in run_ids:
        events += store.app.recorder.select_events(run_id)
        if store.app.snapshots is not None:
            snapshots += store.app.snapshots.recorder.select_events(run_id, desc=True, limit=1)
    for row in (*events, *snapshots):
        if not row.state.startswith(b"{"):
            raise SystemExit("stored states are not plain JSON: unset PHASELEDGER_CIPHER_KEY and PHASELEDGER_COMPRESS")
    return {"events": [_as_json(row) for row in events], "snapshots": [_as_json(row) for row in snapshots]}


def _as_json(row: StoredEvent) -> dict[str, Any]:
    return {"topic": row.topic, "originator_id": str(row.originator_id), "originator_version": row.originator_version,
            "state": base64.b64encode(row.state).decode("ascii")}


def _stored(row: dict[str, Any]) -> StoredEvent:
    return StoredEvent(originator_id=row["originator_id"], originator_version=row["originator_version"],
                       topic=row["topic"], state=base64.b64decode(row["state"]))


def insert(store: Store, golden: dict[str, Any]) -> None:
    """Put a golden file's rows into ``store`` as its recorders store any row."""
    store.app.recorder.insert_events([_stored(row) for row in golden["events"]])
    if golden["snapshots"]:
        assert store.app.snapshots is not None, "a golden file with snapshots needs a store that keeps them"
        store.app.snapshots.recorder.insert_events([_stored(row) for row in golden["snapshots"]])


def loaded(engine: Engine, run_id: str) -> dict[str, Any]:
    """What a golden file records of a run as it loads: its view and the types of its events."""
    view = engine.get(run_id).model_dump(mode="json")
    return {"view": {name: view[name] for name in LOADED_FIELDS},
            "events": [event.type for event in engine.history(run_id)]}


async def resume(engine: Engine, run_id: str, actions: list[list[Any]]) -> dict[str, Any]:
    """Take the actions that resume a run; what a golden file records of it then (and the steps that ran)."""
    CALLS.clear()
    for action, *args in actions:
        if action == "signal":
            name, payload, signal_id = args
            await engine.signal(run_id, name, payload, signal_id=signal_id)
        else:
            await engine.resume(run_id)
    view = engine.get(run_id).model_dump(mode="json")
    return {"view": {name: view[name] for name in RESUMED_FIELDS}, "calls": dict(sorted(CALLS.items()))}
