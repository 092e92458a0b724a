"""What the harness reports: one child process, one run driven by a chain of processes,
and a whole exploration compared with its uninterrupted reference run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from phaseledger.domain.run import WorkflowRun
from phaseledger.testing.crash._killpoints import KillPoint


class CrashCheckFailed(AssertionError):
    """A crashed-and-resumed run broke a guarantee; the message lists every problem found."""


@dataclass
class ChildOutcome:
    """What one child process did."""

    kill: KillPoint | None
    killed: bool
    """True when the child died by SIGKILL at its kill point."""
    returncode: int
    status: str | None
    """The run's status the child reported when it exited normally."""
    suspended: dict[str, Any] | None
    stderr: str
    counts: dict[str, int] = field(default_factory=dict)
    """Kill-point occurrences the child passed (when it exited normally)."""


@dataclass
class RunReport:
    """One run driven to its end by a chain of processes, and what the harness saw."""

    run_id: str
    kills: list[KillPoint] = field(default_factory=list)
    """The kill points that fired, in order (one per killed process)."""
    processes: int = 0
    executions: Counter[str] = field(default_factory=Counter)
    """Live step executions started, by idempotency key."""
    reexecuted: list[str] = field(default_factory=list)
    """Keys that ran more than once (steps in flight or not yet committed at a kill, retries)."""
    lost_per_kill: list[int] = field(default_factory=list)
    """Per kill: step results finished in the killed process but not committed."""
    counts: Counter[str] = field(default_factory=Counter)
    """Kill-point occurrences passed by the processes that were not killed."""
    status: str | None = None
    state: Any = None
    output: Any = None
    events: list[WorkflowRun.Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class CrashReport:
    """The uninterrupted reference run and every crashed run compared with it."""

    baseline: RunReport
    runs: list[RunReport] = field(default_factory=list)

    @property
    def kill_points(self) -> int:
        """Kill points that fired across all runs (each one a process killed by SIGKILL)."""
        return sum(len(r.kills) for r in self.runs)

    @property
    def processes(self) -> int:
        """Child processes started, the reference run's included."""
        return self.baseline.processes + sum(r.processes for r in self.runs)

    @property
    def problems(self) -> list[str]:
        """Every broken guarantee, prefixed by its run id."""
        return [f"{r.run_id}: {p}" for r in [self.baseline, *self.runs] for p in r.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`CrashCheckFailed` listing the problems, if there are any."""
        if self.problems:
            raise CrashCheckFailed(f"{len(self.problems)} problem(s):\n" + "\n".join(self.problems))
