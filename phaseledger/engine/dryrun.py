"""A dry replay: the current phase visit of a run replayed against some workflow code, writing nothing.

The deploy gate (:mod:`phaseledger.deploys`) asks what resuming a run with new code
would do, without doing it. :func:`dry_replay` runs the handler of the run's current phase
the way a resume does, with the same :class:`~phaseledger.engine.journal.Journal` checks:
recorded calls are served from the log (a call that does not match what was recorded
raises :class:`~phaseledger.NonDeterminismError`, as on a resume), and the first call that
would run live ends the replay: the journal raises :class:`LiveCall`, an internal
``BaseException`` that user code cannot swallow. Nothing is ever recorded or committed:
every path of the driver that would write raises :class:`LiveCall` too.

Durable agents go through the same journal, so an agent phase is served from the log and
stops at its first live model request or tool call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from phaseledger.domain.errors import NonDeterminismError, PhaseledgerError
from phaseledger.domain.journal import Kind, RecordedCall
from phaseledger.domain.values import copy_json, decode_value, encode_value
from phaseledger.domain.workflow import Phase, Workflow
from phaseledger.engine.context import Context, run_handler, state_data
from phaseledger.engine.driver import RunDriver
from phaseledger.engine.journal import Journal

if TYPE_CHECKING:
    from phaseledger.domain.run import WorkflowRun
    from phaseledger.engine.engine import Engine

__all__ = ["CallSeen", "DryOutcome", "LiveCall", "dry_replay"]


class LiveCall(BaseException):
    """Unwinds a dry replay at the first call that would run live (or anything that would write)."""


@dataclass(frozen=True)
class CallSeen:
    """One journaled call, as recorded or as the code asked for it."""

    kind: str
    name: str
    fingerprint: str | None = None
    key: str | None = None
    seq: int | None = None
    """Its sequence in the run, when recorded."""


@dataclass
class DryOutcome:
    """What a dry replay of a run's current phase visit found."""

    ended: Literal["live", "phase_end", "diverged", "failed"]
    """``live``: stopped at the first live call; ``phase_end``: every recorded call was served and
    the phase finished (the next phase change would be recorded); ``diverged``: the code asked
    for another call than recorded; ``failed``: the code raised something a resume would fail on."""
    replayed: int = 0
    """Recorded calls served from the log."""
    stopped_at: CallSeen | None = None
    """The live call the replay stopped at (``ended == "live"``)."""
    sequence: int | str | None = None
    """Where it diverged: the recorded call's sequence in the phase visit."""
    recorded: CallSeen | None = None
    """The recorded call at the divergence (None: the log holds no call there)."""
    asked: CallSeen | None = None
    """What the code asked for at the divergence (None: no further call, the phase finished)."""
    error: str | None = None
    """What went wrong, in words (``diverged`` and ``failed``)."""
    upcast: list[str] = field(default_factory=list)
    """Recorded data the code reads differently than it was recorded (its models changed it)."""


class _DryDriver(RunDriver):
    """A driver that holds the run in memory and refuses to write: each write is a :class:`LiveCall`."""

    def __init__(self, engine: Engine, run: WorkflowRun, workflow: Workflow[Any]) -> None:
        super().__init__(engine, run, workflow)
        self.unclaimed = False

    def record(self, event_class: type[WorkflowRun.Event], **fields: Any) -> None:
        raise LiveCall(f"record {event_class.__name__}")

    async def step_recorded(self) -> None:
        raise LiveCall("step recorded")

    async def claim(self) -> None:
        raise LiveCall("claim")

    async def commit(self) -> None:
        if self.run.pending_events:
            raise LiveCall("commit")

    def check_boundary(self) -> None:
        raise LiveCall("live call")  # the journal asks this before every live call


