"""Time travel on every store: checkpoints, state at a version, forks, lineage, compare, compaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import BaseModel

from phaseledger import (
    CheckpointNotFound,
    Context,
    Engine,
    HistoryCompacted,
    InvalidInput,
    InvalidToken,
    RetentionPolicy,
    RunExists,
    RunNotFinished,
    Workflow,
)

KEY = "integration-test-token-key-0123456789"


class Research(BaseModel):
    topic: str = ""
    plan: list[str] = []
    notes: list[str] = []


class Model:
    """A stand-in for a paid model: counts every call it answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.calls.append(prompt)
        return f"answer({prompt})"


def make_workflow(model: Model, events: list[tuple[str, str, str]] | None = None) -> Workflow[Research]:
    wf = Workflow(
        "research", state=Research,
        on_checkpoint=(lambda run, label: events.append(("checkpoint", run, label))) if events is not None else None,
        on_resume=(lambda run, why: events.append(("resume", run, why))) if events is not None else None,
    )

    @wf.phase(initial=True, to="execute")
    async def plan(ctx: Context[Research]) -> str:
        ctx.state.plan = [await ctx.step("plan", model, ctx.state.topic)]
        await ctx.checkpoint("planned")
        style = ctx.overrides.get("style", "")
        ctx.state.plan.append(await ctx.step("refine", model, ctx.state.plan[0] + style))
        return "execute"

    @wf.phase(to="done")
    async def execute(ctx: Context[Research]) -> str:
        for item in ctx.state.plan:
            ctx.state.notes.append(await ctx.step("do", model, item))
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Research]) -> dict:
        return {"notes": len(ctx.state.notes)}

    return wf


async def test_checkpoints_and_state_at_every_version(store_url: str) -> None:
    model = Model()
    events: list[tuple[str, str, str]] = []
    wf = make_workflow(model, events)
    engine = Engine(store_url, workflows=[wf])
    run = await engine.run(wf, {"topic": "ants"}, run_id="r")
    assert run.status == "completed"

    listed = engine.checkpoints("r")
    assert [(c.kind, c.label, c.phase) for c in listed] == [
        ("phase", "plan", "plan"), ("explicit", "planned", "plan"), ("phase", "execute", "execute"),
        ("phase", "done", "done"),
    ]
    assert all(c.state is None for c in listed)
    planned = engine.checkpoint("r", "planned")
    assert planned.id == listed[1].id and planned.version == listed[1].version
    assert planned.state == Research(topic="ants", plan=["answer(ants)"])
    assert engine.checkpoint("r", planned.version) == engine.checkpoint("r", planned.id) == planned
    assert engine.checkpoint("r", "execute").state.plan == ["answer(ants)", "answer(answer(ants))"]
    with pytest.raises(CheckpointNotFound, match="planned"):
        engine.checkpoint("r", "nope")
    # the workflow's callback saw the explicit checkpoint and each committed phase change
    # (plan -> execute, execute -> done, done -> completed)
    assert [e for e in events if e[0] == "checkpoint"] == [
        ("checkpoint", "r", "planned"), ("checkpoint", "r", "phase"), ("checkpoint", "r", "phase"),
        ("checkpoint", "r", "phase"),
    ]

    history = engine.history("r")
    assert [h.version for h in history] == list(range(1, run.version + 1))
    steps = [h for h in history if h.type == "StepRecorded"]
    assert all(h.duration is not None and h.duration >= 0 and h.tokens == 0 for h in steps)
    at_planned = engine.state_at("r", planned.version)
    assert at_planned.event == "CheckpointSaved" and at_planned.phase == "plan"
    assert [(j.kind, j.name) for j in at_planned.journal] == [("step", "plan"), ("checkpoint", "planned")]
    assert at_planned.recorded_state == planned.state
    assert at_planned.state == Research(topic="ants")  # the state at the phase entry
    final = engine.state_at("r", run.version)
    assert final.status == "completed" and final.output == {"notes": 2} and final.state == run.state
    for version in range(1, run.version + 1):
        assert engine.state_at("r", version).version == version
    with pytest.raises(InvalidInput, match=f"has {run.version} events"):
        engine.state_at("r", run.version + 1)


