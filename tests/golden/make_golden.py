"""Write a golden log: ``python -m tests.golden.make_golden tests/golden/vN-log.json`` (from the repository root).

Not run by the tests. Run it when the log's format changes (an event's or the run's
``class_version`` goes up, or the way rows are written changes): the new file joins the older ones, which stay as they are, and
``tests/integration/test_golden_logs.py`` loads and resumes every one of them on every store.
The files, each written by this script with the release named:

- ``v1-log.json``: the first release of phaseledger, before class versions: no
  ``class_version`` in any row, no ``started_at`` in failed attempts, no ``signal_ids`` or
  ``phase_entered_on`` in snapshots;
- ``v1-late-log.json``: the last release before class versions, which had those fields
  but no ``class_version``;
- ``v2-log.json``: the release that introduced class versions (``StepAttemptFailed`` and
  the run's snapshots at version 2);
- ``v3-log.json``: the release that introduced the effect ledger (``EffectIntended``, the
  run's snapshots at version 3 with their ``intents``), with a fourth run ``in-doubt`` of
  :mod:`tests.golden.workflow_v3`;
- ``v4-log.json``: the release that stores run events compact (fields at their default left
  out, the timestamp as an integer; see ``phaseledger.store.compact``) and snapshots'
  journal entries without their defaults;
- ``v5-log.json``: the release whose snapshots leave out the journal of the phase visit in
  progress (the run's snapshots at version 4, with ``journal_elided``, ``visit_calls`` and
  ``visit_usage``; the ``finished`` run's snapshot is one of them).

It runs the workflow of :mod:`tests.golden.workflow` on a ``memory://`` store, snapshotting
every 4 events, into three runs:

- ``finished``: completed;
- ``waiting``: waiting for its ``approve`` signal, having taken a ``note`` signal;
- ``retrying``: its ``reserve`` step failed once (``StepAttemptFailed``); it waits to retry;
- ``in-doubt``: stopped inside its effect step ``charge``, whose intent is recorded and whose
  result is not.

The file holds their stored rows (events and latest snapshots, see :mod:`tests.golden.records`)
and, for each run, its
view and event types as it loads, the signals it has received (sending one again with the
same id must append nothing), the actions that resume it and its result afterwards, with the
step functions that ran meanwhile: those are worked out by putting the rows into a new store
and resuming the runs there, as the test does. Rows are stored neither encrypted nor
compressed (plain JSON, no machine path in them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import phaseledger
from phaseledger import Engine
from tests.golden import records
from tests.golden.workflow import CALLS, FAILING, RETRY, order
from tests.golden.workflow_v3 import HANGING, payment

WORKFLOWS = [order, payment]

RECEIVED: dict[str, list[list[Any]]] = {"waiting": [["note", {"text": "by friday"}, "waiting-note"]]}
"""Signals each run has received, by run."""

RESUMES: dict[str, list[list[Any]]] = {
    "waiting": [["signal", "approve", {"ok": True}, "waiting-approve"], ["resume"]],
    "retrying": [["resume"]],
    "in-doubt": [["resume"]],
}
"""The actions that resume each suspended run."""


async def write_runs(engine: Engine) -> None:
    """The three runs, left as the golden file records them."""
    await engine.run(order, {"item": "lamp"}, run_id="finished")
    await engine.signal("finished", "note", {"text": "fragile"}, signal_id="finished-note")
    await engine.resume("finished")
    await engine.signal("finished", "approve", {"ok": True}, signal_id="finished-approve")
    await engine.resume("finished")

    await engine.run(order, {"item": "desk", "quantity": 2}, run_id="waiting")
    [(name, payload, signal_id)] = RECEIVED["waiting"]
    await engine.signal("waiting", name, payload, signal_id=signal_id)
    await engine.resume("waiting")

    await engine.start(order, {"item": "chair"}, run_id="retrying")
    await engine.signal("retrying", "note", {"text": "gift"}, signal_id="retrying-note")
    await engine.signal("retrying", "approve", {"ok": False}, signal_id="retrying-approve")
    FAILING.add("reserve")
    await engine.resume("retrying")

    HANGING.add("charge")
    driving = asyncio.ensure_future(engine.run(payment, {"amount": 5}, run_id="in-doubt"))
    while not CALLS["charge"]:
        await asyncio.sleep(0.01)
    driving.cancel()  # stopped in the middle of the step: its intent recorded, its result not
    await asyncio.gather(driving, return_exceptions=True)


async def make(path: Path) -> None:
    run_ids = ["finished", "waiting", "retrying", "in-doubt"]
    writer = Engine("memory://", workflows=WORKFLOWS, snapshot_every=4, max_inline_wait=0)  # every wait suspends
    await write_runs(writer)
    golden: dict[str, Any] = {
        "written_by": f"phaseledger {phaseledger.__version__}",
        **records.rows_of(writer.store, run_ids),
        "runs": {run_id: {**records.loaded(writer, run_id), "received": RECEIVED.get(run_id, []),
                          "resume": RESUMES.get(run_id, [])} for run_id in run_ids},
    }
    await asyncio.sleep(RETRY.initial_delay)  # until the retrying run is due
    reader = Engine("memory://", workflows=WORKFLOWS)
    records.insert(reader.store, golden)
    for run_id, run in golden["runs"].items():
        if run["resume"]:
            run["resumed"] = await records.resume(reader, run_id, run["resume"])
    path.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    asyncio.run(make(Path(sys.argv[1])))
