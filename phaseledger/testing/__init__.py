"""Tools to test workflows: replay-equivalence checks, hypothesis strategies, crash harnesses.

``check_replay`` proves that a workflow resumes from any point of its log to exactly the
same result without running recorded steps again; ``strategies`` generates workflows and
behaviour for hypothesis.
"""

from phaseledger.testing.replay import ReplayMismatch, ReplayReport, StepCalls, check_replay, check_replay_sync

__all__ = ["ReplayMismatch", "ReplayReport", "StepCalls", "check_replay", "check_replay_sync"]
