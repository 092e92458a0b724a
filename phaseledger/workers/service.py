"""A worker process's main: an engine on a store, its workers' workflows loaded, driven until told to stop.

It sits above both the engine and the worker (the engine builds workers; this builds the
engine), which keeps them free of an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine
from phaseledger.engine.loading import load_workflows
from phaseledger.workers.worker import WorkerStats

__all__ = ["run_worker"]


async def run_worker(
    store_url: str | None,
    workflows: str | Iterable[Workflow[Any]],
    *,
    concurrency: int = 10,
    lease_seconds: float = 30.0,
    poll_interval: float = 0.5,
    error_backoff: float = 30.0,
    until_idle: bool = False,
    worker_id: str | None = None,
    handle_signals: bool = True,
    engine_options: Mapping[str, Any] | None = None,
) -> WorkerStats:
    """Run a worker on a store until SIGTERM/SIGINT (or until idle): what ``phaseledger worker`` does.

    ``workflows`` is an import path (see :func:`phaseledger.engine.loading.load_workflows`) or the workflows
    themselves; ``engine_options`` are passed to :class:`~phaseledger.Engine` (for example
    ``max_inline_wait`` or ``checkpoint_every_n_steps``).
    """
    found = load_workflows(workflows) if isinstance(workflows, str) else list(workflows)
    engine = Engine(store_url, workflows=found, **dict(engine_options or {}))
    try:
        worker = engine.worker(concurrency=concurrency, lease_seconds=lease_seconds, poll_interval=poll_interval,
                               error_backoff=error_backoff, worker_id=worker_id)
        return await worker.run(until_idle=until_idle, handle_signals=handle_signals)
    finally:
        engine.close()
