"""When a run is due: the rule that resuming, workers and the run index all follow."""

from __future__ import annotations

from datetime import UTC, datetime

from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.status import RUNNING, WAITING

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest time: when a run without a recorded time became runnable."""


def _awaited_signal_arrived(run: WorkflowRun) -> bool:
    signal = (run.suspended or {}).get("signal")
    return run.status == WAITING and signal is not None and any(s.name == signal for s in run.inbox)


def is_due(run: WorkflowRun, now: datetime | None = None) -> bool:
    """Whether a run should be driven now: running, or suspended and woken (signal or time)."""
    if run.finished:
        return False
    if run.status == RUNNING or _awaited_signal_arrived(run):
        return True
    until = (run.suspended or {}).get("until")
    return until is not None and (now or datetime.now(UTC)) >= until


def runnable_at(run: WorkflowRun) -> datetime | None:
    """When the run may next be driven; None while only a new event can wake it.

    Running runs (new, or interrupted by a crash) and runs whose awaited signal arrived are
    runnable since their last event; sleeping runs, runs retrying after backoff and waits
    with a timeout at their wake time. Agrees with :func:`is_due`:
    ``is_due(run, now)`` exactly when this is not None and (the run is running or woken, or
    ``now`` reached it).
    """
    if run.finished:
        return None
    if run.status == RUNNING or _awaited_signal_arrived(run):
        return run.modified_on or EPOCH
    until = (run.suspended or {}).get("until")
    return until if isinstance(until, datetime) else None
