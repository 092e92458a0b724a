"""The journal's fast paths on real stores: snapshots taken from memory, one-trip PostgreSQL appends."""

from __future__ import annotations

import psycopg
import pytest
from pydantic import BaseModel

from phaseledger import ConcurrencyConflict, Context, Engine, Workflow
from phaseledger.domain.run import WorkflowRun, project_run
from phaseledger.store.eventstore import Store, StoreURL


class Tally(BaseModel):
    n: int = 0


def tally_workflow(steps: int) -> Workflow[Tally]:
    wf = Workflow("tally", state=Tally, checkpoint_every_n_steps=3)

    @wf.phase(initial=True, to={"work": None, "done": None})
    async def work(ctx: Context[Tally]) -> str:
        for i in range(steps):
            await ctx.step("add", lambda i=i: {"i": i, "text": "quote ' backslash \\ é \u2603"})
        ctx.state.n += 1
        return "work" if ctx.state.n < 3 else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Tally]) -> int:
        return ctx.state.n

    return wf


async def test_snapshots_from_memory_equal_the_folded_log(store_url: str) -> None:
    wf = tally_workflow(steps=7)
    engine = Engine(store_url, workflows=[wf], snapshot_every=5)
    run = await engine.run(wf, run_id="r")
    assert run.status == "completed"
    store = engine.store
    events = store.events("r")
    snapshots = list(store.app.snapshots.get("r"))  # type: ignore[union-attr]
    assert len(snapshots) >= len(events) // 5 - 1
    for snapshot in snapshots:
        folded = project_run(None, events[: snapshot.originator_version])
        assert snapshot.state == WorkflowRun.Snapshot.take(folded).state  # type: ignore[attr-defined]
    reloaded = Store(store_url, snapshot_every=5) if store_url != "memory://" else store
    assert vars(reloaded.load("r")) == vars(project_run(None, events))
    assert [vars(e) for e in reloaded.events("r")] == [vars(e) for e in events]


@pytest.mark.postgres
def test_postgres_append_conflict_writes_nothing_and_keeps_the_connection(postgres_url: str) -> None:
    first, second = Store(postgres_url), Store(postgres_url)
    try:
        run = WorkflowRun._create(WorkflowRun.RunStarted, id="r", workflow="w", workflow_version=1, input={},
                                  parent=None)
        first.save(run)
        mine, theirs = first.load("r"), second.load("r")
        for copy in (mine, theirs):
            copy.trigger_event(WorkflowRun.SignalReceived, signal_id=f"s-{id(copy)}", name="go", payload={"v": "'"})
        first.save(mine)
        with pytest.raises(ConcurrencyConflict):
            second.save(theirs)
        assert [e.originator_version for e in second.events("r")] == [1, 2]
        assert second.load("r").inbox == mine.inbox
        other = WorkflowRun._create(WorkflowRun.RunStarted, id="s", workflow="w", workflow_version=1, input={},
                                    parent=None)
        for i in range(3):
            other.trigger_event(WorkflowRun.SignalReceived, signal_id=str(i), name="n", payload=i)
        last = second.save(other)  # the same pooled connection, after the failed append
        ids = [n.id for n in second.app.recorder.select_notifications(start=0, limit=10)]
        assert ids == sorted(ids) and ids[-1] == last and len(ids) == 6
    finally:
        first.close()
        second.close()


@pytest.mark.postgres
def test_postgres_appends_still_notify_listeners(postgres_url: str) -> None:
    store = Store(postgres_url)
    try:
        channel = store.app.recorder.channel_name  # type: ignore[attr-defined]
        with psycopg.connect(StoreURL.parse(postgres_url).postgres_conninfo or "", autocommit=True) as listener:
            listener.execute(f'LISTEN "{channel}"')
            store.save(WorkflowRun._create(WorkflowRun.RunStarted, id="r", workflow="w", workflow_version=1,
                                           input={}, parent=None))
            received = list(listener.notifies(timeout=5, stop_after=1))
        # psycopg may hand over more than stop_after when one packet carries several (other
        # suites append on the shared server too): what matters is that ours arrived.
        assert received and {n.channel for n in received} == {channel}
    finally:
        store.close()
