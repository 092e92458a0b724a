"""Workflow definitions: phases, guarded transitions and a pydantic state model.

A :class:`Workflow` is data, checked when it is registered, and compiled into a
model-less ``transitions`` state machine. The machine is consulted only to decide a live
phase change; replay never asks it, so a run's history always loads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from transitions import EventData, Machine

from phaseledger.domain.diagram import Edge, StateDiagram, guard_label
from phaseledger.domain.errors import InvalidTransition, WorkflowDefinitionError
from phaseledger.domain.retry import RetryPolicy

StateT = TypeVar("StateT", bound=BaseModel)
Guard = Callable[[Any], bool]
Handler = Callable[[Any], Awaitable[Any]]
"""``async def handler(ctx: phaseledger.Context[State]) -> str | None`` (the domain does not import the engine)."""


@dataclass(frozen=True)
class Phase:
    """One phase of a workflow: its handler and the phases it may lead to."""

    name: str
    handler: Handler
    targets: Mapping[str, Guard | None]
    """Allowed next phases, each with an optional guard on the state."""
    initial: bool = False
    final: bool = False
    retry: RetryPolicy | None = None
    """Default retry policy of the steps of this phase."""
    timeout: float | None = None
    """Seconds a visit of this phase may take, from its entry (recorded): its deadline."""


def _check_timeout(timeout: float | None, where: str) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise WorkflowDefinitionError(f"{where}: timeout must be a number of seconds > 0, got {timeout!r}")


def _targets(to: str | Iterable[str] | Mapping[str, Guard | None] | None) -> dict[str, Guard | None]:
    if to is None:
        return {}
    if isinstance(to, str):
        return {to: None}
    if isinstance(to, Mapping):
        for target, guard in to.items():
            if guard is not None and not callable(guard):
                raise WorkflowDefinitionError(f"the guard for {target!r} must be callable or None")
        return dict(to)
    return {target: None for target in to}


def _guard_condition(guard: Guard, dest: str) -> Callable[[EventData], bool]:
    def condition(event: EventData) -> bool:
        return bool(guard(event.kwargs["state"]))

    name = getattr(guard, "__name__", "guard")
    condition.__name__ = f"guard_{dest}" if name == "<lambda>" else name
    return condition


class Workflow(Generic[StateT]):
    """A multi-phase workflow: a state machine of phases over a pydantic state model.

    Declare phases with the :meth:`phase` decorator; register the workflow with an
    :class:`~phaseledger.Engine`. ``version`` pins runs: a run always resumes with the
    version it started with, so keep old versions registered while their runs finish.
    """

    def __init__(
        self,
        name: str,
        *,
        state: type[StateT],
        version: int = 1,
        retry: RetryPolicy | None = None,
        checkpoint_every_n_steps: int | None = None,
        signals: Mapping[str, type[BaseModel] | None] | None = None,
        strict_signals: bool = True,
        timeout: float | None = None,
        description: str = "",
        on_checkpoint: Callable[[str, str], Any] | None = None,
        on_resume: Callable[[str, str], Any] | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise WorkflowDefinitionError("a workflow needs a non-empty name")
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise WorkflowDefinitionError(f"workflow {name!r}: state must be a pydantic model class")
        if version < 1:
            raise WorkflowDefinitionError(f"workflow {name!r}: version must be >= 1")
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise WorkflowDefinitionError(f"workflow {name!r}: checkpoint_every_n_steps must be >= 1")
        self.name = name
        self.state_model = state
        self.version = version
        self.retry = retry
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.signals: dict[str, type[BaseModel] | None] = dict(signals or {})
        """The signals runs take: name -> payload model (None: plain JSON)."""
        self.strict_signals = strict_signals
        """When signals are declared, refuse any other name (False: take any name, as before)."""
        _check_timeout(timeout, f"workflow {name!r}")
        self.timeout = timeout
        """Seconds a run may take from its start (recorded): its deadline (None: no deadline)."""
        for signal_name, model in self.signals.items():
            if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise WorkflowDefinitionError(
                    f"workflow {name!r}: signal {signal_name!r} must map to a pydantic model class or None")
        self.description = description
        self.on_checkpoint = on_checkpoint
        """Called as ``on_checkpoint(run_id, label)`` after each phase entry ("phase") and ``ctx.checkpoint``."""
        self.on_resume = on_resume
        """Called as ``on_resume(run_id, reason)`` when a run of this workflow is resumed or forked."""
        self.phases: dict[str, Phase] = {}

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, version={self.version}, phases={list(self.phases)})"

    @property
    def key(self) -> tuple[str, int]:
        """``(name, version)``: how the engine tells workflow versions apart."""
        return (self.name, self.version)

    def phase(
        self,
        name: str | None = None,
        *,
        to: str | Iterable[str] | Mapping[str, Guard | None] | None = None,
        initial: bool = False,
        final: bool = False,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare a phase; the decorated ``async def handler(ctx)`` runs when it is entered.

        ``to`` is one phase, a list, or a mapping of phase to guard (a callable on the state,
        or None). The handler returns the next phase, or None to let the guards choose (see
        :meth:`next_phase`); a final phase has no ``to`` and its return value becomes the
        run's output. A phase that lets its guards choose keeps one unguarded target at most,
        its "else" branch (more make ``None`` ambiguous: the handler must then return a name).
        ``timeout`` is the phase's deadline in seconds from each entry (see
        :class:`~phaseledger.DeadlineExceeded`).
        """
        if callable(name):
            raise WorkflowDefinitionError("use @workflow.phase(...) with parentheses")
        _check_timeout(timeout, f"workflow {self.name!r}: phase {name or '(unnamed)'!r}")

        def decorator(handler: Handler) -> Handler:
            phase_name = name or handler.__name__
            if phase_name in self.phases:
                raise WorkflowDefinitionError(f"workflow {self.name!r}: phase {phase_name!r} is defined twice")
            if final and to:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: final phase {phase_name!r} cannot have transitions (to=...)"
                )
            self.phases[phase_name] = Phase(
                phase_name, handler, _targets(to), initial=initial, final=final, retry=retry, timeout=timeout
            )
            self.__dict__.pop("machine", None)
            return handler

        return decorator

    @property
    def initial_phase(self) -> str:
        """The phase every run starts in."""
        self.validate()
        return next(p.name for p in self.phases.values() if p.initial)

    def validate(self) -> None:
        """Check the definition; raise :class:`WorkflowDefinitionError` saying what is wrong."""
        where = f"workflow {self.name!r} v{self.version}"
        if not self.phases:
            raise WorkflowDefinitionError(f"{where} has no phases: declare them with @workflow.phase()")
        initials = [p.name for p in self.phases.values() if p.initial]
        if len(initials) != 1:
            raise WorkflowDefinitionError(
                f"{where} needs exactly one initial phase (initial=True), found {initials or 'none'}"
            )
        if not any(p.final for p in self.phases.values()):
            raise WorkflowDefinitionError(f"{where} needs at least one final phase (final=True)")
        for phase in self.phases.values():
            for target in phase.targets:
                if target not in self.phases:
                    raise WorkflowDefinitionError(
                        f"{where}: phase {phase.name!r} leads to {target!r}, which is not defined; "
                        f"defined phases are {sorted(self.phases)}"
                    )
            if not phase.final and not phase.targets:
                raise WorkflowDefinitionError(
                    f"{where}: phase {phase.name!r} is a dead end: give it to=... or mark it final=True"
                )
        reachable, frontier = {initials[0]}, [initials[0]]
        while frontier:
            for target in self.phases[frontier.pop()].targets:
                if target not in reachable:
                    reachable.add(target)
                    frontier.append(target)
        unreachable = sorted(set(self.phases) - reachable)
        if unreachable:
            raise WorkflowDefinitionError(f"{where}: phases {unreachable} cannot be reached from {initials[0]!r}")

    def _transition_specs(self) -> list[dict[str, Any]]:
        return [
            {
                "trigger": target,
                "source": phase.name,
                "dest": target,
                "conditions": [_guard_condition(guard, target)] if guard else [],
            }
            for phase in self.phases.values()
            for target, guard in phase.targets.items()
        ]

    @cached_property
    def machine(self) -> Machine:
        """The shared, model-less ``transitions`` machine that validates phase changes."""
        self.validate()
        return Machine(
            model=None,
            states=list(self.phases),
            initial=self.initial_phase,
            transitions=self._transition_specs(),
            auto_transitions=False,
            send_event=True,
        )

    def next_phase(self, current: str, requested: str | None, state: BaseModel) -> str:
        """Decide the phase after ``current`` from what its handler returned and the state.

        Guards are checked against the state as the handler left it. A returned name is an
        explicit choice that its guard must allow. ``None`` lets the guards choose: the
        targets in declaration order, the first whose guard holds; a target without a guard
        is the "else" branch, taken when no guarded target holds (or the only target).
        Raises :class:`InvalidTransition` naming the guards that held. Pure: nothing changes.
        """
        phase = self.phases[current]
        if requested is None:
            return self._guards_choose(phase, state)
        if not isinstance(requested, str):
            raise InvalidTransition(
                f"phase {current!r} of workflow {self.name!r} returned {requested!r}: "
                "a handler returns the name of the next phase (str) or None to let the guards choose"
            )
        if requested not in phase.targets:
            raise InvalidTransition(
                f"workflow {self.name!r} does not allow {current!r} -> {requested!r}; "
                f"from {current!r} it may go to {sorted(phase.targets)}"
            )
        if self._guard_holds(current, requested, state):
            return requested
        raise InvalidTransition(
            f"workflow {self.name!r}: the guard of {current!r} -> {requested!r} is false for the state the "
            f"handler left; {self._holding(phase, state)}. Return one of those, or None to let the guards choose"
        )

    def _guard_holds(self, current: str, target: str, state: BaseModel) -> bool:
        machine = self.machine
        event = machine.events[target]
        data = EventData(machine.get_state(current), event, machine, None, args=(), kwargs={"state": state})
        return any(all(c.check(data) for c in t.conditions) for t in event.transitions.get(current, []))

    def _guards_choose(self, phase: Phase, state: BaseModel) -> str:
        guarded = [t for t, guard in phase.targets.items() if guard is not None]
        otherwise = [t for t, guard in phase.targets.items() if guard is None]
        for target in guarded:
            if self._guard_holds(phase.name, target, state):
                return target
        if len(otherwise) == 1:
            return otherwise[0]
        if not otherwise:
            raise InvalidTransition(
                f"workflow {self.name!r}: phase {phase.name!r} returned None and none of its guards holds for the "
                f"state the handler left (checked {guarded}); give one target no guard (to={{..., 'name': None}}) "
                "as the else branch, or return a phase name"
            )
        raise InvalidTransition(
            f"phase {phase.name!r} of workflow {self.name!r} returned None, "
            + (f"no guard of {guarded} holds, " if guarded else "")
            + f"and it may lead to {otherwise} without a guard: return the name of the next phase"
        )

    def _holding(self, phase: Phase, state: BaseModel) -> str:
        held = [t for t in phase.targets if self._guard_holds(phase.name, t, state)]
        return f"guards that hold: {held}" if held else "no guard of this phase holds"

    def edges(self) -> list[Edge]:
        """Every allowed phase change, in definition order, with how its guard reads in a diagram."""
        return [
            Edge(phase.name, target, guard_label(guard) if guard else None)
            for phase in self.phases.values()
            for target, guard in phase.targets.items()
        ]

    def diagram(self, *, active: str | None = None) -> str:
        """The state machine as Mermaid ``stateDiagram-v2`` text (no system packages needed).

        Edges are labelled by their guards only (``[needs_review]``, a short lambda's
        expression, or ``[guard]``). ``active`` highlights one phase, for example the phase
        a run is in. Other formats draw the same :class:`~phaseledger.domain.diagram.StateDiagram`.
        """
        return StateDiagram.of(self, active=active).mermaid()