class _DryJournal(Journal):
    """The journal of a dry replay: the same checks, and it notes what it served, met and stopped at."""

    def __init__(self, driver: RunDriver, phase: Phase) -> None:
        super().__init__(driver, phase)
        self.served: set[str] = set()
        self.stopped_at: CallSeen | None = None
        self.divergence: tuple[int | str, CallSeen | None, CallSeen | None] | None = None

    def lookup(self, key: str, kind: str, name: str, fingerprint: str | None = None) -> RecordedCall | None:
        asked = CallSeen(kind, name, fingerprint, key)
        try:
            entry = super().lookup(key, kind, name, fingerprint)
        except NonDeterminismError as exc:
            if self.divergence is None:
                recorded = self.recorded(key)
                if recorded is not None:
                    seen = CallSeen(recorded.kind, recorded.name, recorded.fingerprint, key)
                    self.divergence = (recorded.seq, seen, asked)
                else:  # failed attempts of another call
                    self.divergence = (exc.seq, CallSeen("failed attempts", exc.recorded, None, key), asked)
            raise
        except LiveCall:
            self.stopped_at = self.stopped_at or asked
            raise
        if entry is None:  # not reached (the driver's boundary check stops first), kept as a guard
            self.stopped_at = self.stopped_at or asked
            raise LiveCall(key)
        self.served.add(key)
        return entry

    async def _settle_doubt(self, key: str, kind: str, name: str, *args: Any) -> bool:
        # A step in doubt (intent recorded, no result) is settled live (its policy may call the
        # user's reconcile function): the dry replay stops before it.
        self.stopped_at = self.stopped_at or CallSeen(kind, name, None, key)
        raise LiveCall(f"{kind} {name!r} in doubt")

    def check_consumed(self) -> None:
        try:
            super().check_consumed()
        except NonDeterminismError as exc:
            if self.divergence is None:
                self.divergence = (exc.seq, self.first_unserved(), None)
            raise

    def first_unserved(self, *, besides: str | None = None) -> CallSeen | None:
        """The first recorded call of the visit not served (of another kind than ``besides``), and its sequence."""
        left = [(e.seq, k, e) for k, e in self.recorded_entries().items() if k not in self.served and e.kind != besides]
        if not left:
            return None
        seq, key, entry = min(left, key=lambda item: item[0])
        return CallSeen(entry.kind, entry.name, entry.fingerprint, key, seq)

    def recorded_entries(self) -> dict[str, RecordedCall]:
        """Every call recorded in the phase visit, by key."""
        return dict(self._driver.run.journal)


class _DryContext(Context[Any]):
    """The handler context of a dry replay: a :class:`Context` over a :class:`_DryJournal`."""

    def __init__(self, driver: RunDriver, phase: Phase) -> None:
        super().__init__(driver, phase)
        self.dry_journal = _DryJournal(driver, phase)
        self._journal = self.dry_journal


def upcast_data(workflow: Workflow[Any], run: WorkflowRun) -> list[str]:
    """What of the run's recorded data ``workflow``'s models read into something else than recorded.

    The state as the current phase was entered and each checkpoint's state (read by the
    state model), and each recorded result of a pydantic model (read by its class). Each is
    validated and dumped back: data that does not come back as it was recorded needs the
    models' upcasting (a ``mode="before"`` validator that migrates it, or a default filled in).
    Each finding names the fields dropped, added and changed. Raises :class:`ValueError`
    (pydantic's ``ValidationError``) when some data does not fit.
    """
    found = []
    model = workflow.state_model

    def check(recorded: Any, read: Any, what: str) -> None:
        if read != recorded:
            found.append(f"{what}{_changes(recorded, read)}")

    check(run.phase_state, model.model_validate(copy_json(run.phase_state)).model_dump(mode="json"),
          f"the state of phase {run.phase or workflow.initial_phase!r} ({model.__qualname__})")
    for entry in sorted(run.journal.values(), key=lambda e: e.seq):
        if entry.kind == Kind.CHECKPOINT and entry.result is not None:
            check(entry.result, model.model_validate(copy_json(entry.result)).model_dump(mode="json"),
                  f"the state of checkpoint {entry.name!r} ({model.__qualname__})")
        elif entry.result_type is not None and not entry.error:
            value = decode_value(entry.result, entry.result_type)
            what = type(value).__qualname__ if isinstance(value, BaseModel) else entry.result_type
            check(entry.result, encode_value(value)[0],
                  f"the result of {entry.kind} {entry.name!r} at sequence {entry.seq} ({what})")
    return found


