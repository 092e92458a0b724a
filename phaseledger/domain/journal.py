"""What a run keeps of its current phase visit: recorded calls, failed attempts, pending signals.

Each is an immutable named tuple built by an event's ``apply`` (see
:mod:`phaseledger.domain.run`) and read by attribute. Snapshots store them as the plain
dicts they have always been stored as (:func:`plain_entries` when a snapshot is taken,
:func:`typed_entries` when one is loaded), so the stored format does not depend on these
classes; a recorded call's fields at their default (a kind of ``step``, None) are left out of
its dict, which earlier releases wrote in full, and read back at it.

A run holds one entry per call of its current phase visit, and folding a long visit builds
thousands: a named tuple is the cheapest typed record to build (cheaper than the plain dict
it replaced), which keeps replay as fast as it was.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, NamedTuple

from phaseledger.domain.errors import CircuitOpen


class Kind:
    """The kinds of journaled calls (``StepRecorded.kind``, :attr:`RecordedCall.kind`)."""

    STEP: Final = "step"
    """``ctx.step``."""
    MODEL: Final = "model"
    """An agent's model request."""
    TOOL: Final = "tool"
    """An agent's tool call, argument validation or tool discovery."""
    AGENT: Final = "agent"
    """An agent's event delivery or capability operation."""
    SIGNAL: Final = "signal"
    """``ctx.wait_for_signal``."""
    TIMER: Final = "timer"
    """``ctx.sleep``."""
    CLOCK: Final = "clock"
    """``ctx.now`` and an agent run's start time."""
    RANDOM: Final = "random"
    """``ctx.uuid`` and ``ctx.random``."""
    CHECKPOINT: Final = "checkpoint"
    """``ctx.checkpoint`` (``CheckpointSaved``)."""
    ARTIFACT: Final = "artifact"
    """``ctx.artifact``: a markdown or table document a phase publishes."""


class RecordedCall(NamedTuple):
    """A call recorded in the current phase visit (``StepRecorded``, ``CheckpointSaved``): replay serves it."""

    seq: int
    """Its position in the phase visit's calls (``NonDeterminismError.seq``)."""
    name: str
    kind: str = Kind.STEP
    """One of :class:`Kind`."""
    result: Any = None
    """The result as JSON (a model's fields when ``result_type`` names a model; a checkpoint's state)."""
    result_type: str | None = None
    """The topic of the result's pydantic model, or None for plain JSON."""
    fingerprint: str | None = None
    """A digest of the call's inputs, checked on replay (None: not checked)."""
    error: dict[str, Any] | None = None
    """A recorded failure that replay raises again (see :func:`~phaseledger.domain.recorded_errors.rebuild_error`)."""
    usage: dict[str, Any] | None = None
    """Model requests, tokens and cost of the call."""
    detail: dict[str, Any] | None = None
    """What else replay needs (the id of a signal taken, usage shared with a calling agent run)."""


class FailedAttempt(NamedTuple):
    """A failed attempt of a call not recorded yet (``StepAttemptFailed``)."""

    name: str
    attempt: int
    """The attempt's number (1 the first time; a refusal keeps the number of the attempt it delayed)."""
    retry_at: datetime | None
    """When the next attempt may start; None when this one was final."""
    error_type: str
    message: str
    retryable: bool
    started_at: datetime | None
    """When the call's first attempt started (None in logs older than the field)."""

    @property
    def refused(self) -> bool:
        """Refused by an open circuit breaker: the call never ran, so it used up no attempt."""
        return self.error_type == CircuitOpen.__name__

    @property
    def next_attempt(self) -> int:
        """The number of the attempt that follows this one."""
        return self.attempt if self.refused else self.attempt + 1


class EffectIntent(NamedTuple):
    """The recorded intent of a step with an external effect whose attempt has no outcome yet (``EffectIntended``).

    While its driver runs it is a step in flight; found by a resumed run it is *in doubt*.
    """

    name: str
    effect_key: str
    """The idempotency key the effect runs with."""
    fingerprint: str | None
    """A digest of the step's arguments (None: not plain data)."""
    policy: str
    """What is done when it is in doubt (:data:`~phaseledger.domain.effects.InDoubtPolicy`)."""
    since: datetime
    """When the intent was recorded."""


class PendingSignal(NamedTuple):
    """A signal received and not taken yet (``SignalReceived``): it waits in the run's inbox."""

    signal_id: str
    name: str
    payload: Any


_CALL_FIELDS = RecordedCall._fields
_MISSING = object()
_CALL_DEFAULTS = [RecordedCall._field_defaults.get(name, _MISSING) for name in _CALL_FIELDS]
"""The default of each field of a recorded call (left out of its plain dict at it), in order."""


def _plain_call(entry: RecordedCall) -> dict[str, Any]:
    return {name: value for name, value, default in zip(_CALL_FIELDS, entry, _CALL_DEFAULTS, strict=True)
            if default is _MISSING or (value is not default and value != default)}


def plain_entries(state: dict[str, Any]) -> None:
    """Turn the typed ``journal``, ``failures``, ``intents`` and ``inbox`` of a run's state into plain dicts (in place).

    A recorded call's fields at their default are left out (:func:`typed_entries` restores them).
    """
    state["journal"] = {key: _plain_call(entry) for key, entry in state["journal"].items()}
    state["intents"] = {key: intent._asdict() for key, intent in state["intents"].items()}
    state["failures"] = {key: [a._asdict() for a in attempts] for key, attempts in state["failures"].items()}
    state["inbox"] = [signal._asdict() for signal in state["inbox"]]


def typed_entries(state: dict[str, Any]) -> None:
    """Turn the plain ``journal``, ``failures``, ``intents`` and ``inbox`` of a stored run state into typed entries (in place)."""
    state["journal"] = {key: RecordedCall(**entry) for key, entry in state["journal"].items()}
    state["intents"] = {key: EffectIntent(**intent) for key, intent in state["intents"].items()}
    state["failures"] = {
        key: [FailedAttempt(**{**attempt, "started_at": attempt.get("started_at")}) for attempt in attempts]
        for key, attempts in state["failures"].items()  # ``started_at``: absent from the first releases' snapshots
    }
    state["inbox"] = [PendingSignal(**signal) for signal in state["inbox"]]
