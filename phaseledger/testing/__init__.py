"""Tools to test workflows: replay-equivalence checks, hypothesis strategies, crash harnesses.

``check_replay`` proves that a workflow resumes from any point of its log to exactly the
same result without running recorded steps again; ``strategies`` generates workflows and
behaviour for hypothesis; :class:`CrashHarness` kills real processes running a workflow
with SIGKILL and checks that new processes finish the run as if nothing had happened.
"""

from phaseledger.testing.crash import (
    CrashCheckFailed,
    CrashHarness,
    CrashHarnessError,
    CrashReport,
    KillPoint,
    RunReport,
)
from phaseledger.testing.replay import ReplayMismatch, ReplayReport, StepCalls, check_replay, check_replay_sync

__all__ = [
    "CrashCheckFailed",
    "CrashHarness",
    "CrashHarnessError",
    "CrashReport",
    "KillPoint",
    "ReplayMismatch",
    "ReplayReport",
    "RunReport",
    "StepCalls",
    "check_replay",
    "check_replay_sync",
]
