"""The statuses a run takes: one vocabulary for the run, its views, the run index, the reports and the CLI.

Statuses are stored (in snapshots, the run index and the report tables) and shown as these
plain strings, so they are string constants rather than enum members: what is stored,
compared and printed is the same ``str`` everywhere. :data:`RunStatus` is their type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, get_args

RunStatus = Literal["running", "waiting", "sleeping", "retrying", "completed", "failed", "cancelled"]
"""A status a run takes."""

RUNNING: Final = "running"
WAITING: Final = "waiting"
SLEEPING: Final = "sleeping"
RETRYING: Final = "retrying"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"

STATUSES: Final[tuple[RunStatus, ...]] = get_args(RunStatus)
"""Every status, in the order a run may take them."""

FINISHED: Final[frozenset[str]] = frozenset({COMPLETED, FAILED, CANCELLED})
"""The statuses of a run that never resumes on its own (``engine.retry`` reopens a failed one)."""

DAMAGED: Final = "damaged"
"""Not a status a run takes: what listings and the run index show for a run a stored row of
which cannot be read (see :class:`~phaseledger.CorruptEvent`)."""

_SUSPENDED_FOR: Final[Mapping[str, RunStatus]] = {
    "signal": WAITING, "sleep": SLEEPING, "retry": RETRYING, "effect": WAITING,
}


def suspended_status(reason: str) -> RunStatus:
    """The status of a run suspended for ``reason`` (``RunSuspended.reason``: signal, sleep, retry, or
    effect: a person's decision on an effect in doubt, a signal)."""
    return _SUSPENDED_FOR.get(reason, WAITING)
