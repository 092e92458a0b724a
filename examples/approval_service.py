"""An approval service on FastAPI: start changes, take decisions over HTTP, report status,
and show the runs in the web view mounted at ``/runs-ui``.

The workflow is the human-approval one of ``examples/approval.py``: a change is planned,
waits for an ``approve`` signal, then is executed or stopped. The service:

- ``POST /changes`` starts a change (its id in the body makes starting idempotent) and
  drives it until it waits for the decision;
- ``POST /changes/{id}/decision`` sends the decision as the ``approve`` signal (a
  ``decision_id`` makes a retried request harmless) and drives the change on;
- ``GET /changes/{id}`` reports where it stands;
- ``/runs-ui`` is phaseledger's web view of every run, read-only.

A worker runs inside the service (its lifespan), so a decision sent while the service
restarts, or by another process, is still taken up. Run it with::

    pip install 'phaseledger[web]' fastapi
    PHASELEDGER_STORE=sqlite:///approvals.db uvicorn approval_service:build_service --factory --app-dir examples

then ``curl -XPOST localhost:8000/changes -H 'content-type: application/json' -d
'{"id": "chg-1", "request": "rotate the API keys"}'`` and open http://localhost:8000/runs-ui/.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from phaseledger import Engine, InvalidInput, RunBusy, RunExists, RunFinished, RunNotFound
from phaseledger.web import create_app


def _approval_example() -> Any:
    """examples/approval.py, the workflow this service runs (imported by path: examples is no package)."""
    if "approval" in sys.modules:
        return sys.modules["approval"]
    spec = importlib.util.spec_from_file_location("approval", Path(__file__).with_name("approval.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["approval"] = module  # its models are recorded by import path
    spec.loader.exec_module(module)
    return module


approval_example = _approval_example()
approval = approval_example.approval
Approval = approval_example.Approval


class NewChange(BaseModel):
    """What ``POST /changes`` takes."""

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    request: str
    decision_timeout: float = 3600.0


class Decision(BaseModel):
    """What ``POST /changes/{id}/decision`` takes."""

    approved: bool
    comment: str = ""
    decision_id: str | None = None
    """Send the same id again (a retried request) and the decision is not taken twice."""


class ChangeStatus(BaseModel):
    """What ``GET /changes/{id}`` answers."""

    id: str
    status: str
    phase: str | None
    waiting_for: str | None = None
    plan: list[str] = []
    applied: list[str] = []
    output: Any = None


def status_of(engine: Engine, run_id: str) -> ChangeStatus:
    """The change's status, read from its run."""
    run = engine.get(run_id)
    state = run.state
    return ChangeStatus(
        id=run.run_id, status=run.status, phase=run.phase, output=run.output,
        waiting_for=(run.suspended or {}).get("signal") if not run.finished else None,
        plan=list(getattr(state, "plan", [])), applied=list(getattr(state, "applied", [])),
    )


def build_service(store: str | None = None, *, worker: bool = True) -> FastAPI:
    """The service on the store at ``store`` (default ``$PHASELEDGER_STORE``); ``worker`` runs a
    worker in its lifespan that drives what the requests leave runnable."""
    engine = Engine(store or os.environ.get("PHASELEDGER_STORE", "sqlite:///approvals.db"), workflows=[approval],
                    max_inline_wait=0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = engine.worker(poll_interval=0.2) if worker else None
        task = asyncio.create_task(runner.run(handle_signals=False)) if runner else None
        try:
            yield
        finally:
            if runner is not None and task is not None:
                runner.stop()
                await task
            await engine.drives.stop_all()
            engine.close()

    service = FastAPI(title="Approvals", lifespan=lifespan)
    service.state.engine = engine

    @service.post("/changes", status_code=201)
    async def start_change(change: NewChange) -> ChangeStatus:
        try:
            await engine.run(approval, {"request": change.request, "decision_timeout": change.decision_timeout},
                             run_id=change.id, if_exists="return")
        except RunExists as exc:
            raise HTTPException(409, str(exc)) from None
        return await asyncio.to_thread(status_of, engine, change.id)

    @service.post("/changes/{change_id}/decision")
    async def decide(change_id: str, decision: Decision) -> ChangeStatus:
        try:
            await engine.signal(change_id, "approve", Approval(approved=decision.approved, comment=decision.comment),
                                signal_id=decision.decision_id)
        except RunNotFound:
            raise HTTPException(404, f"no change {change_id!r}") from None
        except RunFinished as exc:
            raise HTTPException(409, str(exc)) from None
        except InvalidInput as exc:
            raise HTTPException(422, str(exc)) from None
        with contextlib.suppress(RunFinished, RunBusy):  # finished, or the worker took it up first
            await engine.resume(change_id)
        return await asyncio.to_thread(status_of, engine, change_id)

    @service.get("/changes/{change_id}")
    async def get_change(change_id: str) -> ChangeStatus:
        try:
            return await asyncio.to_thread(status_of, engine, change_id)
        except RunNotFound:
            raise HTTPException(404, f"no change {change_id!r}") from None

    service.mount("/runs-ui", create_app(engine, title="Approvals · runs"))
    return service