@dataclass
class WorkflowRegistry:
    """The workflows an engine can run, by name and version."""

    workflows: dict[tuple[str, int], Workflow[Any]] = field(default_factory=dict)

    def register(self, workflow: Workflow[Any]) -> None:
        """Validate and add a workflow version; re-registering the same object is a no-op."""
        if not isinstance(workflow, Workflow):
            raise WorkflowDefinitionError(f"expected a Workflow, got {workflow!r}")
        workflow.validate()
        existing = self.workflows.get(workflow.key)
        if existing is not None and existing is not workflow:
            raise WorkflowDefinitionError(
                f"two different definitions of workflow {workflow.name!r} version {workflow.version} "
                "were registered: bump the version of the new one"
            )
        self.workflows[workflow.key] = workflow

    def get(self, name: str, version: int | None = None) -> Workflow[Any]:
        """The registered workflow (the latest version when ``version`` is None)."""
        from phaseledger.domain.errors import UnknownWorkflow

        if version is None:
            versions = [v for (n, v) in self.workflows if n == name]
            if not versions:
                raise UnknownWorkflow(
                    f"workflow {name!r} is not registered; registered: {self.names() or 'none'}"
                )
            version = max(versions)
        try:
            return self.workflows[(name, version)]
        except KeyError:
            have = sorted(v for (n, v) in self.workflows if n == name)
            raise UnknownWorkflow(
                f"workflow {name!r} version {version} is not registered (registered versions: "
                f"{have or 'none'}); register that version to resume its runs"
            ) from None

    def names(self) -> list[str]:
        """Registered workflows as ``name@version`` strings."""
        return [f"{n}@{v}" for (n, v) in sorted(self.workflows)]
