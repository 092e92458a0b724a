"""The event-sourced workflow run: one eventsourcing aggregate per run.

Events record outcomes only, so applying one assigns fields: no I/O, no clock, no user
code and no state machine, which keeps replay cheap and safe. The aggregate keeps just
what resuming needs: the state recorded when the current phase was entered and the
journal of the calls recorded since (keyed by the call's key), plus counters.

The log is a contract: every event and snapshot a release wrote must load in every later
one. When an event's fields or the run's state change, the class's ``class_version`` goes
up and an ``upcast_vN_vN+1`` static method turns what older releases stored into the new
shape; eventsourcing's mapper applies it to every row read (events and snapshots alike).
Rows stored without a ``class_version`` are version 1; the store writes events compact
(:mod:`phaseledger.store.compact`), so an upcaster may find a field at its default absent
from a row. ``tests/golden/`` holds logs written
by past releases (this one included) that the tests load and resume on every store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self, cast

from eventsourcing.domain import (
    BaseAggregate,
    CanCreateTimestamp,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    MetaDomainEvent,
    MutableOrImmutableAggregate,
)

from phaseledger.domain.errors import CorruptEvent
from phaseledger.domain.journal import (
    EffectIntent,
    FailedAttempt,
    Kind,
    PendingSignal,
    RecordedCall,
    plain_entries,
    typed_entries,
)
from phaseledger.domain.status import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    RUNNING,
    WAITING,
    RunStatus,
    suspended_status,
)
from phaseledger.domain.usage import add_usage

_new_tuple = tuple.__new__


class WorkflowRun(BaseAggregate[str]):
    """The log of one workflow run, folded into what resuming and reporting need.

    Its state is set by :class:`RunStarted` and changed by the other events' ``apply``.
    """

    class_version = 4
    """2: the state holds ``signal_ids``, ``phase_entered_on`` and each failed attempt's
    ``started_at`` (see :meth:`upcast_v1_v2`); 3: ``intents`` (see :meth:`upcast_v2_v3`);
    4: ``visit_calls``, ``visit_usage`` and ``journal_elided`` (see :meth:`upcast_v3_v4`)."""

    if TYPE_CHECKING:  # declared for type checkers only: eventsourcing turns annotations into constructor fields
        workflow: str
        workflow_version: int
        input: dict[str, Any]
        """What the run was started with."""
        parent: dict[str, Any] | None
        """The run and version a fork branched from (None otherwise)."""
        status: RunStatus
        phase: str | None
        """The current phase (None before the first is entered)."""
        phase_state: dict[str, Any]
        """The pydantic state as it stood when the current phase was entered (the final state once completed)."""
        phase_entered_version: int
        phase_entered_on: datetime | None
        """When the current phase was entered; None in a run loaded from a snapshot older than the field."""
        attempts: dict[str, int]
        """How many times each phase was entered."""
        journal: dict[str, RecordedCall]
        """The calls recorded in the current phase visit, by key: replay serves them. Those
        recorded up to :attr:`journal_elided` are missing when that is set."""
        journal_elided: int | None
        """Set in a run loaded from a snapshot without its journal (see :class:`Snapshot`): the
        entries recorded up to this version are in the log, not in :attr:`journal`, and the
        store reads them back when the whole run is loaded. None: the journal is complete."""
        visit_calls: int
        """How many calls the current phase visit has recorded (the size of the whole journal)."""
        visit_usage: dict[str, Any]
        """The usage of the calls the current phase visit has recorded (of the whole journal)."""
        failures: dict[str, list[FailedAttempt]]
        """The failed attempts of the current phase visit's calls not recorded yet, by key."""
        timers: dict[str, datetime]
        """When each durable timer of the current phase visit may continue, by key."""
        intents: dict[str, EffectIntent]
        """The recorded intents of effect steps of the current phase visit whose attempt has no outcome yet, by key."""
        next_seq: int
        inbox: list[PendingSignal]
        """The signals received and not taken yet."""
        signal_ids: list[str]
        """The id of every signal received (a signal sent again with one of them is delivered once)."""
        suspended: dict[str, Any] | None
        """Why the run waits (reason, until, signal); None while it runs or once finished."""
        output: Any
        output_type: str | None
        error: dict[str, Any] | None
        """Why the run failed or was cancelled (type, message, traceback)."""
        usage: dict[str, Any]
        """Model requests, tokens and cost of every call recorded."""
        saved_usage: dict[str, Any]
        """The part of :attr:`usage` served from the log on resumes instead of being spent again."""
        replayed_steps: int
        steps: int
        checkpoints: int
        finished_on: datetime | None

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Fill in what a snapshot stored without a class version may lack.

        Snapshots of the first releases lack ``signal_ids`` (the ids still in the inbox or
        in the journal are all that is known of them), ``phase_entered_on`` (unknown: None)
        and the ``started_at`` of failed attempts (unknown: None).
        """
        if "signal_ids" not in state:
            taken = [e["detail"]["signal_id"] for e in state["journal"].values()
                     if e["kind"] == "signal" and (e.get("detail") or {}).get("signal_id")]
            state["signal_ids"] = taken + [s["signal_id"] for s in state["inbox"]]
        state.setdefault("phase_entered_on", None)
        for attempts in state["failures"].values():
            for attempt in attempts:
                attempt.setdefault("started_at", None)

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """Snapshots of releases before effect steps hold no ``intents``: none."""
        state.setdefault("intents", {})

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        """Snapshots of releases before journal-less snapshots hold the whole journal: count it."""
        if "visit_calls" not in state:
            journal = state["journal"].values()
            state["visit_calls"] = len(journal)
            usage: dict[str, Any] = {}
            for entry in journal:
                add_usage(usage, entry.get("usage"))
            state["visit_usage"] = usage
        state.setdefault("journal_elided", None)

    class Event(CanMutateAggregate[str], CanCreateTimestamp, metaclass=MetaDomainEvent):
        """Base class of every run event (a frozen dataclass; run ids are strings)."""

        originator_id: str
        originator_version: int
        timestamp: datetime

    class RunStarted(CanInitAggregate[str], Event):
        """A run of ``workflow`` at ``workflow_version`` started with ``input``.

        ``parent`` names the run and version a fork branched from (None otherwise).
        """

        originator_topic: str
        workflow: str
        workflow_version: int
        input: dict[str, Any]
        parent: dict[str, Any] | None

        def apply(self, run: WorkflowRun) -> None:
            run.workflow = self.workflow
            run.workflow_version = self.workflow_version
            run.input = self.input
            run.parent = self.parent
            run.status = RUNNING
            run.phase = None
            run.phase_state = dict(self.input)
            run.phase_entered_version = self.originator_version
            run.phase_entered_on = self.timestamp
            run.attempts = {}
            run.journal = {}
            run.journal_elided = None
            run.visit_calls = 0
            run.visit_usage = {}
            run.failures = {}
            run.timers = {}
            run.intents = {}
            run.next_seq = 0
            run.inbox = []
            run.signal_ids = []
            run.suspended = None
            run.output = None
            run.output_type = None
            run.error = None
            run.usage = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
            run.saved_usage = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
            run.replayed_steps = 0
            run.steps = 0
            run.checkpoints = 0
            run.finished_on = None

    class PhaseEntered(Event):
        """The run entered ``phase``; ``state`` is the pydantic state as it stood then."""

        phase: str
        from_phase: str | None
        reason: str
        attempt: int
        state: dict[str, Any]

        def apply(self, run: WorkflowRun) -> None:
            run.phase = self.phase
            run.phase_state = self.state
            run.phase_entered_version = self.originator_version
            run.phase_entered_on = self.timestamp
            run.attempts[self.phase] = self.attempt
            run.journal = {}
            run.journal_elided = None
            run.visit_calls = 0
            run.visit_usage = {}
            run.failures = {}
            run.timers = {}
            run.intents = {}

    class StepRecorded(Event):
        """A journaled call finished: its ``result`` is served on replay instead of running it.

        ``kind`` is step, model, tool, signal, timer, clock, random, checkpoint or agent;
        ``key`` is how replay finds it; ``error`` holds a recorded exception that replay
        raises again (handled failures of agent units, signal timeouts). A ``signal_id`` in
        ``detail`` is a signal the call took (a signal wait, a decision on an effect in doubt).
        """

        seq: int
        key: str
        name: str
        kind: str
        result: Any
        result_type: str | None
        fingerprint: str | None
        usage: dict[str, Any] | None
        duration: float
        error: dict[str, Any] | None
        detail: dict[str, Any] | None

        def entry(self) -> RecordedCall:
            """The journal entry this event records."""
            # tuple.__new__ skips the named tuple's Python-level __new__: every call of a visit passes here
            return _new_tuple(RecordedCall, (
                self.seq, self.name, self.kind, self.result, self.result_type, self.fingerprint, self.error,
                self.usage, self.detail,
            ))

        def apply(self, run: WorkflowRun) -> None:
            run.journal[self.key] = self.entry()
            run.visit_calls += 1
            run.next_seq = max(run.next_seq, self.seq + 1)
            run.steps += 1
            run.failures.pop(self.key, None)
            run.timers.pop(self.key, None)
            if run.intents:
                run.intents.pop(self.key, None)
            if self.usage:
                add_usage(run.usage, self.usage)
                add_usage(run.visit_usage, self.usage)
            if self.detail and self.detail.get("signal_id"):
                run.inbox = [s for s in run.inbox if s.signal_id != self.detail["signal_id"]]

    class StepAttemptFailed(Event):
        """An attempt of a journaled call failed; ``retry_at`` is when the next may start."""

        class_version = 2
        """2: ``started_at`` (see :meth:`upcast_v1_v2`)."""

        seq: int
        key: str
        name: str
        error_type: str
        message: str
        retryable: bool
        attempt: int
        retry_at: datetime | None
        started_at: datetime | None
        """When the call's first attempt started (its ``total_timeout`` counts from then); None: unknown."""

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Events of the first releases lack ``started_at``: unknown, None."""
            state.setdefault("started_at", None)

        def apply(self, run: WorkflowRun) -> None:
            run.failures.setdefault(self.key, []).append(FailedAttempt(
                self.name, self.attempt, self.retry_at, self.error_type, self.message, self.retryable, self.started_at
            ))
            run.next_seq = max(run.next_seq, self.seq + 1)
            if run.intents:
                run.intents.pop(self.key, None)  # the attempt's outcome is known: it failed

    class EffectIntended(Event):
        """A step with an external effect is about to run an attempt under ``effect_key``.

        Recorded (and committed) before the attempt; its result or failure settles it. A
        ``signal_id`` is the decision signal taken that let it run again (``effect: ask``).
        """

        seq: int
        key: str
        name: str
        effect_key: str
        fingerprint: str | None
        policy: str
        signal_id: str | None

        def apply(self, run: WorkflowRun) -> None:
            run.intents[self.key] = EffectIntent(self.name, self.effect_key, self.fingerprint, self.policy,
                                                 self.timestamp)
            run.next_seq = max(run.next_seq, self.seq + 1)
            if self.signal_id:
                run.inbox = [s for s in run.inbox if s.signal_id != self.signal_id]

    class SignalReceived(Event):
        """A signal arrived; it waits in the run's inbox until ``wait_for_signal`` takes it."""

        signal_id: str
        name: str
        payload: Any

        def apply(self, run: WorkflowRun) -> None:
            run.inbox.append(PendingSignal(self.signal_id, self.name, self.payload))
            run.signal_ids.append(self.signal_id)
            if run.status == WAITING and run.suspended and run.suspended.get("signal") == self.name:
                run.status = RUNNING
                run.suspended = None

    class TimerStarted(Event):
        """A durable timer: the call with this key may continue at ``wake_at``."""

        seq: int
        key: str
        wake_at: datetime

        def apply(self, run: WorkflowRun) -> None:
            run.timers[self.key] = self.wake_at
            run.next_seq = max(run.next_seq, self.seq + 1)

    class CheckpointSaved(Event):
        """The state recorded explicitly under a label (``ctx.checkpoint``)."""

        seq: int
        key: str
        label: str
        state: dict[str, Any]

        def entry(self) -> RecordedCall:
            """The journal entry this event records."""
            return RecordedCall(self.seq, self.label, Kind.CHECKPOINT, self.state, None, None, None, None, None)

        def apply(self, run: WorkflowRun) -> None:
            run.journal[self.key] = self.entry()
            run.visit_calls += 1
            run.next_seq = max(run.next_seq, self.seq + 1)
            run.checkpoints += 1

    class RunSuspended(Event):
        """The run stopped until a signal (``signal``), a time (``until``) or both."""

        reason: str
        until: datetime | None
        signal: str | None

        def apply(self, run: WorkflowRun) -> None:
            run.status = suspended_status(self.reason)
            run.suspended = {"reason": self.reason, "until": self.until, "signal": self.signal}

    class RunResumed(Event):
        """An engine took the run up again (after a crash, a wake-up, or ``engine.retry``)."""

        reason: str

        def apply(self, run: WorkflowRun) -> None:
            run.status = RUNNING
            run.suspended = None
            run.error = None
            run.finished_on = None
            if self.reason == "retry":
                run.failures = {}
                run.intents = {}  # retrying is the decision to run effect steps in doubt again
            run.replayed_steps += run.visit_calls
            add_usage(run.saved_usage, run.visit_usage)

    class RunCompleted(Event):
        """The run reached a final phase; ``output`` is what its handler returned."""

        output: Any
        output_type: str | None
        state: dict[str, Any]

        def apply(self, run: WorkflowRun) -> None:
            run.status = COMPLETED
            run.output = self.output
            run.output_type = self.output_type
            run.phase_state = self.state
            run.suspended = None
            run.finished_on = self.timestamp

    class RunFailed(Event):
        """The run failed: ``error`` holds the type, message and a short traceback."""

        error: dict[str, Any]

        def apply(self, run: WorkflowRun) -> None:
            run.status = FAILED
            run.error = self.error
            run.suspended = None
            run.finished_on = self.timestamp

    class RunCancelled(Event):
        """The run was cancelled and never resumes."""

        reason: str

        def apply(self, run: WorkflowRun) -> None:
            run.status = CANCELLED
            run.error = {"type": "Cancelled", "message": self.reason, "traceback": ""}
            run.suspended = None
            run.finished_on = self.timestamp

    class Snapshot(CanSnapshotAggregate[str], CanCreateTimestamp, metaclass=MetaDomainEvent):
        """The run's folded state at a version, so loading it reads only the events after it.

        A snapshot leaves out the journal of the phase visit in progress unless asked for it:
        the entries are events of the log already, so a snapshot stays as small as the rest
        of the run's state however long the visit, and one can be taken every N events. A
        run loaded from it has :attr:`WorkflowRun.journal_elided` set, which is all a view of
        the run needs; the store reads the entries back from the log before a driver replays
        the visit (see :meth:`phaseledger.Store.load`).
        """

        originator_id: str
        originator_version: int
        timestamp: datetime
        topic: str
        state: dict[str, Any]

        @classmethod
        def take(cls, aggregate: MutableOrImmutableAggregate[str], *, journal: bool = False) -> Self:
            """The snapshot of ``aggregate``, with its journal entries as plain dicts when ``journal``
            (the run's journal must then be complete), else without them."""
            snapshot = super().take(aggregate)
            state = snapshot.state
            if journal:
                if state["journal_elided"] is not None:
                    raise ValueError(f"run {snapshot.originator_id!r} was loaded without its journal: "
                                     "load it whole to take a snapshot with the journal")
            elif state["journal"] or state["journal_elided"] is not None:
                state["journal"] = {}
                state["journal_elided"] = snapshot.originator_version
            plain_entries(state)
            return snapshot

        def mutate(self, _: None) -> BaseAggregate[str]:
            """The run this snapshot holds, its journal entries typed again."""
            run = super().mutate(_)
            typed_entries(run.__dict__)
            return run


    @classmethod
    def begin(cls, run_id: str, **fields: Any) -> WorkflowRun:
        """A new run with its ``RunStarted`` event (``fields`` are that event's), not saved yet."""
        return cls._create(cls.RunStarted, id=run_id, **fields)

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in FINISHED


