"""Time travel is exact, for generated workflows, on memory, SQLite and PostgreSQL.

(1) ``engine.state_at(run, v)`` equals the live run right after event v, for every v.
(2) A fork at any version v, followed by the same decisions, ends exactly like its
source, and executes only the calls the source recorded after v: nothing recorded at or
before the fork point runs again. (3) Any truncation or edit of a resume token, and any
token of another store, is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phaseledger import Engine, InvalidInput, InvalidToken, RunNotFound
from phaseledger.domain.run import WorkflowRun
from phaseledger.testing.strategies import WorkflowScript, build_workflow, workflow_scripts

KEY = "property-test-token-key-0123456789abcdef"
_session = uuid.uuid4().hex[:8]
_ids = (f"{_session}-{n}" for n in itertools.count())

EXAMPLES = {"memory": 60, "sqlite": 25, "postgres": 15}


def _examples(store_url: str) -> int:
    return EXAMPLES[store_url.split(":", 1)[0].replace("postgresql", "postgres")]


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


class Engines:
    """One engine per test (a store is opened once), workflows registered per example."""

    def __init__(self, store_url: str) -> None:
        self.engine = Engine(store_url, snapshot_every=3, token_key=KEY)

    def workflow(self, script: WorkflowScript) -> Any:
        script.name = f"generated-{next(_ids)}"
        workflow = build_workflow(script)
        self.engine.register(workflow)
        return workflow


def _live_summary(run: WorkflowRun) -> dict[str, Any]:
    return copy.deepcopy({
        "version": run.version, "status": run.status, "phase": run.phase, "state": run.phase_state,
        "journal": {k: (e.seq, e.name, e.kind, e.result) for k, e in run.journal.items()},
        "attempts": run.attempts, "output": run.output, "steps": run.steps,
    })


def _rebuilt_summary(engine: Engine, run_id: str, version: int) -> dict[str, Any]:
    at = engine.state_at(run_id, version)
    return {
        "version": at.version, "status": at.status, "phase": at.phase, "state": at.state.model_dump(mode="json"),
        "journal": {j.key: (j.seq, j.name, j.kind, j.result) for j in at.journal},
        "attempts": at.attempts, "output": _plain(at.output), "steps": at.steps,
    }


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


@pytest.fixture
def engines(store_url: str) -> Any:
    holder = Engines(store_url)
    yield holder
    holder.engine.close()


def test_state_at_every_version_equals_the_live_run(engines: Engines, store_url: str) -> None:
    @_settings(_examples(store_url))
    @given(script=workflow_scripts(max_phases=4))
    def check(script: WorkflowScript) -> None:
        engine = engines.engine
        workflow = engines.workflow(script)
        live: dict[int, dict[str, Any]] = {}
        engine.event_observer = lambda run: live.__setitem__(run.version, _live_summary(run))
        run_id = f"live-{next(_ids)}"
        final = asyncio.run(engine.run(workflow, {}, run_id=run_id))
        engine.event_observer = None
        assert final.status == "completed", final.error
        assert live, "the observer saw no live event"
        for version, expected in live.items():
            assert _rebuilt_summary(engine, run_id, version) == expected, f"version {version}"
        for version in range(1, final.version + 1):  # including those saved in one batch
            assert engine.state_at(run_id, version).version == version

    check()


def test_a_fork_with_the_same_decisions_equals_its_source(engines: Engines, store_url: str) -> None:
    @_settings(_examples(store_url))
    @given(script=workflow_scripts(max_phases=4), where=st.floats(0, 1))
    def check(script: WorkflowScript, where: float) -> None:
        engine = engines.engine
        workflow = engines.workflow(script)
        source_id = f"source-{next(_ids)}"
        source = asyncio.run(engine.run(workflow, {}, run_id=source_id))
        assert source.status == "completed", source.error
        asked = 2 + int(where * (source.version - 2))
        script.calls.keys.clear()
        fork = asyncio.run(engine.fork(source_id, at=asked, new_run_id=f"fork-{next(_ids)}"))
        at = fork.parent["version"]  # a fork at a completion branches just before it
        assert at == (asked - 1 if asked == source.version else asked)
        events = engine.store.events(source_id)
        recorded_after = [e for e in events if isinstance(e, WorkflowRun.StepRecorded) and e.originator_version > at]
        visit = engine.state_at(source_id, at)
        replayable = {f"{_visit_version(events, at)}.{entry.key}" for entry in visit.journal}
        assert (fork.status, _plain(fork.output), fork.state) == (source.status, _plain(source.output), source.state)
        assert fork.attempts == source.attempts
        comparison = engine.compare(source_id, fork.run_id)
        assert comparison.identical, comparison
        assert comparison.common_ancestor == {"run_id": source_id, "version": at}
        # only the calls recorded after the fork point ran again, none before it
        assert len(script.calls.keys) == len(recorded_after)
        assert not replayable & set(script.calls.keys)
        lineage = engine.lineage(fork.run_id)
        assert [(a.run_id, a.version) for a in lineage.ancestors] == [(source_id, at)]
        for version in range(1, at + 1):  # the copied prefix rebuilds to the same runs
            a = engine.state_at(source_id, version).model_dump(exclude={"run_id", "parent", "updated_on"})
            b = engine.state_at(fork.run_id, version).model_dump(exclude={"run_id", "parent", "updated_on"})
            assert a == b, f"version {version}"

    check()


def _visit_version(events: list[WorkflowRun.Event], at: int) -> int:
    """The version of the phase entry whose visit was in progress at version ``at``."""
    return max(e.originator_version for e in events[:at] if isinstance(e, WorkflowRun.PhaseEntered))


MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just("")),
    st.tuples(st.just("replace"), st.floats(0, 1), st.sampled_from("AZaz09-_.=x")),
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from("Aa0-_.")),
)


def test_damaged_and_foreign_tokens_are_refused_and_change_nothing(engines: Engines, store_url: str) -> None:
    engine = engines.engine
    from phaseledger.testing.strategies import WorkflowScript as Script

    script = Script(phases=2, extra={}, steps=[[[1, 2]], [[3]]], choices=[[0], [0]])
    workflow = engines.workflow(script)
    run_id = f"token-{next(_ids)}"
    asyncio.run(engine.run(workflow, {}, run_id=run_id))
    token = engine.resume_token(run_id, at=3)
    foreign = Engine("memory://", workflows=[workflow], token_key=KEY)
    asyncio.run(foreign.run(workflow, {}, run_id=run_id))
    foreign_token = foreign.resume_token(run_id, at=3)

    def snapshot() -> list[tuple[str, int]]:
        return [(r, len(engine.history(r))) for r in sorted(engine.store.run_ids())]

    before = snapshot()

    @_settings(_examples(store_url) * 6)
    @given(mutation=MUTATIONS)
    def check(mutation: tuple[str, float, str]) -> None:
        kind, where, char = mutation
        i = int(where * len(token))
        bad = {
            "truncate": token[:i],
            "replace": token[:i] + char + token[i + 1:],
            "insert": token[:i] + char + token[i:],
        }[kind]
        if bad == token:
            return
        for attempt in (lambda: engine.fork(bad, new_run_id=f"never-{next(_ids)}"), lambda: engine.resume(bad)):
            # Mangled into no token at all, it is a run id: unknown, or not a valid id (InvalidInput).
            with pytest.raises((InvalidToken, RunNotFound, InvalidInput)) as info:
                asyncio.run(attempt())
            if bad.startswith("pl1."):
                assert isinstance(info.value, InvalidToken)
        assert snapshot() == before

    check()
    with pytest.raises(InvalidToken, match="another store"):
        asyncio.run(engine.fork(foreign_token))
    with pytest.raises(InvalidToken, match="another store"):
        asyncio.run(engine.resume(foreign_token))
    assert snapshot() == before
