"""The event-sourced workflow run: one eventsourcing aggregate per run.

Events record outcomes only, so applying one assigns fields: no I/O, no clock, no user
code and no state machine, which keeps replay cheap and safe. The aggregate keeps just
what resuming needs: the state recorded when the current phase was entered and the
journal of the calls recorded since (keyed by the call's key), plus counters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Self

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
from phaseledger.domain.journal import FailedAttempt, Kind, PendingSignal, RecordedCall, plain_entries, typed_entries
from phaseledger.domain.usage import add_usage

RUNNING, WAITING, SLEEPING, RETRYING = "running", "waiting", "sleeping", "retrying"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
SUSPENDED = frozenset({WAITING, SLEEPING, RETRYING})
STATUSES = (RUNNING, WAITING, SLEEPING, RETRYING, COMPLETED, FAILED, CANCELLED)
DAMAGED = "damaged"
"""Not a status a run takes: what listings and the run index show for a run a stored row of
which cannot be read (see :class:`~phaseledger.CorruptEvent`)."""

STEP_KINDS = ("step", "model", "tool", "signal", "timer", "clock", "random", "checkpoint", "agent")


class WorkflowRun(BaseAggregate[str]):
    """The log of one workflow run, folded into what resuming and reporting need."""

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
            run.failures = {}
            run.timers = {}
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
            run.failures = {}
            run.timers = {}

    class StepRecorded(Event):
        """A journaled call finished: its ``result`` is served on replay instead of running it.

        ``kind`` is step, model, tool, signal, timer, clock, random, checkpoint or agent;
        ``key`` is how replay finds it; ``error`` holds a recorded exception that replay
        raises again (handled failures of agent units, signal timeouts).
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

        def apply(self, run: WorkflowRun) -> None:
            run.journal[self.key] = RecordedCall.from_dict({  # the fast way: every call of a visit passes here
                "seq": self.seq,
                "name": self.name,
                "kind": self.kind,
                "result": self.result,
                "result_type": self.result_type,
                "fingerprint": self.fingerprint,
                "error": self.error,
                "usage": self.usage,
                "detail": self.detail,
            })
            run.next_seq = max(run.next_seq, self.seq + 1)
            run.steps += 1
            run.failures.pop(self.key, None)
            run.timers.pop(self.key, None)
            if self.usage:
                add_usage(run.usage, self.usage)
            if self.kind == Kind.SIGNAL and self.detail and self.detail.get("signal_id"):
                run.inbox = [s for s in run.inbox if s.signal_id != self.detail["signal_id"]]

    class StepAttemptFailed(Event):
        """An attempt of a journaled call failed; ``retry_at`` is when the next may start."""

        seq: int
        key: str
        name: str
        error_type: str
        message: str
        retryable: bool
        attempt: int
        retry_at: datetime | None
        started_at: datetime | None = None
        """When the call's first attempt started (its ``total_timeout`` counts from then)."""

        def apply(self, run: WorkflowRun) -> None:
            run.failures.setdefault(self.key, []).append(FailedAttempt(
                self.name, self.attempt, self.retry_at, self.error_type, self.message, self.retryable, self.started_at
            ))
            run.next_seq = max(run.next_seq, self.seq + 1)

    class SignalReceived(Event):
        """A signal arrived; it waits in the run's inbox until ``wait_for_signal`` takes it."""

        signal_id: str
        name: str
        payload: Any

        def apply(self, run: WorkflowRun) -> None:
            run.inbox.append(PendingSignal(self.signal_id, self.name, self.payload))
            run.__dict__.setdefault("signal_ids", []).append(self.signal_id)  # every id ever received
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

        def apply(self, run: WorkflowRun) -> None:
            run.journal[self.key] = RecordedCall(self.seq, self.label, Kind.CHECKPOINT, self.state, None, None, None,
                                                 None, None)
            run.next_seq = max(run.next_seq, self.seq + 1)
            run.checkpoints += 1

    class RunSuspended(Event):
        """The run stopped until a signal (``signal``), a time (``until``) or both."""

        reason: str
        until: datetime | None
        signal: str | None

        def apply(self, run: WorkflowRun) -> None:
            run.status = {"signal": WAITING, "sleep": SLEEPING, "retry": RETRYING}.get(self.reason, WAITING)
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
            for entry in run.journal.values():
                run.replayed_steps += 1
                add_usage(run.saved_usage, entry.usage)

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
        """The run's folded state at a version, so resuming reads only the events after it."""

        originator_id: str
        originator_version: int
        timestamp: datetime
        topic: str
        state: dict[str, Any]

        @classmethod
        def take(cls, aggregate: MutableOrImmutableAggregate[str]) -> Self:
            """The snapshot of ``aggregate``, its journal entries stored as plain dicts."""
            snapshot = super().take(aggregate)
            plain_entries(snapshot.state)
            return snapshot

        def mutate(self, _: None) -> BaseAggregate[str]:
            """The run this snapshot holds, its journal entries typed again."""
            run = super().mutate(_)
            typed_entries(run.__dict__)
            return run

    # Attributes, all set by RunStarted.apply (not annotated: eventsourcing would turn
    # annotations into constructor fields): workflow, workflow_version, input, parent,
    # status, phase, phase_state, phase_entered_version, attempts {phase: entries},
    # journal {key: entry} and failures {key: [attempts]} and timers {key: wake_at} of the
    # current phase visit, next_seq, inbox (unconsumed signals), signal_ids (every signal
    # id received), suspended, output, output_type, error, usage, saved_usage (usage served
    # from the log on resumes), replayed_steps, steps, checkpoints, finished_on.

    EVENT_NAMES: ClassVar[tuple[str, ...]] = (
        "RunStarted", "PhaseEntered", "StepRecorded", "StepAttemptFailed", "SignalReceived",
        "TimerStarted", "CheckpointSaved", "RunSuspended", "RunResumed", "RunCompleted",
        "RunFailed", "RunCancelled",
    )

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in FINISHED


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
