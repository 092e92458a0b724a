"""The engine's observability callbacks and its append listeners, called as runs progress."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.workflow import WorkflowRegistry

RunCallback = Callable[[str, str], Any]
"""Called with ``(run_id, what)``: the checkpoint's label, or the reason a run resumed."""

log = logging.getLogger("phaseledger")


class RunHooks:
    """Who is told what happened to runs: the engine's and workflows' callbacks, and listeners of appends.

    ``on_checkpoint`` and ``on_resume`` are the engine-wide callbacks (a workflow's own are
    called after them); their errors are logged and never fail the run. Append listeners
    (an engine's workers) are called on the loop after a start, signal or cancel is appended.
    """

    def __init__(self, registry: WorkflowRegistry, on_checkpoint: RunCallback | None,
                 on_resume: RunCallback | None) -> None:
        self.registry = registry
        self.on_checkpoint = on_checkpoint
        self.on_resume = on_resume
        self._append_listeners: list[Callable[[], None]] = []

    def checkpoint(self, run: WorkflowRun, label: str) -> None:
        """A run committed a checkpoint (a phase change, ``ctx.checkpoint``)."""
        workflow = self.registry.workflows.get((run.workflow, run.workflow_version))
        _notify(self.on_checkpoint, run.id, label)
        _notify(workflow.on_checkpoint if workflow else None, run.id, label)

    def resumed(self, run: WorkflowRun, reason: str) -> None:
        """A run was taken up again (``recover``, ``signal``, ``timer``, ``retry``, ``fork``...)."""
        workflow = self.registry.workflows.get((run.workflow, run.workflow_version))
        _notify(self.on_resume, run.id, reason)
        _notify(workflow.on_resume if workflow else None, run.id, reason)

    def listen_to_appends(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after each start, signal or cancel this engine appends; returns the unsubscriber."""
        self._append_listeners.append(listener)
        return lambda: self._append_listeners.remove(listener)

    def appended(self) -> None:
        """Tell the append listeners that this engine appended a start, signal or cancel."""
        for listener in list(self._append_listeners):
            listener()


def _notify(callback: RunCallback | None, run_id: str, what: str) -> None:
    """Call an observability callback; its errors are logged, never fail the run."""
    if callback is None:
        return
    try:
        callback(run_id, what)
    except Exception:
        log.exception("callback %r failed for run %r (%s)", callback, run_id, what)