async def test_a_fork_replays_the_visit_in_progress_and_runs_the_rest_live(store_url: str) -> None:
    model = Model()
    events: list[tuple[str, str, str]] = []
    wf = make_workflow(model, events)
    engine = Engine(store_url, workflows=[wf], token_key=KEY)
    source = await engine.run(wf, {"topic": "ants"}, run_id="r")
    assert model.calls == ["ants", "answer(ants)", "answer(ants)", "answer(answer(ants))"]

    # same decisions: the fork equals the source, and only calls after the fork point run
    model.calls.clear()
    twin = await engine.fork("r", at="planned", new_run_id="twin")
    assert model.calls == ["answer(ants)", "answer(ants)", "answer(answer(ants))"]  # "ants" was replayed
    assert (twin.status, twin.output, twin.state) == (source.status, source.output, source.state)
    assert engine.compare("r", "twin").identical
    assert twin.parent is not None and twin.parent["run_id"] == "r"
    assert ("resume", "twin", "fork") in events

    # overrides reach the handler after the fork point
    model.calls.clear()
    token = engine.resume_token("r", at="planned")
    styled = await engine.fork(token, new_run_id="styled", overrides={"style": " briefly"})
    assert model.calls[0] == "answer(ants) briefly" and "ants" not in model.calls
    comparison = engine.compare("r", "styled")
    assert comparison.common_ancestor == {"run_id": "r", "version": engine.checkpoint("r", "planned").version}
    assert comparison.path_diverges_at is None
    assert comparison.calls_diverge_at is not None and comparison.calls_diverge_at.index == 1
    assert comparison.calls_diverge_at.a.name == comparison.calls_diverge_at.b.name == "refine"
    assert any(d.path == "plan[1]" for d in comparison.state_differences)
    assert comparison.output_differences == []
    assert styled.output == source.output

    # an edited state at an explicit checkpoint: the planner's answer is replayed, the rest is live
    model.calls.clear()
    edited = await engine.fork("r", at="planned", new_run_id="edited",
                               state=Research(topic="ants", plan=["dig tunnels"]))
    assert model.calls == ["dig tunnels", "dig tunnels", "answer(dig tunnels)"]
    assert edited.state.plan == ["dig tunnels", "answer(dig tunnels)"]
    # an edited state at a phase entry
    model.calls.clear()
    at_execute = engine.checkpoint("r", "execute")
    redo = await engine.fork("r", at=at_execute.id, new_run_id="redo", state={"topic": "ants", "plan": ["x"]})
    assert model.calls == ["x"] and redo.output == {"notes": 1}
    assert engine.compare("r", "redo").path_diverges_at is None

    lineage = engine.lineage("r")
    assert [c.run_id for c in lineage.children] == ["twin", "styled", "edited", "redo"]
    assert lineage.ancestors == [] and lineage.parent is None
    grandchild = await engine.fork("styled", new_run_id="grandchild", drive=False)
    assert grandchild.status == "running"
    assert [a.run_id for a in engine.lineage("grandchild").ancestors] == ["styled", "r"]
    assert [d.run_id for d in engine.lineage("r").descendants] == ["twin", "styled", "edited", "redo", "grandchild"]
    # a fork of a completed run branches just before its completion; its final phase replays
    assert engine.lineage("grandchild").ancestors[0].version == styled.version - 1
    model.calls.clear()
    done = await engine.resume("grandchild")
    assert (done.status, done.output, done.state) == (styled.status, styled.output, styled.state)
    assert model.calls == []

    with pytest.raises(RunExists):
        await engine.fork("r", new_run_id="twin")
    with pytest.raises(InvalidInput, match="checkpoint"):
        await engine.fork("r", at=3, state={"topic": "z"})  # version 3 is a step, not a checkpoint
    with pytest.raises(InvalidInput, match="version 2"):
        await engine.fork("r", at=1)
    with pytest.raises(InvalidInput, match="either"):
        await engine.fork(token, at=2)


async def test_forks_of_a_suspended_or_failed_run(store_url: str) -> None:
    wf = Workflow("approval", state=Research)
    attempts: list[str] = []

    def flaky(topic: str) -> str:
        attempts.append(topic)
        if topic == "bad":
            raise ValueError("the provider refused")
        return topic.upper()

    @wf.phase(initial=True, to="done")
    async def ask(ctx: Context[Research]) -> str:
        ctx.state.notes.append(await ctx.step("draft", flaky, ctx.overrides.get("topic", ctx.state.topic)))
        ctx.state.plan.append(str(await ctx.wait_for_signal("approve")))
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Research]) -> list[str]:
        return ctx.state.plan

    engine = Engine(store_url, workflows=[wf])
    waiting = await engine.run(wf, {"topic": "ok"}, run_id="w")
    assert waiting.status == "waiting"
    fork = await engine.fork("w", new_run_id="w2")
    assert fork.status == "waiting" and attempts == ["ok"]  # the draft was replayed, the wait resumed
    await engine.signal("w2", "approve", "yes")
    assert (await engine.resume("w2")).output == ["yes"]
    assert engine.get("w").status == "waiting"  # the source is untouched

    failed = await engine.run(wf, {"topic": "bad"}, run_id="f")
    assert failed.status == "failed"
    # a fork at the failure re-enters the failed step live, here with another input
    rescued = await engine.fork("f", new_run_id="f2", overrides={"topic": "fine"})
    assert rescued.status == "waiting" and attempts[-1] == "fine"


