"""Replay and recovery are exact, for generated workflows and behaviour, on every store.

(1) The state rebuilt from the store by a fresh engine equals the live state after every
event. (2) Stopping after any event k and resuming with a fresh engine gives the same final
state, output and events as the uninterrupted run, and no recorded step runs again.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from phaseledger import Engine
from phaseledger.domain.run import project_run
from phaseledger.engine.views import run_view
from phaseledger.testing import check_replay
from phaseledger.testing.strategies import ScriptState, WorkflowScript, build_workflow, workflow_scripts

_session = uuid.uuid4().hex[:8]
_ids = (f"{_session}-{n}" for n in itertools.count())


def _check_live_equals_rebuilt(script: WorkflowScript, store: str) -> None:
    async def scenario() -> None:
        workflow = build_workflow(script)
        engine = Engine(store, workflows=[workflow], snapshot_every=3)
        live: dict[int, dict] = {}
        engine.event_observer = lambda run: live.__setitem__(run.version, copy.deepcopy(run.__dict__))
        run_id = f"live-{next(_ids)}"
        final = await engine.run(workflow, {}, run_id=run_id)
        assert final.status == "completed", final.error
        fresh = Engine(engine.store if store == "memory://" else store, workflows=[workflow], snapshot_every=3)
        events = fresh.store.events(run_id)
        for v in range(1, final.version + 1):
            rebuilt = fresh.get(run_id, version=v)
            folded = run_view(project_run(None, copy.deepcopy(events[:v])), ScriptState)
            assert rebuilt.model_dump(exclude={"updated_on"}) == folded.model_dump(exclude={"updated_on"})
            if v in live:
                state = {k: val for k, val in live[v].items() if k != "_pending_events"}
                loaded = fresh.store.load(run_id, version=v).__dict__
                assert {k: val for k, val in loaded.items() if k != "_pending_events"} == state, f"version {v}"
        assert live, "the observer saw no live event"

    asyncio.run(scenario())


def _check_resume_from_every_prefix(script: WorkflowScript, store: str) -> None:
    workflow = build_workflow(script)
    report = asyncio.run(check_replay(workflow, {}, store=store, calls=script.calls, run_id=f"prefix-{next(_ids)}"))
    assert report.prefixes_checked == list(range(1, report.events))
    assert not any(report.steps_reexecuted.values())


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(script=workflow_scripts())
def test_memory_live_state_equals_state_rebuilt_by_a_fresh_engine(script: WorkflowScript) -> None:
    _check_live_equals_rebuilt(script, "memory://")


@PROPERTY
@given(script=workflow_scripts())
def test_memory_resume_after_any_event_equals_the_uninterrupted_run(script: WorkflowScript) -> None:
    _check_resume_from_every_prefix(script, "memory://")


@FEWER
@given(script=workflow_scripts(max_phases=4))
def test_sqlite_live_state_and_resume_after_any_event(script: WorkflowScript) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'runs.db'}"
        _check_live_equals_rebuilt(script, url)
        _check_resume_from_every_prefix(script, url)


@pytest.mark.postgres
@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(script=workflow_scripts(max_phases=3, max_steps=2))
def test_postgres_live_state_and_resume_after_any_event(script: WorkflowScript, postgres_url: str) -> None:
    _check_live_equals_rebuilt(script, postgres_url)
    _check_resume_from_every_prefix(script, postgres_url)
