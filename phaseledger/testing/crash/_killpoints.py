"""Kill points, and what the harness and its child processes share: the environment
variables that tell a child where to kill itself and where to write its ledger."""

from __future__ import annotations

from dataclasses import dataclass

from phaseledger.domain.errors import PhaseledgerError

KILL_ENV = "PHASELEDGER_CRASH_AT"
"""Environment variable telling a child process where to kill itself (``where:n``)."""
LEDGER_ENV = "PHASELEDGER_CRASH_LEDGER"
"""Environment variable naming the ledger file a child writes step executions to."""
KILL_KINDS = ("before_step", "in_step", "after_append")


class CrashHarnessError(PhaseledgerError):
    """The harness cannot do what was asked (bad target, child failure, run that cannot finish)."""


@dataclass(frozen=True)
class KillPoint:
    """Where a child process kills itself: the ``n``-th occurrence of ``where`` in that process."""

    where: str
    n: int

    def __post_init__(self) -> None:
        if self.where not in KILL_KINDS:
            raise CrashHarnessError(f"unknown kill point {self.where!r}: use one of {', '.join(KILL_KINDS)}")
        if self.n < 1:
            raise CrashHarnessError(f"kill point {self.where}:{self.n}: n counts from 1")

    def __str__(self) -> str:
        return f"{self.where}:{self.n}"

    @classmethod
    def parse(cls, text: str) -> KillPoint:
        """Parse ``where:n`` (for example ``in_step:3``)."""
        where, _, n = text.partition(":")
        try:
            return cls(where, int(n))
        except ValueError:
            raise CrashHarnessError(f"cannot parse kill point {text!r}: expected where:n, e.g. in_step:3") from None
