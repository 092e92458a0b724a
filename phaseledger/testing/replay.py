"""Check that a workflow's runs replay and recover exactly: the core property of phaseledger.

:func:`check_replay` runs a workflow once without interruption, then, for every event k of
that run, copies the first k events to a new run (a crash right after event k was
committed) and resumes it with a fresh engine. Each resumed run must end with the same
state, output and events (timestamps and durations aside), and no step whose result was
in the first k events may run again. Use it in your own tests, with hypothesis
generating the inputs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.domain.status import RUNNING
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine
from phaseledger.engine.journal import STEP_KEY
from phaseledger.store.eventstore import Store

_VOLATILE = frozenset({"duration", "retry_at", "wake_at", "until", "started_at"})


class StepCalls:
    """Records which journaled steps actually executed (by their idempotency key).

    Wrap step functions with :meth:`track` (or call :meth:`called` inside them); replay must
    never execute a step whose result was already recorded.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []

    def called(self) -> None:
        """Note that the step running now executed (call it from inside a step function)."""
        key = STEP_KEY.get()
        if key is not None:
            self.keys.append(key.split(":", 1)[1])

    def track(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a step function so each execution is noted."""

        def tracked(*args: Any, **kwargs: Any) -> Any:
            self.called()
            return fn(*args, **kwargs)

        tracked.__name__ = getattr(fn, "__name__", "step")
        return tracked


def comparable_events(events: Iterable[WorkflowRun.Event]) -> list[tuple[str, dict[str, Any]]]:
    """Events as ``(type, fields)`` without timestamps, durations, resume markers, and the
    values of clock reads and random draws (taken again, they differ by design)."""
    result = []
    for event in events:
        if isinstance(event, WorkflowRun.RunResumed):
            continue
        data = {name: value for name, value in event_fields(event).items() if name not in _VOLATILE}
        if data.get("kind") in ("clock", "random"):
            data.pop("result")  # a clock read or random draw taken again after a crash differs by design
        result.append((type(event).__name__, data))
    return result


@dataclass
class ReplayReport:
    """What :func:`check_replay` checked: the reference run and every resumed prefix."""

    run_id: str
    events: int
    prefixes_checked: list[int] = field(default_factory=list)
    steps_reexecuted: dict[int, list[str]] = field(default_factory=dict)
    """For each prefix, steps that ran again although recorded (must stay empty)."""


class ReplayMismatch(AssertionError):
    """A resumed run differs from the uninterrupted one."""


def _copy_events(events: list[WorkflowRun.Event], new_id: str) -> list[WorkflowRun.Event]:
    return [dataclasses.replace(e, originator_id=new_id) for e in events]  # type: ignore[type-var]


def _recorded_keys(events: Iterable[WorkflowRun.Event]) -> set[str]:
    keys = set()
    visit = 0
    for event in events:
        if isinstance(event, (WorkflowRun.RunStarted, WorkflowRun.PhaseEntered)):
            visit = event.originator_version
        if isinstance(event, WorkflowRun.StepRecorded):
            keys.add(f"{visit}.{event.key}")
    return keys


async def check_replay(
    workflow: Workflow[Any],
    input: BaseModel | Mapping[str, Any] | None = None,
    *,
    store: str | Store = "memory://",
    calls: StepCalls | None = None,
    prefixes: Iterable[int] | None = None,
    run_id: str = "replay-check",
    engine_options: Mapping[str, Any] | None = None,
) -> ReplayReport:
    """Run ``workflow`` once, then resume it from every prefix of its log; raise on any difference.

    ``calls`` (a :class:`StepCalls` whose ``track``-ed functions the workflow's steps use)
    lets the check prove that no recorded step ran again. ``prefixes`` limits which event
    counts are tried (default: all of them). The store must be empty of these run ids.
    """
    options = dict(engine_options or {})
    reference_engine = Engine(store, workflows=[workflow], **options)
    shared = reference_engine.store
    reference = await reference_engine.run(workflow, input, run_id=run_id)
    events = await reference_engine.store.call(shared.events, run_id)
    expected = comparable_events(events)
    report = ReplayReport(run_id=run_id, events=len(events))
    for k in prefixes if prefixes is not None else range(1, len(events)):
        if not 1 <= k < len(events):
            continue
        prefix_id = f"{run_id}~{k}"
        prefix = _copy_events(events[:k], prefix_id)
        await shared.call(shared.append, prefix)
        if calls is not None:
            calls.keys.clear()
        engine = Engine(shared, workflows=[workflow], **options)  # a fresh engine: nothing in memory
        resumed = engine.get(prefix_id)
        while not resumed.finished and resumed.status == RUNNING or resumed.suspended:
            before = resumed.version
            resumed = await engine.resume(prefix_id)
            if resumed.version == before:
                break
        got = comparable_events(await engine.store.call(shared.events, prefix_id))
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
            raise ReplayMismatch(
                f"resuming after event {k} of {len(events)} diverged at event {first + 1}: "
                f"got {got[first] if first < len(got) else 'nothing'}, "
                f"expected {expected[first] if first < len(expected) else 'nothing'}"
            )
        if (resumed.state, resumed.output, resumed.status) != (reference.state, reference.output, reference.status):
            raise ReplayMismatch(
                f"resuming after event {k}: final ({resumed.status}, {resumed.state!r}, {resumed.output!r}) != "
                f"uninterrupted ({reference.status}, {reference.state!r}, {reference.output!r})"
            )
        if calls is not None:
            again = sorted(set(calls.keys) & _recorded_keys(prefix))
            report.steps_reexecuted[k] = again
            if again:
                raise ReplayMismatch(f"resuming after event {k} executed recorded steps again: {again}")
        report.prefixes_checked.append(k)
    return report


def check_replay_sync(*args: Any, **kwargs: Any) -> ReplayReport:
    """:func:`check_replay` for synchronous test code."""
    return asyncio.run(check_replay(*args, **kwargs))