async def test_compaction_keeps_what_finished_runs_need(store_url: str) -> None:
    model = Model()
    wf = make_workflow(model)
    engine = Engine(store_url, workflows=[wf], snapshot_every=5)
    run = await engine.run(wf, {"topic": "ants"}, run_id="r")
    fork = await engine.fork("r", at="planned", new_run_id="child")
    before_view = engine.get("r")
    head_state = engine.state_at("r", run.version)

    waiting_wf = Workflow("waiter", state=Research)

    @waiting_wf.phase(initial=True, to="end")
    async def wait(ctx: Context[Research]) -> str:
        await ctx.wait_for_signal("go")
        return "end"

    @waiting_wf.phase(final=True)
    async def end(ctx: Context[Research]) -> None:
        return None

    engine.register(waiting_wf)
    await engine.run(waiting_wf, run_id="open")
    with pytest.raises(RunNotFinished, match="open"):
        engine.compact("open")

    report = engine.compact("r", before=8)
    assert report.snapshot_version == 8 and report.removed_events == 6
    assert [h.version for h in engine.history("r")] == [1, *range(8, run.version + 1)]
    assert engine.get("r").model_dump(exclude={"updated_on"}) == before_view.model_dump(exclude={"updated_on"})
    assert engine.state_at("r", 9).version == 9
    with pytest.raises(HistoryCompacted, match="version 8"):
        engine.state_at("r", 4)
    with pytest.raises(HistoryCompacted):
        await engine.fork("r", at=4)
    with pytest.raises(CheckpointNotFound):
        engine.checkpoint("r", "planned")

    report = engine.compact("r")
    assert report.snapshot_version == run.version and report.removed_events == run.version - 8
    assert [h.version for h in engine.history("r")] == [1, run.version]
    assert engine.state_at("r", run.version).model_dump(exclude={"updated_on", "at"}) == \
        head_state.model_dump(exclude={"updated_on", "at"})
    assert engine.compact("r").removed_events == 0  # idempotent
    # lineage and the fork survive the parent's compaction
    assert [c.run_id for c in engine.lineage("r").children] == ["child"]
    assert engine.get("child").model_dump(exclude={"updated_on"}) == fork.model_dump(exclude={"updated_on"})
    assert {r.run_id for r in engine.runs()} == {"r", "child", "open"}

    # retention: finished runs are compacted or deleted; runs with forks and unfinished runs stay
    report = engine.apply_retention(RetentionPolicy(delete_after=timedelta(0)))
    assert report.unfinished == 1
    assert "child" in report.deleted and "r" not in report.deleted
    assert {r.run_id for r in engine.runs()} >= {"r", "open"} and not engine.store.exists("child")
    assert engine.get("open").status == "waiting"
    assert engine.lineage("r").children == []


async def test_tokens_of_another_sqlite_file_are_refused(tmp_path) -> None:
    model = Model()
    wf = make_workflow(model)
    first = Engine(f"sqlite:///{tmp_path}/a.db", workflows=[wf], token_key=KEY)
    second = Engine(f"sqlite:///{tmp_path}/b.db", workflows=[wf], token_key=KEY)
    await first.run(wf, {"topic": "x"}, run_id="r")
    await second.run(wf, {"topic": "x"}, run_id="r")
    token = first.resume_token("r", at=2)
    with pytest.raises(InvalidToken, match="another store"):
        await second.fork(token, new_run_id="f")
    assert not second.store.exists("f")
    # the same file opened again (a new engine, a new process) keeps its identity
    reopened = Engine(f"sqlite:///{tmp_path}/a.db", workflows=[wf], token_key=KEY)
    assert (await reopened.fork(token, new_run_id="f", drive=False)).parent["version"] == 2
    for engine in (first, second, reopened):
        engine.close()
