"""A retry's backoff survives a process kill: the resumed run waits only what remains.

Timestamps come from the log (each attempt's ``retry_at``, each ``RunResumed``) and from
the step itself (when each attempt started), so the assertions compare recorded times
with each other instead of measuring durations.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from phaseledger.domain.run import WorkflowRun
from phaseledger.testing.crash import CrashHarness, KillPoint
from tests.integration.crashflows import BACKOFF, EFFECTS_ENV

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_kill_during_the_backoff_wait_keeps_the_recorded_schedule(durable_store_url: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.tsv"
    delay = timedelta(seconds=BACKOFF.initial_delay)
    # fork=False: every process is a fresh interpreter (the other crash tests fork them).
    with CrashHarness("tests.integration.crashflows:backoff_workflow", durable_store_url, cwd=ROOT, fork=False,
                      env={EFFECTS_ENV: str(effects)}, workdir=tmp_path) as harness:
        # Process 1: attempt 1 fails; killed right after that failure is committed, as it
        # starts waiting. Process 2 resumes at once (before retry_at): attempt 2 fails, and
        # it is killed in the same place.
        assert harness.run_child("r", KillPoint("after_append", 2)).killed
        assert harness.run_child("r", KillPoint("after_append", 2)).killed
        failures = [e for e in harness._events("r") if isinstance(e, WorkflowRun.StepAttemptFailed)]
        assert [f.attempt for f in failures] == [1, 2]
        # Process 3 starts only after the second retry_at has passed.
        time.sleep(max(0.0, (failures[1].retry_at - datetime.now(UTC)).total_seconds()) + 0.05)
        finished = harness.run_child("r")
        events = harness._events("r")

    assert finished.status == "completed"
    assert [type(e).__name__ for e in events] == [
        "RunStarted", "PhaseEntered", "StepAttemptFailed",
        "RunResumed", "StepAttemptFailed",
        "RunResumed", "StepRecorded", "RunCompleted",
    ]
    first, second = failures
    resumed = [e for e in events if isinstance(e, WorkflowRun.RunResumed)]
    starts = [datetime.fromisoformat(line.split("\t")[1].split("@", 1)[1]) for line in effects.read_text().splitlines()]
    assert len(starts) == 3  # three attempts ran, no more
    assert starts[0] + delay <= first.retry_at and starts[1] + delay <= second.retry_at

    # Process 2 resumed at once (usually before retry_at, unless starting it took longer
    # than the delay): attempt 2 started no earlier than the recorded retry_at, and before
    # a fresh full delay counted from the resume could have ended.
    assert first.retry_at <= starts[1] < resumed[0].timestamp + delay
    # Resumed after the second delay was over: attempt 3 started at once, no new wait.
    assert resumed[1].timestamp >= second.retry_at
    assert second.retry_at <= starts[2] < resumed[1].timestamp + delay
