"""Comparing two runs of one workflow: where they diverge and what that changed.

``engine.compare(a, b)`` reads both logs and lines them up: the phase paths, the trail
of recorded calls (steps, model requests, tool calls, signals, clocks), the final (or
current) state, the outputs, and the tokens and cost each run spent. For a fork and its
parent it also names their common ancestor and separates the usage a fork *inherited*
(copied events, paid by the parent) from the usage it spent itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from phaseledger.domain.errors import InvalidInput
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.usage import add_usage
from phaseledger.domain.values import copy_json, strip_volatile
from phaseledger.engine.views import Usage, run_view

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine


class TrailItem(BaseModel):
    """One recorded call of a run, as compared."""

    version: int
    phase: str
    kind: str
    name: str
    result: Any = None
    error: dict[str, Any] | None = None

    def same_as(self, other: TrailItem) -> bool:
        """Same phase, call, result and error (versions may differ).

        Model and agent results are compared without their timestamps and agent-run ids,
        which differ between any two runs even when the model said the same thing.
        """
        mine, theirs = self.result, other.result
        if self.kind in _MODEL_KINDS:
            mine, theirs = strip_volatile(mine), strip_volatile(theirs)
        return (self.phase, self.kind, self.name, mine, self.error) == (
            other.phase, other.kind, other.name, theirs, other.error
        )


_MODEL_KINDS = frozenset({"model", "agent"})


class Difference(BaseModel):
    """A value that differs: where (a JSON path such as ``plan.steps[2]``) and the two values."""

    path: str
    a: Any = None
    b: Any = None


class Divergence(BaseModel):
    """The first recorded call where two runs part ways (None on a side that has no more calls)."""

    index: int
    """Position in the trail of recorded calls (0 is the first call of the run)."""
    a: TrailItem | None = None
    b: TrailItem | None = None


class RunSide(BaseModel):
    """One of the two runs compared."""

    run_id: str
    workflow_version: int
    status: str
    phase: str | None
    version: int
    phase_path: list[str]
    """The phases entered, in order (a fork's state-edit re-entry is not counted)."""
    calls: int
    """Recorded calls (steps, model requests, tool calls, signals, clocks)."""
    usage: Usage
    """Everything recorded in this run's log, including what a fork inherited."""
    inherited_tokens: int = 0
    """Tokens on events a fork copied from its parent: paid by the parent, not by this run."""
    inherited_cost: float = 0.0
    output: Any = None
    state: Any = None
    """The final state (completed runs) or the state at the current phase's entry."""

    @property
    def spent_tokens(self) -> int:
        """Tokens this run paid for itself."""
        return self.usage.total_tokens - self.inherited_tokens

    @property
    def spent_cost(self) -> float:
        """Cost this run paid for itself (0.0 when no prices were known)."""
        return round((self.usage.cost or 0.0) - self.inherited_cost, 10)


class RunComparison(BaseModel):
    """Where two runs of the same workflow diverge: paths, calls, state, output, tokens and cost."""

    workflow: str
    a: RunSide
    b: RunSide
    common_ancestor: dict[str, Any] | None = None
    """``{"run_id", "version"}``: the run and version both logs share (for forks), else None."""
    path_diverges_at: int | None = None
    """Index of the first phase that differs in the phase paths (None when they are equal)."""
    calls_diverge_at: Divergence | None = None
    """The first recorded call that differs (None when the trails are equal)."""
    state_differences: list[Difference] = Field(default_factory=list)
    output_differences: list[Difference] = Field(default_factory=list)
    tokens_delta: int = 0
    """``b`` minus ``a``: tokens each spent itself (inherited usage excluded)."""
    cost_delta: float = 0.0

    @property
    def identical(self) -> bool:
        """Same path, same calls and results, same state and output."""
        return (self.path_diverges_at is None and self.calls_diverge_at is None
                and not self.state_differences and not self.output_differences)


def differences(a: Any, b: Any, path: str = "") -> list[Difference]:
    """The leaf values that differ between two JSON documents, with their paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        found: list[Difference] = []
        for key in list(a) + [k for k in b if k not in a]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in a:
                found.append(Difference(path=sub, a=None, b=copy_json(b[key])))
            elif key not in b:
                found.append(Difference(path=sub, a=copy_json(a[key]), b=None))
            else:
                found.extend(differences(a[key], b[key], sub))
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        found = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found.extend(differences(x, y, f"{path}[{i}]"))
        return found
    return [] if a == b else [Difference(path=path or "$", a=copy_json(a), b=copy_json(b))]


def _side(engine: Engine, run_id: str) -> tuple[RunSide, list[TrailItem], WorkflowRun]:
    events = engine.store.events(run_id)
    run = engine.store.load(run_id)
    parent_version = (run.parent or {}).get("version", 0)
    path: list[str] = []
    trail: list[TrailItem] = []
    phase = ""
    inherited: dict[str, Any] = {}
    for event in events:
        if isinstance(event, WorkflowRun.PhaseEntered):
            phase = event.phase
            if event.reason != "fork":
                path.append(event.phase)
        elif isinstance(event, WorkflowRun.StepRecorded):
            trail.append(TrailItem(version=event.originator_version, phase=phase, kind=event.kind,
                                   name=event.name, result=event.result, error=event.error))
            if event.originator_version <= parent_version:
                add_usage(inherited, event.usage)
    view = run_view(run, None)
    side = RunSide(
        run_id=run_id, workflow_version=run.workflow_version, status=run.status, phase=run.phase,
        version=run.version, phase_path=path, calls=len(trail), usage=view.usage,
        inherited_tokens=inherited.get("input_tokens", 0) + inherited.get("output_tokens", 0),
        inherited_cost=inherited.get("cost", 0.0),
        output=copy_json(run.output), state=copy_json(run.phase_state),
    )
    return side, trail, run


def _chain(engine: Engine, run: WorkflowRun) -> list[tuple[str, int]]:
    """(run id, version) pairs from the run itself (at its head) up through its ancestors."""
    chain = [(run.id, run.version)]
    parent = run.parent
    while parent and all(parent["run_id"] != rid for rid, _ in chain):
        chain.append((parent["run_id"], parent["version"]))
        try:
            [started] = engine.store.events(parent["run_id"], lte=1)
        except Exception:  # a deleted ancestor ends the chain
            break
        assert isinstance(started, WorkflowRun.RunStarted)
        parent = started.parent
    return chain


def compare_runs(engine: Engine, run_a: str, run_b: str) -> RunComparison:
    """Compare two runs (see :class:`RunComparison`); raises :class:`InvalidInput` for two workflows."""
    a, trail_a, agg_a = _side(engine, run_a)
    b, trail_b, agg_b = _side(engine, run_b)
    if agg_a.workflow != agg_b.workflow:
        raise InvalidInput(
            f"runs {run_a!r} ({agg_a.workflow}) and {run_b!r} ({agg_b.workflow}) belong to different "
            "workflows; compare two runs of the same workflow"
        )
    chain_b = dict(_chain(engine, agg_b))
    common = None
    for rid, version in _chain(engine, agg_a):
        if rid in chain_b:
            common = {"run_id": rid, "version": min(version, chain_b[rid])}
            break
    path_at = next((i for i, (x, y) in enumerate(zip(a.phase_path, b.phase_path)) if x != y), None)
    if path_at is None and len(a.phase_path) != len(b.phase_path):
        path_at = min(len(a.phase_path), len(b.phase_path))
    divergence = None
    for i in range(max(len(trail_a), len(trail_b))):
        x = trail_a[i] if i < len(trail_a) else None
        y = trail_b[i] if i < len(trail_b) else None
        if x is None or y is None or not x.same_as(y):
            divergence = Divergence(index=i, a=x, b=y)
            break
    return RunComparison(
        workflow=agg_a.workflow, a=a, b=b, common_ancestor=common, path_diverges_at=path_at,
        calls_diverge_at=divergence, state_differences=differences(a.state, b.state),
        output_differences=differences(a.output, b.output),
        tokens_delta=b.spent_tokens - a.spent_tokens, cost_delta=round(b.spent_cost - a.spent_cost, 10),
    )
