"""Hypothesis strategies for workflows: random phase graphs with guards and random behaviour.

:func:`workflow_scripts` draws a :class:`WorkflowScript` (phases, guarded edges, the
steps each phase visit runs and the results they return, the next phase each visit
asks for); :func:`build_workflow` turns it into a real :class:`~phaseledger.Workflow`.
phaseledger's own property tests use them with :func:`~phaseledger.testing.check_replay`;
use them to fuzz an engine configuration, or as a model for strategies of your own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from phaseledger.domain.workflow import Workflow
from phaseledger.engine.context import Context
from phaseledger.testing.replay import StepCalls


class ScriptState(BaseModel):
    """The state of a generated workflow: what the phases did, in order."""

    visits: int = 0
    path: list[str] = []
    values: list[Any] = []


class ScriptResult(BaseModel):
    """A pydantic step result, to check that models come back as models on replay."""

    value: int
    label: str


JSON_LEAVES = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8) | st.floats(
    allow_nan=False, allow_infinity=False, width=32
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
STEP_RESULTS = JSON_VALUES | st.builds(ScriptResult, value=st.integers(0, 100), label=st.text(max_size=5))


@dataclass
class WorkflowScript:
    """A generated workflow definition and the behaviour of its handlers.

    Phases ``p0 .. p{n-1}`` form a chain (so every phase is reachable and the run can always
    finish); ``extra`` adds edges, each guarded by ``visits < limit`` or unguarded. A visit
    of phase i with attempt a runs ``steps[i][a % len]`` and asks for a next phase picked by
    ``choices[i][a % len]`` among the targets whose guard holds. After ``max_visits`` visits
    every phase follows the chain, so runs terminate.
    """

    phases: int
    extra: dict[int, dict[int, int | None]]
    steps: list[list[list[Any]]]
    choices: list[list[int]]
    max_visits: int = 12
    name: str = "generated"
    calls: StepCalls = field(default_factory=StepCalls, repr=False)


@st.composite
def workflow_scripts(draw: st.DrawFn, max_phases: int = 5, max_steps: int = 3) -> WorkflowScript:
    """Draw a random :class:`WorkflowScript`."""
    n = draw(st.integers(2, max_phases))
    extra: dict[int, dict[int, int | None]] = {}
    for source in range(n - 1):  # the last phase is final: no outgoing edges
        targets = draw(st.sets(st.integers(0, n - 1), max_size=2))
        extra[source] = {t: draw(st.none() | st.integers(1, 6)) for t in targets if t != source + 1}
    steps = [
        draw(st.lists(st.lists(STEP_RESULTS, max_size=max_steps), min_size=1, max_size=3)) for _ in range(n)
    ]
    choices = [draw(st.lists(st.integers(0, 5), min_size=1, max_size=3)) for _ in range(n)]
    return WorkflowScript(phases=n, extra=extra, steps=steps, choices=choices,
                          max_visits=draw(st.integers(n, n + 8)))


def _guard(limit: int) -> Any:
    def visits_below(state: ScriptState) -> bool:
        return state.visits < limit

    visits_below.__name__ = f"visits_below_{limit}"
    return visits_below


def build_workflow(script: WorkflowScript) -> Workflow[ScriptState]:
    """Turn a script into a real workflow whose step functions note each execution in ``script.calls``."""
    workflow: Workflow[ScriptState] = Workflow(script.name, state=ScriptState)
    names = [f"p{i}" for i in range(script.phases)]
    for i, name in enumerate(names):
        final = i == script.phases - 1
        targets: dict[str, Any] = {}
        if not final:
            targets[names[i + 1]] = None
            for target, limit in script.extra.get(i, {}).items():
                targets[names[target]] = None if limit is None else _guard(limit)
        workflow.phase(name, to=targets or None, initial=i == 0, final=final)(_handler(script, i, names, targets))
    return workflow


def _handler(script: WorkflowScript, i: int, names: list[str], targets: dict[str, Any]) -> Any:
    async def handler(ctx: Context[ScriptState]) -> Any:
        ctx.state.visits += 1
        ctx.state.path.append(names[i])
        plan = script.steps[i][(ctx.attempt - 1) % len(script.steps[i])]
        for j, value in enumerate(plan):
            result = await ctx.step(f"{names[i]}.s{j}", script.calls.track(_returns(value)))
            if isinstance(value, BaseModel):
                assert isinstance(result, type(value)), f"{type(result)} came back for {type(value)}"
                result = result.model_dump()
            ctx.state.values.append(result)
        if i == script.phases - 1:
            return {"visits": ctx.state.visits, "values": len(ctx.state.values)}
        if ctx.state.visits >= script.max_visits:
            return names[i + 1]
        allowed = [t for t, guard in targets.items() if guard is None or guard(ctx.state)]
        choice = script.choices[i][(ctx.attempt - 1) % len(script.choices[i])]
        return allowed[choice % len(allowed)]

    handler.__name__ = names[i]
    return handler


def _returns(value: Any) -> Any:
    def step() -> Any:
        return value.model_copy() if isinstance(value, BaseModel) else value

    return step
