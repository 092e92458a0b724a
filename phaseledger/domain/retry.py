"""Retry policies: how often and how soon a failed step is tried again."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from phaseledger.domain.errors import WorkflowDefinitionError


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed step is retried: a small, frozen value usable per step, phase, workflow or engine.

    The delay before attempt ``n + 1`` is ``initial_delay * backoff ** (n - 1)``, capped at
    ``max_delay``; with ``jitter`` a random fraction of up to 20 % is taken off so that many
    runs failing together do not retry together. Every failed attempt is recorded with its
    ``retry_at`` time, so a run resumed after a crash waits only what remains of the delay.
    """

    max_attempts: int = 3
    """Attempts in total, the first included; 1 means no retry."""
    initial_delay: float = 1.0
    """Seconds before the second attempt."""
    backoff: float = 2.0
    """Factor applied to the delay after each further failure."""
    max_delay: float = 60.0
    """Upper bound of any single delay, in seconds."""
    jitter: bool = True
    """Take a random 0-20 % off each delay."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Only errors of these types are retried."""
    give_up_on: tuple[type[BaseException], ...] = field(default=())
    """Errors of these types fail at once, even when ``retry_on`` matches them."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise WorkflowDefinitionError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise WorkflowDefinitionError("RetryPolicy delays must be >= 0")
        if self.backoff < 1:
            raise WorkflowDefinitionError(f"RetryPolicy.backoff must be >= 1, got {self.backoff}")
        if isinstance(self.retry_on, type) or isinstance(self.give_up_on, type):
            raise WorkflowDefinitionError("RetryPolicy.retry_on and give_up_on take tuples of exception types")

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether this error may be retried at all (ignoring the attempts left).

        ``give_up_on`` wins, then errors that say they are permanent (see
        :func:`is_permanent_error`), then ``retry_on``.
        """
        if isinstance(exc, self.give_up_on):
            return False
        if is_permanent_error(exc):
            return False
        return isinstance(exc, self.retry_on)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the given failed attempt (1-based) before the next one."""
        delay = min(self.initial_delay * self.backoff ** (failed_attempt - 1), self.max_delay)
        if self.jitter and delay > 0:
            delay *= 1 - 0.2 * (rng or random).random()
        return delay


_PERMANENT_ERROR_NAMES = frozenset({
    "UsageLimitExceeded", "UserError", "SerializationError", "JournalSerializationError",
    # pydantic-ai's categories of provider errors that another try will not fix
    "ModelQuotaExceededError", "ModelRequestRejectedError", "ContentFilterError",
})
_TRANSIENT_ERROR_NAMES = frozenset({
    "ModelRateLimitError", "ModelUnavailableError", "ModelServerError", "ModelConnectionError",
    "ModelRequestTimeout",
})


def is_permanent_error(exc: BaseException) -> bool:
    """Errors that will fail the same way however often they are tried.

    An error with ``retryable = False`` says so itself. pydantic-ai's error categories are
    used when present: quota exhausted, request rejected (authentication, model not found,
    context window exceeded) and content filtered are permanent; rate limits, unavailable
    or failing servers, connection errors and timeouts are transient. Other HTTP errors
    (pydantic-ai's ``ModelHTTPError`` and anything with a ``status_code``) are permanent for
    4xx other than 408 and 429; 429, 408 and 5xx are transient. Usage-limit and
    serialisation errors are permanent. Timeouts and connection errors are transient.
    Names are matched along the class hierarchy, so the domain needs no import of pydantic-ai.
    """
    flagged = getattr(exc, "retryable", None)
    if isinstance(flagged, bool):
        return not flagged
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _PERMANENT_ERROR_NAMES:
        return True
    if names & _TRANSIENT_ERROR_NAMES:
        return False
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return 400 <= status < 500 and status not in (408, 429)
    return False


NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=False)
"""The engine default: a failing step fails at once (set a policy to retry)."""
