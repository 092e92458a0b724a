"""What a run waits for once advanced: the answer every dispatcher schedules on.

:meth:`phaseledger.Engine.advance` drives a run until it completes, fails or must wait,
and returns a :class:`RunWait`. A dispatcher (the native worker fleet, or an external
engine such as Temporal, DBOS or Prefect) calls it again when what the run waits for has
happened: the signal arrived, or the time came.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from phaseledger.domain.status import FINISHED
from phaseledger.engine.views import Run

WaitReason = Literal["signal", "sleep", "retry", "effect"]


class RunWait(BaseModel):
    """Where a run stands after :meth:`~phaseledger.Engine.advance`: finished, or what it waits for."""

    run: Run
    """The run's view as the advance left it."""
    reason: WaitReason | None = None
    """``signal`` (``wait_for_signal``), ``sleep`` (a durable timer), ``retry`` (backoff
    before a step's next attempt) or ``effect`` (a person's decision on an effect in doubt,
    sent as the ``signal`` named here by ``engine.resolve``); None when the run finished."""
    signal: str | None = None
    """The name of the signal the run waits for, if any."""
    until: datetime | None = None
    """When the run is due again without a signal: its wake or retry time, or the deadline
    of its signal wait (a ``SignalTimeout`` is then raised in the handler); None: only a
    signal wakes it."""

    @property
    def finished(self) -> bool:
        """Completed, failed or cancelled: nothing more to schedule."""
        return self.run.status in FINISHED

    @classmethod
    def of(cls, run: Run) -> RunWait:
        """The wait of a run's view (finished runs wait for nothing)."""
        if run.status in FINISHED or not run.suspended:
            return cls(run=run)
        suspended = run.suspended
        return cls(run=run, reason=suspended.get("reason"), signal=suspended.get("signal"),
                   until=suspended.get("until"))
