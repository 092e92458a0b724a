"""Read-only views of runs and their events, returned by the engine's query methods."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from phaseledger.domain.errors import CorruptEvent
from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.domain.status import DAMAGED, FINISHED, RUNNING
from phaseledger.domain.values import decode_value, json_size
from phaseledger.store.leasebook import Driving


class Usage(BaseModel):
    """Model usage of a run, summed over its phases and agents."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    """Estimated cost when the model's prices are known."""
    replayed_requests: int = 0
    """Model requests served from the log on resumes instead of being paid again."""
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def tokens_saved(self) -> int:
        """Tokens not paid twice thanks to replay."""
        return self.saved_input_tokens + self.saved_output_tokens


class InDoubt(BaseModel):
    """A step with an external effect whose intent is recorded and whose outcome is not.

    While the run's driver is alive it is a step in flight; once the driver is gone (a crash)
    or the run waits for a decision on it, the effect may or may not have happened.
    """

    key: str
    """The step's key in the phase visit (``engine.resolve(..., key=...)``)."""
    name: str
    effect_key: str
    """The idempotency key the effect runs with: look it up in the external system."""
    policy: str
    """What is done with it when the run resumes: retry, fail, reconcile or ask."""
    since: datetime
    """When its intent was recorded."""
    fingerprint: str | None = None
    """A digest of the step's arguments."""


class Run(BaseModel):
    """A run as it stands in the log: status, phase, state, output, error and usage."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    run_id: str
    workflow: str
    workflow_version: int
    status: str
    """running, waiting, sleeping, retrying, completed, failed or cancelled; ``damaged`` in
    listings for a run a stored row of which cannot be read (``error`` says which and why)."""
    phase: str | None
    state: Any
    """The pydantic state (as of the last phase entry, or the final state)."""
    output: Any = None
    error: dict[str, Any] | None = None
    version: int
    """The number of events in the run's log."""
    usage: Usage = Field(default_factory=Usage)
    attempts: dict[str, int] = Field(default_factory=dict)
    """How many times each phase was entered."""
    steps: int = 0
    """Journaled calls recorded."""
    replayed_steps: int = 0
    suspended: dict[str, Any] | None = None
    parent: dict[str, Any] | None = None
    created_on: datetime
    updated_on: datetime
    finished_on: datetime | None = None
    driving: Driving | None = None
    """Who holds the run's lease and how fresh its heartbeat is (``engine.get`` and ``runs``
    fill it in for unfinished runs; None when no driver holds it)."""
    in_doubt: list[InDoubt] = Field(default_factory=list)
    """The effect steps of the current phase visit with an intent and no outcome (see :class:`InDoubt`)."""

    @property
    def awaits_effect_decision(self) -> bool:
        """The run waits for a person's decision on an effect in doubt (``engine.resolve``)."""
        return (self.suspended or {}).get("reason") == "effect" and not self.finished

    @property
    def driver_status(self) -> str | None:
        """For an unfinished run: ``running on host:pid, heartbeat 2 s ago``, ``orphaned: ...``
        (its driver stopped renewing or its process is gone), ``not driven`` (none holds it)."""
        if self.finished:
            return None
        if self.driving is not None:
            return self.driving.describe()
        return "orphaned: no driver holds it" if self.status == RUNNING else "not driven (suspended)"

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled."""
        return self.status in FINISHED


def run_view(run: WorkflowRun, state_model: type[BaseModel] | None) -> Run:
    """Build the :class:`Run` view of an aggregate (state as the model when it is known)."""
    state: Any = dict(run.phase_state)
    if state_model is not None:
        try:
            state = state_model.model_validate(state)
        except Exception:  # an old version's state that the current model rejects stays a dict
            state = dict(run.phase_state)
    usage = Usage(
        requests=run.usage.get("requests", 0),
        input_tokens=run.usage.get("input_tokens", 0),
        output_tokens=run.usage.get("output_tokens", 0),
        cost=run.usage.get("cost"),
        replayed_requests=run.saved_usage.get("requests", 0),
        saved_input_tokens=run.saved_usage.get("input_tokens", 0),
        saved_output_tokens=run.saved_usage.get("output_tokens", 0),
    )
    output = run.output
    if run.output_type is not None:
        try:
            output = decode_value(run.output, run.output_type)
        except Exception:
            output = run.output
    return Run(
        run_id=run.id, workflow=run.workflow, workflow_version=run.workflow_version, status=run.status,
        phase=run.phase, state=state, output=output, error=run.error, version=run.version, usage=usage,
        attempts=dict(run.attempts), steps=run.steps, replayed_steps=run.replayed_steps,
        suspended=run.suspended, parent=run.parent, created_on=run.created_on, updated_on=run.modified_on,
        finished_on=run.finished_on, in_doubt=in_doubt(run),
    )


def in_doubt(run: WorkflowRun) -> list[InDoubt]:
    """The effect steps of the run's current phase visit with an intent and no outcome."""
    intents = getattr(run, "intents", None) or {}
    return [InDoubt(key=key, name=i.name, effect_key=i.effect_key, policy=i.policy, since=i.since,
                    fingerprint=i.fingerprint) for key, i in intents.items()]


class RecordedEvent(BaseModel):
    """One event of a run's log, as plain data."""

    version: int
    type: str
    timestamp: datetime
    data: dict[str, Any]
    size: int
    """Bytes of the event's JSON payload."""
    tokens: int = 0
    """Model tokens (input plus output) the recorded call used (``StepRecorded`` only)."""
    cost: float | None = None
    """Estimated cost of the recorded call, when its model's prices are known."""
    duration: float | None = None
    """Seconds the recorded call took when it ran live (``StepRecorded`` only)."""




def damaged_view(error: CorruptEvent, before: WorkflowRun | None, state_model: type[BaseModel] | None) -> Run:
    """The :class:`Run` view of a damaged run: status ``damaged``, the :class:`CorruptEvent` as
    its error, and what is known from ``before`` (the run just before the unreadable row)."""
    described = {"type": type(error).__name__, "message": str(error), "version": error.version,
                 "reason": error.reason, "phaseledger": True}
    if before is not None:
        return run_view(before, state_model).model_copy(
            update={"status": DAMAGED, "error": described, "suspended": None, "finished_on": None}
        )
    unknown = datetime(1970, 1, 1, tzinfo=UTC)
    return Run(run_id=error.run_id, workflow="?", workflow_version=0, status=DAMAGED, phase=None, state=None,
               error=described, version=0, created_on=unknown, updated_on=unknown)


def event_view(event: WorkflowRun.Event) -> RecordedEvent:
    """Turn a stored run event into a :class:`RecordedEvent`."""
    data = event_fields(event)
    plain = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in data.items()}
    usage = data.get("usage") or {}
    tokens = int(usage.get("input_tokens", 0) or 0) + int(usage.get("output_tokens", 0) or 0)
    cost = usage.get("cost")
    return RecordedEvent(
        version=event.originator_version, type=type(event).__name__, timestamp=event.timestamp,
        data=plain, size=json_size(plain), tokens=tokens, cost=float(cost) if cost is not None else None,
        duration=data.get("duration") if isinstance(event, WorkflowRun.StepRecorded) else None,
    )
