"""checkpoint_every_n_steps: step events are committed in batches; errors and phase changes at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, PhaseledgerError, RetryPolicy, Store, Workflow, WorkflowDefinitionError
from phaseledger.testing.replay import comparable_events


class CountingStore(Store):
    """A memory store that notes the event types of every append (one transaction each)."""

    def __init__(self) -> None:
        super().__init__("memory://")
        self.appends: list[list[str]] = []

    def append(self, events: Sequence[Any], **kwargs: Any) -> int:
        return self._noted(events, super().append(events, **kwargs))

    async def append_async(self, events: Sequence[Any], **kwargs: Any) -> int:
        return self._noted(events, await super().append_async(events, **kwargs))

    def _noted(self, events: Sequence[Any], result: int) -> int:
        if events:
            self.appends.append([type(e).__name__ for e in events])
        return result


class S(BaseModel):
    values: list[int] = []


def make_workflow(batch: int | None = None, steps: int = 7) -> Workflow[S]:
    wf = Workflow("batched", state=S, checkpoint_every_n_steps=batch)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[S]) -> None:
        for i in range(steps):
            ctx.state.values.append(await ctx.step("square", lambda i=i: i * i))

    @wf.phase(final=True)
    async def done(ctx: Context[S]) -> int:
        return sum(ctx.state.values)

    return wf


def step_batches(store: CountingStore) -> list[int]:
    return [batch.count("StepRecorded") for batch in store.appends if "StepRecorded" in batch]


async def test_engine_default_commits_every_step() -> None:
    store = CountingStore()
    run = await Engine(store).run(make_workflow(), run_id="r")
    assert run.output == sum(i * i for i in range(7))
    assert step_batches(store) == [1] * 7


async def test_batches_of_n_and_a_phase_change_commits_at_once() -> None:
    store = CountingStore()
    await Engine(store).run(make_workflow(batch=3), run_id="r")
    assert step_batches(store) == [3, 3, 1]
    assert store.appends[3] == ["StepRecorded", "PhaseEntered"]  # the 7th step went with the phase change


async def test_engine_wide_batching_and_the_workflow_override() -> None:
    store = CountingStore()
    await Engine(store, checkpoint_every_n_steps=4).run(make_workflow(), run_id="engine")
    assert step_batches(store) == [4, 3]
    store.appends.clear()
    await Engine(store, checkpoint_every_n_steps=4).run(make_workflow(batch=2), run_id="override")
    assert step_batches(store) == [2, 2, 2, 1]
    with pytest.raises(PhaseledgerError):
        Engine(store, checkpoint_every_n_steps=0)
    with pytest.raises(WorkflowDefinitionError):
        Workflow("bad", state=S, checkpoint_every_n_steps=0)


async def test_a_failed_attempt_commits_at_once_with_the_steps_before_it() -> None:
    store = CountingStore()
    seen_when_retrying: list[list[str]] = []
    attempts = {"n": 0}

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("reset")
        seen_when_retrying.append([type(e).__name__ for e in store.events("r")])
        return "ok"

    wf = Workflow("flaky", state=S, checkpoint_every_n_steps=10)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> str:
        await ctx.step("first", lambda: 1)
        return await ctx.step("flaky", flaky, retry=RetryPolicy(initial_delay=0.0, jitter=False))

    await Engine(store).run(wf, run_id="r")
    assert store.appends[1] == ["StepRecorded", "StepAttemptFailed"]
    assert seen_when_retrying == [["RunStarted", "PhaseEntered", "StepRecorded", "StepAttemptFailed"]]


@pytest.mark.parametrize("batch", [2, 3, 5, 100])
async def test_batched_runs_record_the_same_log_and_result_as_unbatched(batch: int) -> None:
    reference_store, batched_store = CountingStore(), CountingStore()
    reference = await Engine(reference_store).run(make_workflow(steps=11), run_id="r")
    batched = await Engine(batched_store).run(make_workflow(batch=batch, steps=11), run_id="r")
    assert (batched.output, batched.state, batched.version) == (reference.output, reference.state, reference.version)
    assert comparable_events(batched_store.events("r")) == comparable_events(reference_store.events("r"))
    assert len(batched_store.appends) < len(reference_store.appends)
