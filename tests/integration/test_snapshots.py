"""Snapshots every ``snapshot_every`` events, without the journal of the phase visit in progress:
a view of a long run reads the snapshot and the tail only; a resume reads the visit's events too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, StepFailed, Store, Workflow
from phaseledger.domain.run import WorkflowRun, project_run

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
    """Note ``(gt, events returned)`` for every read of a run's events from the store (its
    recorder's, and the backend's reads of journal rows)."""
    recorder, backend = store.app.recorder, store.backend
    original, original_rows = recorder.select_events, backend.event_rows
    reads: list[tuple[int | None, int]] = []
    in_rows = False

    def select_events(originator_id: Any, **kwargs: Any) -> Any:
        events = original(originator_id, **kwargs)
        if not in_rows:
            reads.append((kwargs.get("gt"), len(events)))
        return events

    def event_rows(run_id: str, gt: int, lte: int) -> Any:
        nonlocal in_rows
        in_rows = True  # the backend may read them with select_events: one read
        try:
            rows = original_rows(run_id, gt, lte)
        finally:
            in_rows = False
        reads.append((gt, len(rows)))
        return rows

    recorder.select_events = select_events  # type: ignore[method-assign]
    backend.event_rows = event_rows  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        del recorder.select_events, backend.event_rows


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
        view = engine.store.load("long", journal=False)
    assert reads == [(latest_snapshot, history - latest_snapshot)]
    assert view.journal_elided == latest_snapshot
    with counting_reads(engine.store) as reads:
        loaded = engine.store.load("long")
    entered = loaded.phase_entered_version
    assert reads == [(latest_snapshot, history - latest_snapshot), (entered, latest_snapshot - entered)]
    full = project_run(None, engine.store.events("long"))
    assert comparable_state(loaded) == comparable_state(full)
    assert {k: v for k, v in comparable_state(view).items() if k not in ("journal", "journal_elided")} == {
        k: v for k, v in comparable_state(full).items() if k not in ("journal", "journal_elided")}

    await engine.signal("long", "go")
    with counting_reads(engine.store) as reads:
        done = await engine.resume("long")
    assert done.status == "completed" and done.output == STEPS
    # The tail after the snapshot, then the visit's events up to it: nothing from before the visit.
    assert reads and all(gt is not None and gt >= entered for gt, _ in reads)
    assert sum(n for _, n in reads) < history - entered + SNAPSHOT_EVERY


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


async def test_a_long_phase_visit_keeps_one_small_snapshot_every_interval(store_url: str) -> None:
    every, steps = 10, 400
    wf = one_long_visit(steps)
    engine = Engine(store_url, workflows=[wf], snapshot_every=every)
    suspended = await engine.run(wf, run_id="r")
    assert suspended.status == "waiting"
    store = engine.store
    snapshots = list(store.app.snapshots.get("r"))  # type: ignore[union-attr]
    versions = [s.originator_version for s in snapshots]
    assert versions == list(range(every, suspended.version + 1, every))
    events = store.events("r")
    for snapshot in snapshots:  # each equals the fold of the log up to its version, its journal left out
        folded = project_run(None, events[: snapshot.originator_version])
        assert snapshot.state == WorkflowRun.Snapshot.take(folded).state  # type: ignore[attr-defined]
        assert snapshot.state["journal"] == {}  # type: ignore[attr-defined]
    sizes = [len(store.app.mapper.to_stored_event(s).state) for s in snapshots]
    assert max(sizes) - min(sizes) < 100  # as large 390 events into the visit as 10 events into it

    reopened = Engine(store if store_url == "memory://" else store_url, workflows=[wf], snapshot_every=every)
    last = versions[-1]
    with counting_reads(reopened.store) as reads:
        view = await reopened.get_async("r")
    assert reads == [(last, suspended.version - last)]  # a view reads the latest snapshot and the tail
    assert view.steps == steps
    loaded = reopened.store.load("r")
    assert comparable_state(loaded) == comparable_state(project_run(None, events))
    await reopened.signal("r", "go")
    done = await reopened.resume("r")
    assert done.status == "completed" and done.output == steps


async def test_batched_commits_read_the_run_back_without_its_journal_for_a_snapshot_inside_a_batch(
    store_url: str,
) -> None:
    every, steps = 10, 400
    wf = one_long_visit(steps)  # batches of 3 steps cross the multiples of 10
    engine = Engine(store_url, workflows=[wf], snapshot_every=every)
    loads: list[tuple[int | None, bool]] = []
    load = engine.store.load

    def counted(run_id: str, version: int | None = None, *, journal: bool = True) -> WorkflowRun:
        loads.append((version, journal))
        return load(run_id, version, journal=journal)

    engine.store.load = counted  # type: ignore[method-assign]
    suspended = await engine.run(wf, run_id="r")
    assert suspended.status == "waiting"
    versions = [s.originator_version for s in engine.store.app.snapshots.get("r")]  # type: ignore[union-attr]
    assert versions == list(range(every, suspended.version + 1, every))
    # A snapshot due inside a batch is read back from the log, without the journal.
    read_back = [(v, j) for v, j in loads if v is not None]
    assert read_back and all(v in versions and not j for v, j in read_back)


async def test_a_compacted_failed_run_retried_after_later_snapshots_replays_its_visit(store_url: str) -> None:
    calls: list[int] = []
    failing = [True, True]

    def count(i: int) -> int:
        calls.append(i)
        return i

    def flaky() -> str:
        if failing.pop(0) if failing else False:
            raise ConnectionError("down")
        return "up"

    wf = Workflow("compacted", state=Count)

    @wf.phase(initial=True, to="finish")
    async def work(ctx: Context[Count]) -> None:
        for i in range(12):
            ctx.state.n += await ctx.step("count", count, i)
        await ctx.step("flaky", flaky, retry=RetryPolicy(max_attempts=1))

    @wf.phase(final=True)
    async def finish(ctx: Context[Count]) -> int:
        return ctx.state.n

    engine = Engine(store_url, workflows=[wf], snapshot_every=2)
    failed = await engine.run(wf, run_id="r")
    assert failed.status == "failed" and calls == list(range(12))
    engine.compact("r")  # the visit's events go; a snapshot with its whole journal stays
    again = await engine.retry("r")  # fails again: its events bring snapshots without the journal
    assert again.status == "failed" and calls == list(range(12))
    latest = max(s.originator_version for s in engine.store.app.snapshots.get("r"))  # type: ignore[union-attr]
    assert latest > engine.history("r")[1].version  # a snapshot taken after the compaction
    done = await engine.retry("r")
    assert done.status == "completed" and done.output == sum(range(12))
    assert calls == list(range(12))  # no recorded step ran again
