"""Checks on a run's log: the step keys it committed, version gaps and calls recorded
twice, and the comparable forms of events used to compare a crashed run with a reference."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from phaseledger.domain.run import WorkflowRun
from phaseledger.testing.replay import comparable_events

_STEP_LIKE = ("step", "model", "tool")


def _visit_keys(events: Iterable[WorkflowRun.Event], run_id: str) -> list[tuple[str, WorkflowRun.Event]]:
    """Pair each journal event with the idempotency key of its call (``run:visit.key``)."""
    visit = 0
    keyed = []
    for event in events:
        if isinstance(event, (WorkflowRun.RunStarted, WorkflowRun.PhaseEntered)):
            visit = event.originator_version
        key = getattr(event, "key", None)
        if key is not None:
            keyed.append((f"{run_id}:{visit}.{key}", event))
    return keyed


def committed_step_keys(events: Iterable[WorkflowRun.Event], run_id: str) -> set[str]:
    """Idempotency keys of the step-like calls whose results are in these events."""
    return {
        key for key, event in _visit_keys(events, run_id)
        if isinstance(event, WorkflowRun.StepRecorded) and event.kind in _STEP_LIKE
    }


def check_log(events: Sequence[WorkflowRun.Event], run_id: str) -> list[str]:
    """Problems in one run's log: version gaps, a call recorded twice, events after the end."""
    problems = []
    versions = [e.originator_version for e in events]
    if versions != list(range(1, len(events) + 1)):
        problems.append(f"event versions are not gapless from 1: {versions}")
    if not events or not isinstance(events[0], WorkflowRun.RunStarted):
        problems.append("the log does not start with RunStarted")
    seen: Counter[tuple[str, ...]] = Counter()
    for key, event in _visit_keys(events, run_id):
        ident: tuple[str, ...] = (type(event).__name__, key)
        if isinstance(event, WorkflowRun.StepAttemptFailed):
            ident += (str(event.attempt),)
        if isinstance(event, (WorkflowRun.StepRecorded, WorkflowRun.CheckpointSaved)):
            ident = ("recorded", key)
        seen[ident] += 1
    problems.extend(f"{kind} {key} is recorded {n} times" for (kind, key, *_), n in seen.items() if n > 1)
    ends = [i for i, e in enumerate(events) if isinstance(e, (WorkflowRun.RunCompleted, WorkflowRun.RunFailed))]
    if len(ends) > 1 or (ends and ends[0] != len(events) - 1 and not _retried_after(events, ends[0])):
        problems.append(f"the run ends more than once or has events after its end (at versions {[i + 1 for i in ends]})")
    return problems


def _retried_after(events: Sequence[WorkflowRun.Event], index: int) -> bool:
    nxt = events[index + 1] if index + 1 < len(events) else None
    return isinstance(nxt, WorkflowRun.RunResumed) and nxt.reason == "retry"


def comparable_without(events: Sequence[WorkflowRun.Event], ignore: frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
    """The events as :func:`~phaseledger.testing.replay.comparable_events` gives them, less the ``ignore``d kinds."""
    result = []
    for kind, data in comparable_events(events):
        if kind in ignore:
            continue
        if "StepAttemptFailed" in ignore:
            data.pop("seq", None)  # failed attempts take sequence numbers too
        result.append((kind, data))
    return result


def event_fingerprint(event: WorkflowRun.Event) -> tuple[Any, ...]:
    """An event's kind and data, comparable across processes."""
    data = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else vars(event)
    return (type(event).__name__, json.dumps(data, sort_keys=True, default=str))