_BASE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


def event_fields(event: WorkflowRun.Event) -> dict[str, Any]:
    """What an event records, without the fields every event has (id, version, timestamp, topic)."""
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(cast(Any, event)) if f.name not in _BASE_FIELDS}


def restore_journal(run: WorkflowRun, entries: Iterable[tuple[str, RecordedCall]],
                    base: Mapping[str, RecordedCall] | None = None) -> None:
    """Put back the journal entries of a run loaded from a snapshot without them (in place).

    ``entries`` are the keys and entries of the calls recorded in the run's phase visit up to
    :attr:`~WorkflowRun.journal_elided`, in order; ``base``, the entries recorded before the
    first of them when the log no longer holds those (a compacted run's full snapshot). The
    entries recorded after the snapshot, already in the run, come last.
    """
    restored = dict(base or {})
    restored.update(entries)
    restored.update(run.journal)
    run.journal = restored
    run.journal_elided = None


def project_run(run: WorkflowRun | None, events: Any) -> WorkflowRun | None:
    """Fold events into a run without eventsourcing's per-event Protocol check (2-3x faster).

    An event (or snapshot) whose data does not fit the run raises :class:`CorruptEvent`.
    """
    for event in events:
        try:
            run = event.mutate(run)
        except Exception as exc:  # applying only assigns fields: a failure means the stored data
            raise CorruptEvent(str(event.originator_id), event.originator_version,
                               f"it does not apply to the run ({type(exc).__name__}: {exc})") from exc
    return run
