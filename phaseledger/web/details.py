"""What the run page shows, read from one run's log: visits, calls, waits, usage, artifacts.

:func:`run_details` folds the events of one run (never of all runs) into plain data the
templates lay out: the phase visits with their durations, the journaled calls (steps,
model requests, tool calls, signals, timers) inside them, the waits, the edges the run
took, tokens and cost by phase and by model, and the artifacts its phases published.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from phaseledger.domain.errors import PhaseledgerError
from phaseledger.domain.journal import Kind
from phaseledger.domain.usage import add_usage
from phaseledger.engine.views import RecordedEvent, Run
from phaseledger.web.svg import Bar

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow
    from phaseledger.engine.engine import Engine
    from phaseledger.history.timetravel import Lineage

MAX_TIMELINE_CALLS = 250
"""Calls drawn on a run's timeline at most (the event table lists them all)."""


@dataclass
class Visit:
    """One phase visit of the run, from its ``PhaseEntered`` to the next phase or the end."""

    phase: str
    attempt: int
    reason: str
    version: int
    start: datetime
    end: datetime | None = None
    outcome: str | None = None
    calls: list[Call] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """How long the visit took (None while the run is in it)."""
        return None if self.end is None else (self.end - self.start).total_seconds()


@dataclass
class Call:
    """A journaled call of a phase visit (a ``StepRecorded`` event)."""

    version: int
    kind: str
    name: str
    end: datetime
    seconds: float
    tokens: int
    cost: float | None
    model: str | None
    failed: bool

    @property
    def start(self) -> datetime:
        """When the call started (its recorded end less its live duration)."""
        return self.end - timedelta(seconds=self.seconds)


@dataclass
class Wait:
    """A stretch the run was suspended: for a signal, a timer or a retry."""

    reason: str
    start: datetime
    signal: str | None = None
    until: datetime | None = None
    end: datetime | None = None


@dataclass
class UsageRow:
    """Tokens and cost of one phase or one model."""

    name: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass
class Artifact:
    """A document a phase published with ``ctx.artifact``."""

    name: str
    phase: str
    version: int
    format: str
    """``markdown`` or ``table``."""
    content: Any


@dataclass
class RunDetails:
    """Everything the run page shows, read from one run's log."""

    run: Run
    events: list[RecordedEvent]
    workflow: Workflow[Any] | None
    visits: list[Visit]
    waits: list[Wait]
    taken: dict[tuple[str, str], int]
    """How many times the run took each edge (source, target)."""
    by_phase: list[UsageRow]
    by_model: list[UsageRow]
    inherited_tokens: int
    """Tokens on events a fork copied from its parent (paid by the parent, left out of the tables)."""
    artifacts: list[Artifact]
    lineage: Lineage | None
    resumes: list[tuple[datetime, str, int]] = field(default_factory=list)
    """``(when, reason, version)`` of each ``RunResumed``: after a crash (recover), a signal, a timer, ..."""
    timers: list[tuple[datetime, datetime, int]] = field(default_factory=list)
    """``(started, wake_at, version)`` of each ``TimerStarted`` (a sleep, or a signal wait's timeout)."""

    @property
    def visited(self) -> dict[str, int]:
        """Phase -> how many times the run entered it."""
        counts: dict[str, int] = {}
        for visit in self.visits:
            counts[visit.phase] = counts.get(visit.phase, 0) + 1
        return counts

    @property
    def waiting_signal(self) -> str | None:
        """The signal a waiting run waits for."""
        return (self.run.suspended or {}).get("signal") if not self.run.finished else None

    @property
    def deadline(self) -> datetime | None:
        """When a suspended run wakes on its own (a signal's timeout, a timer, a retry)."""
        until = (self.run.suspended or {}).get("until") if not self.run.finished else None
        if isinstance(until, str):
            return datetime.fromisoformat(until)
        return until if isinstance(until, datetime) else None

    def bars(self) -> list[Bar]:
        """The timeline's rows: each phase visit, then what happened in it in time order — its
        calls (the first :data:`MAX_TIMELINE_CALLS` of the run), waits, timers and resumes."""
        now = datetime.now(UTC)  # open bars (a wait, the current visit) last until now
        bars: list[Bar] = []
        shown = 0
        for visit in self.visits:
            until = visit.end or now
            bars.append(Bar(f"{visit.phase} #{visit.attempt}", visit.start, until, "phase",
                            detail=f"entered ({visit.reason}) at v{visit.version}"
                                   + (f", {visit.outcome}" if visit.outcome else ", current"),
                            open=visit.end is None))
            rows: list[Bar] = []
            for wait in self.waits:
                if visit.start <= wait.start <= until:
                    what = f"signal {wait.signal!r}" if wait.signal else wait.reason
                    rows.append(Bar(f"waits: {what}", wait.start, wait.end or now, "wait", indent=True,
                                    detail=f"until {wait.until.isoformat()}" if wait.until else "",
                                    open=wait.end is None))
            for started, wake_at, version in self.timers:
                if visit.start <= started <= until:
                    due = min(wake_at, until)
                    rows.append(Bar(f"timer (due {wake_at:%H:%M:%S})", started, due, "timer", indent=True,
                                    detail=f"due {wake_at.isoformat()}, v{version}",
                                    open=visit.end is None and wake_at > now))
            for call in visit.calls:
                if shown >= MAX_TIMELINE_CALLS:
                    break
                shown += 1
                detail = ", ".join(filter(None, [
                    f"{call.tokens} tokens" if call.tokens else "", call.model or "",
                    f"${call.cost:.4f}" if call.cost else "", "failed" if call.failed else "", f"v{call.version}"]))
                label = call_name(call.kind, call.name)
                rows.append(Bar(label if label != call.name else f"{call.kind}: {call.name}", call.start, call.end,
                                call.kind, detail=detail, indent=True))
            for when, reason, version in self.resumes:
                if visit.start <= when <= until:
                    rows.append(Bar(f"resumed ({reason})", when, when, "resume", detail=f"v{version}", indent=True))
            bars.extend(sorted(rows, key=lambda bar: bar.start))
        return bars

    @property
    def calls_hidden(self) -> int:
        """Calls left off the timeline."""
        return max(sum(len(v.calls) for v in self.visits) - MAX_TIMELINE_CALLS, 0)


