"""Runs are pinned to the workflow version they started with; one engine runs several versions."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, UnknownWorkflow, Workflow, WorkflowDefinitionError


class Ticket(BaseModel):
    text: str = ""
    handled_by: str = ""


def ticket_workflow(version: int) -> Workflow[Ticket]:
    wf = Workflow("ticket", state=Ticket, version=version)

    @wf.phase(initial=True, to="answer")
    async def triage(ctx: Context[Ticket]) -> None:
        ctx.state.handled_by = await ctx.step(f"triage_v{version}", lambda: f"v{version}")
        await ctx.wait_for_signal("approved")

    @wf.phase(final=True)
    async def answer(ctx: Context[Ticket]) -> str:
        return await ctx.step("answer", lambda: f"answered by v{version} ({ctx.state.handled_by})")

    return wf


async def test_each_run_resumes_with_its_own_version(store_url: str) -> None:
    v1, v2 = ticket_workflow(1), ticket_workflow(2)
    engine = Engine(store_url, workflows=[v1, v2])
    old = await engine.run(v1, {"text": "old"}, run_id="old")
    new = await engine.run(v2, {"text": "new"}, run_id="new")
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    assert engine.registry.get("ticket").version == 2  # the latest, for new runs

    for run_id in ("old", "new"):
        await engine.signal(run_id, "approved")
        await engine.resume(run_id)
    assert engine.get("old").output == "answered by v1 (v1)"
    assert engine.get("new").output == "answered by v2 (v2)"


async def test_resuming_a_run_of_an_unregistered_version_says_which_is_needed(store_url: str) -> None:
    v1 = ticket_workflow(1)
    engine = Engine(store_url, workflows=[v1])
    await engine.run(v1, run_id="pinned")
    before = engine.history("pinned")

    upgraded = Engine(engine.store if store_url == "memory://" else store_url, workflows=[ticket_workflow(2)])
    for action in (lambda: upgraded.resume("pinned"), lambda: upgraded.signal("pinned", "approved")):
        with pytest.raises(UnknownWorkflow) as raised:
            await action()
        message = str(raised.value)
        assert "'ticket' version 1 is not registered" in message
        assert "registered versions: [2]" in message and "register that version" in message
    assert upgraded.history("pinned") == before  # nothing appended

    upgraded.register(ticket_workflow(1))
    await upgraded.signal("pinned", "approved")
    assert (await upgraded.resume("pinned")).output == "answered by v1 (v1)"


def test_two_definitions_of_one_version_are_refused() -> None:
    engine = Engine("memory://", workflows=[ticket_workflow(1)])
    with pytest.raises(WorkflowDefinitionError, match="bump the version"):
        engine.register(ticket_workflow(1))
    with pytest.raises(UnknownWorkflow, match="'nope' is not registered"):
        engine.registry.get("nope")
