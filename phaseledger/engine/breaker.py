"""Circuit breakers: stop calling a failing provider for a while, then probe it once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from phaseledger.domain.errors import CircuitOpen


@dataclass
class CircuitBreaker:
    """A named breaker shared by every run of an engine (``ctx.step(..., breaker="openai")``).

    After ``failure_threshold`` consecutive failures it opens: calls fail fast with
    :class:`~phaseledger.CircuitOpen` (retryable, so runs back off instead of hammering).
    After ``reset_timeout`` seconds it lets one probe call through (half-open); success
    closes it, failure opens it again. While the probe is in flight other calls are
    refused with a retry hint of a tenth of ``reset_timeout``; a probe that never reports
    back (its task was cancelled) is given up after ``reset_timeout``. It lives in memory:
    it protects a provider, it is not part of any run's log.
    """

    name: str = "default"
    failure_threshold: int = 5
    reset_timeout: float = 60.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False
    probe_started: float | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go through now."""
        state = self.state
        now = self.clock()
        if state == "half_open" and self.probing and now - (self.probe_started or now) >= self.reset_timeout:
            self.probing = False  # the probe never reported back: let another call probe
        if state == "open":
            assert self.opened_at is not None
            raise CircuitOpen(self.name, max(0.0, self.reset_timeout - (now - self.opened_at)))
        if state == "half_open" and self.probing:
            raise CircuitOpen(self.name, self.reset_timeout / 10)
        if state == "half_open":
            self.probing = True
            self.probe_started = now

    def record_success(self) -> None:
        """A call succeeded: close the breaker."""
        self.failures = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self) -> None:
        """A call failed: count it, and open the breaker at the threshold or after a failed probe."""
        self.failures += 1
        if self.probing or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
        self.probing = False
