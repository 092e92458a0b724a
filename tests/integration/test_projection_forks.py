"""Token usage by day counts what was paid: a fork's copy of its parent's calls counts once."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from phaseledger import Context, Engine, Workflow
from phaseledger.engine.journal import current_journal
from phaseledger.projections import Reports


class Draft(BaseModel):
    text: str = ""


async def ask(ctx: Context[Any], name: str, tokens: int) -> Any:
    """A model request journaled the way the pydantic-ai integration records it."""
    usage = {"requests": 1, "input_tokens": tokens, "output_tokens": 1, "model": "m-test", "cost": 0.01}
    journal = current_journal()
    return await journal.call(journal.next_key(), "model", name, lambda: {"text": name},
                              outcome=lambda _: (usage, None))


def make_workflow() -> Workflow[Draft]:
    wf = Workflow("fork-usage", state=Draft)

    @wf.phase(initial=True, final=True)
    async def write(ctx: Context[Draft]) -> str:
        await ask(ctx, "outline", 100)
        await ctx.checkpoint("outlined")
        await ask(ctx, "draft", 10)
        return "done"

    return wf


async def test_forked_calls_are_paid_once_in_token_usage(store_url: str) -> None:
    wf = make_workflow()
    engine = Engine(store_url, workflows=[wf])
    await engine.run(wf, run_id="parent")
    point = next(c for c in engine.checkpoints("parent") if c.label == "outlined")
    fork = await engine.fork("parent", at=point.id, new_run_id="child")
    assert fork.status == "completed"
    assert fork.usage.input_tokens == 110  # the fork's own view: its log holds both calls

    reports = engine.reports
    reports.catch_up()
    usage = reports.token_usage(workflow="fork-usage")  # a row per day: the runs may straddle midnight
    totals = tuple(sum(getattr(u, f) for u in usage) for f in ("calls", "requests", "input_tokens"))
    assert totals == (3, 3, 120)  # 100 + 10 by the parent, 10 by the fork
    summaries = {s.run_id: s for s in reports.runs(workflow="fork-usage")}
    assert summaries["child"].input_tokens == 110 and summaries["child"].parent_run_id == "parent"
    if isinstance(reports, Reports):
        reports.rebuild()
        assert reports.token_usage(workflow="fork-usage") == usage
    engine.close()