def _changes(recorded: Any, read: Any) -> str:
    """How ``read`` differs from ``recorded``, field by field (for two dicts)."""
    if not isinstance(recorded, dict) or not isinstance(read, dict):
        return ""
    parts = []
    for verb, names in (("drops", [k for k in recorded if k not in read]),
                        ("adds", [k for k in read if k not in recorded]),
                        ("changes", [k for k in recorded if k in read and recorded[k] != read[k]])):
        if names:
            parts.append(f"{verb} {', '.join(map(str, names))}")
    return f": {'; '.join(parts)}" if parts else ""


def _unwrap(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (tasks of an agent run fail together)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def dry_replay(engine: Engine, run: WorkflowRun, workflow: Workflow[Any]) -> DryOutcome:
    """Replay ``run``'s current phase visit against ``workflow``, serving recorded calls and writing nothing.

    ``run`` is used as loaded and left unchanged in the store: this reads the run and runs
    the phase handler's code, nothing else (steps that are recorded do not run; the first
    that is not ends the replay).
    """
    try:
        upcast = upcast_data(workflow, run)
    except Exception as exc:  # noqa: BLE001 - the recorded data does not fit the models: a resume fails on it
        return DryOutcome("failed", error=f"the recorded data does not fit workflow {workflow.name!r} "
                          f"v{workflow.version}: {type(exc).__name__}: {exc}")
    if run.phase is None:  # started, its initial phase never entered: a resume enters it live
        return DryOutcome("live", stopped_at=CallSeen("phase", workflow.initial_phase), upcast=upcast)
    phase = workflow.phases.get(run.phase)
    if phase is None:
        return DryOutcome("diverged", error=f"the run is in phase {run.phase!r}, which workflow {workflow.name!r} "
                          f"v{workflow.version} does not define", upcast=upcast)
    driver = _DryDriver(engine, run, workflow)
    ctx = _DryContext(driver, phase)
    journal = ctx.dry_journal
    try:
        result = await run_handler(ctx, phase.handler)
        journal.check_consumed()
        if not phase.final:
            target = workflow.next_phase(phase.name, result, ctx.state)
            state_data(ctx)
            journal.stopped_at = CallSeen("phase", target)
        else:
            encode_value(result, f"the output of final phase {phase.name!r}")
            state_data(ctx)
        ended: Literal["live", "phase_end"] = "phase_end"
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise
    except BaseException as raised:  # noqa: BLE001 - a replay ends on whatever the code raises
        cause = _unwrap(raised)
        if isinstance(cause, LiveCall) and journal.stopped_at is None:  # a write outside a journaled call
            journal.stopped_at = CallSeen("write", str(cause))
        if journal.divergence is not None:
            return _diverged(journal, cause, upcast)
        if journal.stopped_at is None or not isinstance(cause, LiveCall):
            if isinstance(cause, NonDeterminismError):
                return DryOutcome("diverged", replayed=len(journal.served), sequence=cause.seq,
                                  error=str(cause), upcast=upcast)
            return DryOutcome("failed", replayed=len(journal.served), upcast=upcast,
                              error=f"{type(cause).__name__}: {cause}")
        # Gone live while the log holds calls the code did not make: a resume would run the live
        # call and fail when the phase ends. Tool calls may run side by side: a sibling not
        # looked up yet is not a divergence.
        besides = Kind.TOOL if journal.stopped_at.kind == Kind.TOOL else None
        left = journal.first_unserved(besides=besides)
        if left is not None:
            return DryOutcome(
                "diverged", replayed=len(journal.served), sequence=left.seq,
                recorded=left, asked=journal.stopped_at,
                error=f"the code went live with {journal.stopped_at.kind} {journal.stopped_at.name!r} while the "
                      f"log holds {left.kind} {left.name!r} at sequence {left.seq}, which it did not ask for",
                upcast=upcast)
        ended = "live"
    return DryOutcome(ended, replayed=len(journal.served), stopped_at=journal.stopped_at, upcast=upcast)


def _diverged(journal: _DryJournal, exc: BaseException, upcast: list[str]) -> DryOutcome:
    assert journal.divergence is not None
    sequence, recorded, asked = journal.divergence
    error = str(exc) if isinstance(exc, PhaseledgerError) else f"{type(exc).__name__}: {exc}"
    return DryOutcome("diverged", replayed=len(journal.served), sequence=sequence, recorded=recorded, asked=asked,
                      error=error, upcast=upcast)