def call_name(kind: str, name: str) -> str:
    """A journaled call's name for people: ``planner: model request``, ``researcher: tool search``.

    pydantic-ai names agent units ``<agent>__<operation>``; other names are kept as they are.
    """
    agent, sep, operation = name.partition("__")
    if sep and kind == Kind.MODEL:
        return f"{agent}: model request"
    if sep and kind == Kind.TOOL and "call_tool:" in operation:
        return f"{agent}: tool {operation.rsplit('call_tool:', 1)[1]}"
    return name


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    return None


def fold_events(run: Run, events: Sequence[RecordedEvent]) -> tuple[
        list[Visit], list[Wait], dict[tuple[str, str], int], list[UsageRow], list[UsageRow], int, list[Artifact]]:
    """Fold one run's events into visits, waits, edges taken, usage by phase and model, artifacts."""
    visits: list[Visit] = []
    waits: list[Wait] = []
    taken: dict[tuple[str, str], int] = {}
    phases: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    artifacts: list[Artifact] = []
    inherited = 0
    copied_up_to = int((run.parent or {}).get("version") or 0)
    for event in events:
        data = event.data
        if event.type == "PhaseEntered":
            if visits and visits[-1].end is None:
                visits[-1].end, visits[-1].outcome = event.timestamp, f"to {data.get('phase')}"
            source = data.get("from_phase")
            if source and data.get("reason") == "transition":
                key = (str(source), str(data["phase"]))
                taken[key] = taken.get(key, 0) + 1
            visits.append(Visit(str(data["phase"]), int(data.get("attempt") or 1), str(data.get("reason") or ""),
                                event.version, event.timestamp))
        elif event.type == "StepRecorded":
            usage = data.get("usage") or {}
            kind = str(data.get("kind"))
            call = Call(event.version, kind, str(data.get("name")), event.timestamp, float(event.duration or 0.0),
                        event.tokens, event.cost, usage.get("model"), bool(data.get("error")))
            phase = visits[-1].phase if visits else "?"
            if visits:
                visits[-1].calls.append(call)
            if kind == Kind.ARTIFACT and isinstance(data.get("result"), dict):
                document = data["result"]
                artifacts.append(Artifact(call.name, phase, event.version, str(document.get("format")),
                                          document.get("content")))
            if usage and event.version <= copied_up_to:
                inherited += event.tokens
            elif usage:
                add_usage(phases.setdefault(phase, {}), usage)
                if kind == Kind.MODEL or usage.get("model"):
                    add_usage(models.setdefault(str(usage.get("model") or "unknown"), {}), usage)
        elif event.type == "RunSuspended":
            waits.append(Wait(str(data.get("reason")), event.timestamp, data.get("signal"), _when(data.get("until"))))
        elif event.type == "RunResumed":
            for wait in waits:
                if wait.end is None:
                    wait.end = event.timestamp
        elif event.type in ("RunCompleted", "RunFailed", "RunCancelled"):
            outcome = event.type.removeprefix("Run").lower()
            if visits and visits[-1].end is None:
                visits[-1].end, visits[-1].outcome = event.timestamp, outcome
            for wait in waits:
                if wait.end is None:
                    wait.end = event.timestamp

    def rows(totals: dict[str, dict[str, Any]]) -> list[UsageRow]:
        return [UsageRow(name, int(t.get("requests", 0)), int(t.get("input_tokens", 0)),
                         int(t.get("output_tokens", 0)), t.get("cost")) for name, t in totals.items()]

    return visits, waits, taken, rows(phases), rows(models), inherited, artifacts


def run_details(engine: Engine, run_id: str) -> RunDetails:
    """Read one run's log and fold it into what its page shows (a damaged run: what can be read)."""
    from phaseledger.domain.errors import CorruptEvent

    run = engine.get(run_id, allow_damaged=True)
    try:
        events = engine.history(run_id)
    except CorruptEvent as exc:
        events = [event for event in _readable(engine, run_id, exc.version)]
    workflow = engine.registry.workflows.get((run.workflow, run.workflow_version))
    visits, waits, taken, by_phase, by_model, inherited, artifacts = fold_events(run, events)
    try:
        lineage: Lineage | None = engine.lineage(run_id)
    except PhaseledgerError:
        lineage = None
    resumes = [(e.timestamp, str(e.data.get("reason")), e.version) for e in events if e.type == "RunResumed"]
    timers = [(e.timestamp, wake_at, e.version) for e in events
              if e.type == "TimerStarted" and (wake_at := _when(e.data.get("wake_at"))) is not None]
    return RunDetails(run, events, workflow, visits, waits, taken, by_phase, by_model, inherited, artifacts, lineage,
                      resumes, timers)


def _readable(engine: Engine, run_id: str, bad_version: int) -> list[RecordedEvent]:
    """The events of a damaged run before its unreadable row."""
    from phaseledger.engine.views import event_view

    if bad_version <= 1:
        return []
    return [event_view(e) for e in engine.store.events(run_id, lte=bad_version - 1)]
