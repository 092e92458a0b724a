"""Property: for any agent script and any crash point, the resumed run equals the uninterrupted one.

Scripts are random sequences of tool calls (several in one turn run in parallel), a tool
that asks the model for a retry, transient failures retried by the retry policy, and text
or structured output. The crash is a hard one (the process state unwinds, nothing
uncommitted survives, a new engine resumes from the store) or an exception that fails the
run (``engine.retry`` continues it), before or after the side effect it interrupts.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phaseledger import Engine, RetryPolicy
from tests.test_agent_kit import TOOLS, Outcome, Recorder, Script, script_workflow, scripted_agent

FAST = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)

scripts = st.builds(
    Script,
    turns=st.lists(st.lists(st.tuples(st.sampled_from(TOOLS), st.integers(0, 40)), min_size=1, max_size=4), max_size=4),
    structured=st.booleans(),
)


async def _run(script: Script, recorder: Recorder, engine: Engine | None = None) -> tuple[Engine, dict[str, Outcome], Any]:
    outcomes: dict[str, Outcome] = {}
    workflow = script_workflow(scripted_agent(script, recorder, model_retry=FAST, tool_retry=FAST), outcomes)
    engine = Engine(engine.store if engine else "memory://", workflows=[workflow])
    return engine, outcomes, workflow


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=scripts, data=st.data())
async def test_resume_after_any_crash_equals_the_uninterrupted_run(script: Script, data: st.DataObject) -> None:
    transient = set(data.draw(st.lists(st.integers(1, script.side_effects), max_size=2), label="transient"))
    crash_at = data.draw(st.integers(1, script.side_effects), label="crash_at")
    crash_after = data.draw(st.booleans(), label="crash_after")
    hard = data.draw(st.booleans(), label="hard")

    engine, outcomes, workflow = await _run(script, Recorder(transient=set(transient)))
    clean = await engine.run(workflow, {}, run_id="r")
    assert clean.status == "completed", clean.error
    expected = outcomes["r"]

    recorder = Recorder(crash_at=crash_at, crash_after=crash_after, transient=set(transient),
                        crash_mode="unwind" if hard else "exception")
    engine, outcomes, workflow = await _run(script, recorder)
    if hard:
        try:
            await engine.run(workflow, {}, run_id="r")
        except BaseException:  # the hard crash (possibly inside an exception group of parallel tools)
            pass
    else:
        failed = await engine.run(workflow, {}, run_id="r")
        assert failed.status == "failed"
    recorded = engine.store.load("r").journal
    recorder.crash_at = None
    before = dict(recorder.calls)
    resumed_engine, _, _ = await _run(script, recorder, engine)
    resumed_engine.registry.workflows[workflow.key] = workflow
    run = await (resumed_engine.resume("r") if hard else resumed_engine.retry("r"))

    assert run.status == "completed", run.error
    assert outcomes["r"] == expected
    assert run.usage.requests == expected.usage["requests"]
    for key, entry in recorded.items():  # nothing recorded ran again
        if entry.kind == "tool" and not entry.error:
            what = f"tool:{key.split(':')[-1]}"
            assert recorder.calls[what] == before[what] == 1
