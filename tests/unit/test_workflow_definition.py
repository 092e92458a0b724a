"""Workflow definitions are checked when registered and compiled to a transitions machine."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from phaseledger import Engine, InvalidTransition, Workflow, WorkflowDefinitionError


class S(BaseModel):
    n: int = 0


async def noop(ctx) -> None:
    return None


def linear(name: str = "wf", version: int = 1) -> Workflow[S]:
    wf = Workflow(name, state=S, version=version)
    wf.phase("a", initial=True, to="b")(noop)
    wf.phase("b", to={"a": lambda s: s.n < 2, "c": None})(noop)
    wf.phase("c", final=True)(noop)
    return wf


def test_phase_name_defaults_to_the_function_name() -> None:
    wf = Workflow("wf", state=S)

    @wf.phase(initial=True, to="done")
    async def planning(ctx) -> None: ...

    @wf.phase(final=True)
    async def done(ctx) -> None: ...

    assert list(wf.phases) == ["planning", "done"]
    assert wf.initial_phase == "planning"
    assert wf.phases["planning"].targets == {"done": None}


def test_to_accepts_one_phase_a_list_or_a_mapping_of_guards() -> None:
    wf = Workflow("wf", state=S)
    guard = lambda s: s.n > 0  # noqa: E731
    wf.phase("a", initial=True, to=["b", "c"])(noop)
    wf.phase("b", to={"c": guard, "a": None})(noop)
    wf.phase("c", final=True)(noop)
    wf.validate()
    assert wf.phases["a"].targets == {"b": None, "c": None}
    assert wf.phases["b"].targets == {"c": guard, "a": None}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda wf: None, "has no phases"),
        (lambda wf: (wf.phase("a", to="b")(noop), wf.phase("b", final=True)(noop)), "exactly one initial phase"),
        (lambda wf: (wf.phase("a", initial=True, to="b")(noop), wf.phase("b", initial=True, final=True)(noop)),
         "exactly one initial phase"),
        (lambda wf: (wf.phase("a", initial=True, to="b")(noop), wf.phase("b", to="a")(noop)),
         "at least one final phase"),
        (lambda wf: (wf.phase("a", initial=True, to="x")(noop), wf.phase("b", final=True)(noop)),
         "leads to 'x', which is not defined"),
        (lambda wf: (wf.phase("a", initial=True, to="c")(noop), wf.phase("b")(noop), wf.phase("c", final=True)(noop)),
         "dead end"),
        (lambda wf: (wf.phase("a", initial=True, to="c")(noop), wf.phase("b", to="c")(noop),
                     wf.phase("c", final=True)(noop)), "cannot be reached"),
    ],
)
def test_invalid_definitions_are_refused_when_registered(build, message: str) -> None:
    wf = Workflow("wf", state=S)
    build(wf)
    with pytest.raises(WorkflowDefinitionError, match=message):
        Engine("memory://", workflows=[wf])


def test_errors_found_while_declaring() -> None:
    wf = Workflow("wf", state=S)
    wf.phase("a", initial=True, to="b")(noop)
    with pytest.raises(WorkflowDefinitionError, match="defined twice"):
        wf.phase("a", to="b")(noop)
    with pytest.raises(WorkflowDefinitionError, match="cannot have transitions"):
        wf.phase("z", final=True, to="a")(noop)
    with pytest.raises(WorkflowDefinitionError, match="pydantic model"):
        Workflow("bad", state=dict)  # type: ignore[type-var]
    with pytest.raises(WorkflowDefinitionError, match="guard"):
        wf.phase("y", to={"a": "not callable"})(noop)  # type: ignore[dict-item]


def test_two_definitions_of_one_version_are_refused() -> None:
    engine = Engine("memory://", workflows=[linear()])
    with pytest.raises(WorkflowDefinitionError, match="bump the version"):
        engine.register(linear())
    engine.register(linear(version=2))
    assert engine.registry.names() == ["wf@1", "wf@2"]


def test_next_phase_uses_the_machine_and_guards() -> None:
    wf = linear()
    assert wf.next_phase("a", None, S()) == "b"
    assert wf.next_phase("b", "a", S(n=1)) == "a"
    with pytest.raises(InvalidTransition, match=r"guard of 'b' -> 'a' is false .*guards that hold: \['c'\]"):
        wf.next_phase("b", "a", S(n=5))
    with pytest.raises(InvalidTransition, match="does not allow 'a' -> 'c'"):
        wf.next_phase("a", "c", S())
    with pytest.raises(InvalidTransition, match="returns the name of the next phase"):
        wf.next_phase("b", 3, S())  # type: ignore[arg-type]


def test_a_handler_returning_none_lets_the_guards_choose() -> None:
    """Declaration order, first guard that holds; the unguarded target is the else branch."""
    wf = linear()
    assert wf.next_phase("b", None, S(n=1)) == "a"  # the guard of 'a' holds
    assert wf.next_phase("b", None, S(n=5)) == "c"  # no guard holds: the else branch
    ordered = Workflow("ordered", state=S)
    ordered.phase("a", initial=True, to={"low": lambda s: s.n < 10, "tiny": lambda s: s.n < 2, "high": None})(noop)
    for name in ("low", "tiny", "high"):
        ordered.phase(name, final=True)(noop)
    assert ordered.next_phase("a", None, S(n=1)) == "low"  # both hold: the first declared wins
    strict = Workflow("strict", state=S)
    strict.phase("a", initial=True, to={"b": lambda s: s.n > 0})(noop)
    strict.phase("b", final=True)(noop)
    with pytest.raises(InvalidTransition, match=r"none of its guards holds .*checked \['b'\]"):
        strict.next_phase("a", None, S())
    two_else = Workflow("two-else", state=S)
    two_else.phase("a", initial=True, to=["b", "c"])(noop)
    two_else.phase("b", final=True)(noop)
    two_else.phase("c", final=True)(noop)
    with pytest.raises(InvalidTransition, match=r"may lead to \['b', 'c'\] without a guard: return the name"):
        two_else.next_phase("a", None, S())


def test_diagram_is_mermaid_with_guards_and_final_states() -> None:
    text = linear().diagram()
    assert text.startswith("---\ntitle: wf v1\n---\nstateDiagram-v2\n")
    lines = text.splitlines()
    assert "  a --> b" in lines  # no label that only repeats the target
    assert "  b --> c" in lines
    assert "  b --> a: [s.n < 2]" in lines  # a short lambda guard reads as its expression
    assert "  [*] --> a" in lines and "  c --> [*]" in lines
    assert "classDef" not in text and "class " not in text  # no styling boilerplate


def test_diagram_edge_labels_name_guards_only() -> None:
    def needs_more(state: S) -> bool:
        return state.n < 5

    long_guard = lambda state: state.n < 2 and state.n + 1 < 3 and state.n * 2 < 4  # noqa: E731
    wf = Workflow("guards", state=S)
    wf.phase("a", initial=True, to={"b": needs_more, "c": long_guard, "d": None})(noop)
    for name in ("b", "c", "d"):
        wf.phase(name, final=True)(noop)
    lines = wf.diagram().splitlines()
    assert "  a --> b: [needs_more]" in lines  # a function reads as its name
    assert "  a --> c: [guard]" in lines  # a long lambda as [guard]
    assert "  a --> d" in lines
    assert [e.label for e in wf.edges()] == ["[needs_more]", "[guard]", ""]


def test_diagram_highlights_the_phase_a_run_is_in() -> None:
    text = linear().diagram(active="b")
    lines = text.splitlines()
    assert lines[-2:] == ["  classDef active color:red,fill:darksalmon", "  class b active"]  # styling last
    assert "  [*] --> a" in lines  # the start stays the initial phase
    with pytest.raises(WorkflowDefinitionError, match="no phase 'x'"):
        linear().diagram(active="x")
