"""What one engine's drivers and its workers share about the runs driven in this process.

Which lease each run is driven under, until when it is known to be held, and the requests
to stop at the next journal boundary.
"""

from __future__ import annotations

import asyncio
from typing import Any

from phaseledger.store.leasebook import LEASE_SAFETY


class RunControl:
    """The runs driven in this process by one engine: their tasks, leases and stop requests.

    Drivers read it at every journal boundary (:meth:`stop_requested`, :meth:`lease_ran_out`); the engine's heartbeat
    and its workers' renewers write it. Everything here runs on the engine's event loop.
    """

    def __init__(self) -> None:
        self.active: dict[str, asyncio.Task[Any]] = {}
        """The drive in progress of each run driven here."""
        self._stops: dict[str, type[BaseException]] = {}
        self._holders: dict[str, str] = {}
        self._deadlines: dict[str, float] = {}

    def interrupt(self, run_id: str, stop: type[BaseException]) -> bool:
        """Make a run driven here stop at its next journal boundary (False if it is idle here)."""
        if run_id not in self.active:
            return False
        self._stops.setdefault(run_id, stop)
        return True

    def hold(self, run_id: str, owner: str, seconds: float, now: float) -> None:
        """Note that ``owner`` holds the run's lease for ``seconds`` from ``now`` (monotonic)."""
        self._holders[run_id] = owner
        self._deadlines[run_id] = now + seconds * LEASE_SAFETY

    def holder(self, run_id: str) -> str | None:
        """Under whose lease the run is driven here (a worker's claim, or the engine's own)."""
        return self._holders.get(run_id)

    def held_by(self, owner: str) -> list[str]:
        """The runs held here under ``owner``'s lease."""
        return [run_id for run_id, holder in self._holders.items() if holder == owner]

    def stop_requested(self, run_id: str) -> type[BaseException] | None:
        """The exception the run was asked to stop with at its next boundary, if any."""
        return self._stops.get(run_id)

    def lease_ran_out(self, run_id: str, now: float) -> bool:
        """Whether the run's lease may be gone: not renewed in time (``now`` is monotonic)."""
        deadline = self._deadlines.get(run_id)
        return deadline is not None and now > deadline

    def drop(self, run_id: str) -> None:
        """Forget the run's lease and stop requests (its drive ended)."""
        self._stops.pop(run_id, None)
        self._holders.pop(run_id, None)
        self._deadlines.pop(run_id, None)
