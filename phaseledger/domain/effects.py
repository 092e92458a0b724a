"""Steps with external effects: what a step declares, and what is done when one is in doubt.

A step declared with an :class:`Effect` (``ctx.step(..., effect=Effect(...))``, or a
tool's ``{"phaseledger": {"effect": Effect(...)}}`` metadata) records its intent (name,
idempotency key, a fingerprint of its arguments) durably before each attempt runs. The
attempt's outcome (its result, or its failure) settles the intent. An intent found
unsettled when a run resumes means the process died while the effect ran: it is *in doubt*
(it may or may not have happened), and the effect's policy decides what is done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from phaseledger.domain.errors import InvalidInput

InDoubtPolicy = Literal["retry", "fail", "reconcile", "ask"]
"""What is done with an effect in doubt: ``retry`` runs it again with the same key (at least
once), ``fail`` raises :class:`~phaseledger.EffectInDoubt`, ``reconcile`` asks the effect's
reconcile function whether it happened, ``ask`` suspends the run until a person decides."""

POLICIES: Final[tuple[InDoubtPolicy, ...]] = get_args(InDoubtPolicy)

DECISION_PREFIX: Final = "effect:"
"""The name of the signal that decides an effect in doubt is ``effect:<journal key>``."""


class _NotHappened:
    """The type of :data:`NOT_HAPPENED` (one instance)."""

    _instance: _NotHappened | None = None

    def __new__(cls) -> _NotHappened:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_HAPPENED"


NOT_HAPPENED: Final = _NotHappened()
"""What a reconcile function returns when the effect did not happen: the step then runs again."""


@dataclass(frozen=True)
class Effect:
    """Declares a step (or an agent's tool) as having an external effect.

    Args:
        on_doubt: What is done when the step is found in doubt after a crash (see
            :data:`InDoubtPolicy`). Default: ``reconcile`` when ``reconcile`` is given,
            else ``retry``.
        reconcile: ``reconcile(key)`` (sync or async) is called with the effect's
            idempotency key when the step is in doubt: it returns the step's result when
            the effect happened (recorded as if the step had returned it), or
            :data:`NOT_HAPPENED`, and the step runs again with the same key.
        key: The idempotency key to use instead of the step's own (``run_id:visit.n``).
            It must be the same on every replay: derive it from the run's state, never
            from the clock or random values.

    The step function reads its key with :func:`phaseledger.idempotency_key` (or
    ``ctx.idempotency_key`` inside the step); a reconcile function gets it as its argument.
    """

    on_doubt: InDoubtPolicy | None = None
    reconcile: Callable[[str], Any] | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.on_doubt is not None and self.on_doubt not in POLICIES:
            raise InvalidInput(f"Effect(on_doubt={self.on_doubt!r}) is not a policy: use one of "
                               f"{', '.join(repr(p) for p in POLICIES)}")
        if self.policy == "reconcile" and self.reconcile is None:
            raise InvalidInput("Effect(on_doubt='reconcile') needs reconcile=: a function of the idempotency key "
                               "that returns the step's result, or NOT_HAPPENED")
        if self.reconcile is not None and self.policy != "reconcile":
            raise InvalidInput(f"Effect(reconcile=...) with on_doubt={self.on_doubt!r}: the function would never be "
                               "called; leave on_doubt out (or set it to 'reconcile')")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise InvalidInput(f"Effect(key=...) takes a non-empty string, got {self.key!r}")

    @property
    def policy(self) -> InDoubtPolicy:
        """The policy that applies (``on_doubt``, or its default)."""
        if self.on_doubt is not None:
            return self.on_doubt
        return "reconcile" if self.reconcile is not None else "retry"

    @classmethod
    def of(cls, declared: Effect | InDoubtPolicy | bool | None) -> Effect | None:
        """The effect ``ctx.step(..., effect=...)`` declares: an ``Effect``, a policy's name, True or None/False."""
        if declared is None or declared is False:
            return None
        if declared is True:
            return cls()
        if isinstance(declared, Effect):
            return declared
        if isinstance(declared, str):
            return cls(on_doubt=declared)  # checked in __post_init__
        raise InvalidInput(f"effect= takes an Effect, a policy name or True, got {type(declared).__name__}")


def decision_signal(key: str) -> str:
    """The name of the signal that decides the effect in doubt under journal ``key``."""
    return f"{DECISION_PREFIX}{key}"


def decision_payload(happened: bool, result: Any = None) -> dict[str, Any]:
    """The payload of a decision signal: ``{"happened": ..., "result": ...}``."""
    return {"happened": bool(happened), "result": result if happened else None}


def read_decision(payload: Any) -> tuple[bool, Any]:
    """``(happened, result)`` of a decision signal's payload (a malformed one counts as not happened)."""
    if isinstance(payload, Mapping):
        return bool(payload.get("happened")), payload.get("result")
    return False, None


def fingerprint(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """A digest of a call's arguments (None when they are not plain data: nothing to compare then)."""
    try:
        from pydantic_core import to_jsonable_python

        text = json.dumps(to_jsonable_python([list(args), dict(kwargs)]), sort_keys=True, separators=(",", ":"))
    except Exception:
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]
