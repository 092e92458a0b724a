"""Snapshots every ``snapshot_every`` events: resuming a long run reads the snapshot and the tail only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, StepFailed, Store, Workflow
from phaseledger.domain.run import WorkflowRun, project_run
from phaseledger.store.eventstore import snapshot_wanted

STEPS = 130
SNAPSHOT_EVERY = 50


class Count(BaseModel):
    n: int = 0


def long_workflow() -> Workflow[Count]:
    wf = Workflow("long", state=Count, checkpoint_every_n_steps=7)  # batches cross snapshot versions

    @wf.phase(initial=True, to="finish")
    async def work(ctx: Context[Count]) -> None:
        for _ in range(STEPS):
            ctx.state.n = await ctx.step("inc", lambda n: n + 1, ctx.state.n)
        with suppress(StepFailed):  # leave a failed attempt in the snapshot's state too
            await ctx.step("refused", _refuse, retry=RetryPolicy(max_attempts=1))
        await ctx.wait_for_signal("go")

    @wf.phase(final=True)
    async def finish(ctx: Context[Count]) -> int:
        return ctx.state.n

    return wf


def _refuse() -> None:
    raise ConnectionError("refused")


@contextmanager
def counting_reads(store: Store) -> Iterator[list[tuple[int | None, int]]]:
    """Note ``(gt, events returned)`` for every read of a run's events from the store's recorder."""
    recorder = store.app.recorder
    original = recorder.select_events
    reads: list[tuple[int | None, int]] = []

    def select_events(originator_id: Any, **kwargs: Any) -> Any:
        events = original(originator_id, **kwargs)
        reads.append((kwargs.get("gt"), len(events)))
        return events

    recorder.select_events = select_events  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        del recorder.select_events


def comparable_state(run: Any) -> dict[str, Any]:
    state = {k: v for k, v in vars(run).items() if k != "_pending_events"}
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in state.items()}


async def test_resuming_a_long_run_reads_the_latest_snapshot_and_the_tail(store_url: str) -> None:
    wf = long_workflow()
    first = Engine(store_url, workflows=[wf], snapshot_every=SNAPSHOT_EVERY)
    suspended = await first.run(wf, run_id="long")
    assert suspended.status == "waiting"
    history = suspended.version
    latest_snapshot = history - history % SNAPSHOT_EVERY
    assert history > 2 * SNAPSHOT_EVERY

    engine = Engine(first.store if store_url == "memory://" else store_url, workflows=[wf],
                    snapshot_every=SNAPSHOT_EVERY)
    snapshots = [s.originator_version for s in engine.store.app.snapshots.get("long")]  # type: ignore[union-attr]
    assert snapshots == list(range(SNAPSHOT_EVERY, history + 1, SNAPSHOT_EVERY))

    with counting_reads(engine.store) as reads:
        loaded = engine.store.load("long")
    assert reads == [(latest_snapshot, history - latest_snapshot)]
    full = project_run(None, engine.store.events("long"))
    assert comparable_state(loaded) == comparable_state(full)

    await engine.signal("long", "go")
    with counting_reads(engine.store) as reads:
        done = await engine.resume("long")
    assert done.status == "completed" and done.output == STEPS
    assert reads and all(gt is not None and gt >= latest_snapshot for gt, _ in reads)
    assert sum(n for _, n in reads) < SNAPSHOT_EVERY < history


async def test_without_snapshots_the_whole_history_is_read(store_url: str) -> None:
    wf = long_workflow()
    engine = Engine(store_url, workflows=[wf], snapshot_every=None)
    suspended = await engine.run(wf, run_id="long")
    with counting_reads(engine.store) as reads:
        engine.store.load("long")
    assert reads == [(None, suspended.version)]


def one_long_visit(steps: int) -> Workflow[Count]:
    wf = Workflow("one-visit", state=Count, checkpoint_every_n_steps=3)  # batches cross snapshot versions

    @wf.phase(initial=True, to="finish")
    async def work(ctx: Context[Count]) -> None:
        for _ in range(steps):
            ctx.state.n = await ctx.step("inc", lambda n: n + 1, ctx.state.n)
        await ctx.wait_for_signal("go")

    @wf.phase(final=True)
    async def finish(ctx: Context[Count]) -> int:
        return ctx.state.n

    return wf


async def test_a_long_phase_visit_stores_snapshots_at_doubling_offsets(store_url: str) -> None:
    every, steps = 10, 400
    wf = one_long_visit(steps)
    engine = Engine(store_url, workflows=[wf], snapshot_every=every)
    suspended = await engine.run(wf, run_id="r")
    assert suspended.status == "waiting"
    store = engine.store
    entered = 2  # RunStarted, then PhaseEntered at version 2
    snapshots = list(store.app.snapshots.get("r"))  # type: ignore[union-attr]
    versions = [s.originator_version for s in snapshots]
    assert versions == [v for v in range(every, suspended.version + 1, every) if snapshot_wanted(v, entered, every)]
    assert versions == [10, 20, 30, 50, 90, 170, 330]  # not the 40 that one every 10 events would store
    events = store.events("r")
    for snapshot in snapshots:  # each equals the fold of the log up to its version
        folded = project_run(None, events[: snapshot.originator_version])
        assert snapshot.state == WorkflowRun.Snapshot.take(folded).state  # type: ignore[attr-defined]

    reopened = Engine(store if store_url == "memory://" else store_url, workflows=[wf], snapshot_every=every)
    with counting_reads(reopened.store) as reads:
        loaded = reopened.store.load("r")
    assert reads == [(330, suspended.version - 330)]  # at most about half the visit after the snapshot
    assert comparable_state(loaded) == comparable_state(project_run(None, events))
    await reopened.signal("r", "go")
    done = await reopened.resume("r")
    assert done.status == "completed" and done.output == steps


async def test_batched_commits_read_the_run_back_only_for_the_snapshots_a_long_visit_keeps(store_url: str) -> None:
    every, steps = 10, 400
    wf = one_long_visit(steps)  # batches of 3 steps cross the multiples of 10
    engine = Engine(store_url, workflows=[wf], snapshot_every=every)
    loads: list[int | None] = []
    load = engine.store.load

    def counted(run_id: str, version: int | None = None) -> WorkflowRun:
        loads.append(version)
        return load(run_id, version)

    engine.store.load = counted  # type: ignore[method-assign]
    suspended = await engine.run(wf, run_id="r")
    assert suspended.status == "waiting"
    versions = [s.originator_version for s in engine.store.app.snapshots.get("r")]  # type: ignore[union-attr]
    assert versions == [10, 20, 30, 50, 90, 170, 330]
    # A snapshot due inside a batch is read back from the log only when the visit keeps it.
    assert set(loads) <= {None, *versions}
