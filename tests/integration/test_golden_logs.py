"""Golden logs: runs stored by earlier releases load, show the same views and resume to the same results.

Each file under ``tests/golden/`` holds the stored rows of three runs as a release wrote
them (see ``tests/golden/make_golden.py``): the oldest predate class versions, so the
upcasters are exercised too. The rows go into a fresh store of every kind through
eventsourcing's recorder interface; an engine of this release then opens that store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phaseledger import Engine
from tests.golden import records
from tests.golden.make_golden import WORKFLOWS


@pytest.fixture(params=records.golden_files(), ids=lambda path: path.stem)
def golden(request: pytest.FixtureRequest) -> dict[str, Any]:
    path: Path = request.param
    return records.read(path)


@pytest.fixture
def engine(store_url: str, golden: dict[str, Any]) -> Iterator[Engine]:
    """An engine on a fresh store holding the golden file's rows (stored plain, as they were written)."""
    engine = Engine(store_url, workflows=WORKFLOWS, cipher_key="", compress=False)
    records.insert(engine.store, golden)
    yield engine
    engine.close()


def test_the_golden_files_cover_every_format() -> None:
    assert [path.name for path in records.golden_files()] == ["v1-late-log.json", "v1-log.json", "v2-log.json",
                                                                   "v3-log.json", "v4-log.json", "v5-log.json"]


async def test_every_run_loads_as_it_was(engine: Engine, golden: dict[str, Any]) -> None:
    assert sorted(run.run_id for run in engine.runs()) == sorted(golden["runs"])
    for run_id, run in golden["runs"].items():
        assert records.loaded(engine, run_id) == {"view": run["view"], "events": run["events"]}, run_id


async def test_the_reports_fold_every_run(engine: Engine, golden: dict[str, Any]) -> None:
    engine.reports.catch_up()
    for run_id, run in golden["runs"].items():
        summary = engine.reports.run(run_id)
        assert summary is not None
        assert (summary.status, summary.phase, summary.version) == (
            run["view"]["status"], run["view"]["phase"], run["view"]["version"])
        assert summary.step_failures == run["events"].count("StepAttemptFailed")


async def test_suspended_runs_resume_to_the_recorded_results(engine: Engine, golden: dict[str, Any]) -> None:
    resumed = {run_id: run for run_id, run in golden["runs"].items() if run["resume"]}
    assert {"retrying", "waiting"} <= set(resumed)  # and, from v3 on, "in-doubt"
    for run_id, run in resumed.items():
        version = engine.get(run_id).version
        for name, payload, signal_id in run["received"]:
            await engine.signal(run_id, name, payload, signal_id=signal_id)
        assert engine.get(run_id).version == version, "a signal received already was appended again"
        # The steps that ran: only those the log did not record (no recorded step runs again).
        assert await records.resume(engine, run_id, run["resume"]) == run["resumed"], run_id
