"""The pieces of the `phaseledger` command, in process: loading workflows, parsing payloads,
rendering events, and the one-line errors of `main` (the subprocess tests are in
tests/integration/test_cli.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, Workflow
from phaseledger.cli import _diagram, _render
from phaseledger.cli._act import _parse_json
from phaseledger.cli._app import main
from phaseledger.cli._session import CommandError, Session, load_workflows

MODULE = '''
from pydantic import BaseModel
from phaseledger import Workflow

class S(BaseModel):
    n: int = 0

first = Workflow("first", state=S)

@first.phase(initial=True, final=True)
async def only(ctx):
    return 1

second = Workflow("second", state=S)
second.phase("only", initial=True, final=True)(only)
'''


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cli_flows_mod.py").write_text(MODULE)
    (tmp_path / "cli_flows_listed.py").write_text(MODULE + "\nworkflows = [second]\n")
    (tmp_path / "cli_flows_empty.py").write_text("x = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("cli_flows_mod", "cli_flows_listed", "cli_flows_empty"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return tmp_path


def test_load_workflows_from_modules_attributes_and_files(module_dir: Path) -> None:
    assert [w.name for w in load_workflows("cli_flows_mod")] == ["first", "second"]
    assert [w.name for w in load_workflows("cli_flows_listed")] == ["second"]  # a `workflows` list wins
    assert [w.name for w in load_workflows("cli_flows_mod:first")] == ["first"]
    assert [w.name for w in load_workflows(str(module_dir / "cli_flows_mod.py"))] == ["first", "second"]


@pytest.mark.parametrize(("spec", "message"), [
    ("cli_flows_empty", "defines no workflows"),
    ("cli_flows_mod:missing", "has no attribute 'missing'"),
    ("cli_flows_mod:S", "not a phaseledger.Workflow"),
    ("no_such_module_here", "cannot import workflows module"),
    ("nowhere/flows.py", "does not exist"),
])
def test_load_workflows_errors_say_what_to_fix(module_dir: Path, spec: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        load_workflows(spec)


def test_session_names_the_registered_workflows_and_how_to_load_more(module_dir: Path) -> None:
    session = Session(workflow_modules=["cli_flows_mod"])
    assert session.workflow("second").name == "second"
    with pytest.raises(Exception, match=r"'third' is not registered; registered: \['first@1', 'second@1'\]"):
        session.workflow("third")
    with pytest.raises(Exception, match="pass --workflows MODULE"):
        Session().workflow("first")


def test_parse_json_inline_and_from_files(tmp_path: Path) -> None:
    assert _parse_json('{"a": [1, 2]}', "--data") == {"a": [1, 2]}
    (tmp_path / "p.json").write_text('"text"')
    assert _parse_json(f"@{tmp_path / 'p.json'}", "--data") == "text"
    with pytest.raises(CommandError, match=r"--data is not valid JSON \(Expecting value at line 1 column 1\)"):
        _parse_json("nope", "--data")
    with pytest.raises(CommandError, match="does not exist"):
        _parse_json("@missing.json", "--data")


def test_agent_call_names_are_shortened_for_people() -> None:
    assert _render.call_name("model", "planner__model.request") == "planner: model request"
    tool = "researcher__function_toolset__<agent>.call_tool:search"
    assert _render.call_name("tool", tool) == "researcher: tool search"
    assert _render.call_label("step", "add") == "step 'add'"
    assert _render.call_label("tool", "plain_tool") == "tool 'plain_tool'"


class Box(BaseModel):
    items: list[str] = []


def _every_kind_of_event() -> list:
    box = Workflow("box", state=Box, signals={})
    attempts = {"n": 0}

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("down")
        return "ok"

    @box.phase(initial=True, to="pack")
    async def fill(ctx: Context[Box]) -> None:
        ctx.state.items.append(await ctx.step("flaky", flaky, retry=RetryPolicy(max_attempts=2, initial_delay=0)))
        await ctx.checkpoint("filled")
        ctx.state.items.append(str(await ctx.wait_for_signal("go")))

    @box.phase(final=True)
    async def pack(ctx: Context[Box]) -> list[str]:
        ctx.now()
        return ctx.state.items

    async def scenario() -> list:
        engine = Engine("memory://", workflows=[box])
        await engine.run(box, run_id="b")
        await engine.signal("b", "go", {"x": 1})
        await engine.resume("b")
        await engine.start(box, run_id="c")
        await engine.cancel("c", "no need")
        return engine.history("b") + engine.history("c")

    return asyncio.run(scenario())


def test_every_event_reads_as_one_line() -> None:
    events = _every_kind_of_event()
    kinds = {e.type for e in events}
    assert {"RunStarted", "PhaseEntered", "StepRecorded", "StepAttemptFailed", "CheckpointSaved", "RunSuspended",
            "SignalReceived", "RunResumed", "RunCompleted", "RunCancelled"} <= kinds
    for event in events:
        text = _render.event_summary(event)
        assert text and "\n" not in text
    summaries = " | ".join(_render.event_summary(e) for e in events)
    for expected in ("'flaky' attempt 1 failed: ConnectionError: down", "checkpoint 'filled'",
                     "suspended (signal) waiting for signal 'go'", "signal 'go' {\"x\":1}", "cancelled: no need"):
        assert expected in summaries


def test_images_need_graphviz_and_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_diagram.shutil, "which", lambda name: None)
    message = _diagram.graphviz_missing()
    assert message and "dot" in message and "Mermaid" in message
    with pytest.raises(CommandError, match="Graphviz"):
        _diagram.draw_diagram(load_box(), "svg")


def test_images_label_edges_by_guards_only() -> None:
    pytest.importorskip("graphviz")
    box = Workflow("guarded", state=Box)
    box.phase("a", initial=True, to={"b": lambda state: len(state.items) < 2, "c": None})(lambda ctx: None)
    box.phase("b", to="c")(lambda ctx: None)
    box.phase("c", final=True)(lambda ctx: None)
    source = _diagram.graph(box).source
    assert 'a -> b [label="[len(state.items) < 2]"]' in source
    assert "\ta -> c\n" in source and "\tb -> c\n" in source  # no label repeating the target
    assert "c [peripheries=2]" in source and "__start__ -> a" in source


def test_mermaid_and_images_draw_the_one_state_diagram() -> None:
    pytest.importorskip("graphviz")
    from phaseledger.domain.diagram import StateDiagram

    box = Workflow("loop", state=Box)
    box.phase("a", initial=True, to={"b": lambda state: not state.items, "c": None})(lambda ctx: None)
    box.phase("b", to="a")(lambda ctx: None)
    box.phase("c", final=True)(lambda ctx: None)
    diagram = StateDiagram.of(box)
    assert (diagram.title, diagram.initial, diagram.phases, diagram.finals) == ("loop v1", "a", ("a", "b", "c"), ("c",))
    assert box.diagram() == diagram.mermaid()
    source = _diagram.graph(box).source
    for edge in diagram.edges:
        drawn = f"{edge.source} -> {edge.target}" + (f' [label="{edge.label}"]' if edge.label else "")
        assert f"\t{drawn}\n" in source and f"  {edge.source} --> {edge.target}" in diagram.mermaid()
    assert f'label="{diagram.title}"' in source


def load_box() -> Workflow[Box]:
    box = Workflow("draw", state=Box)
    box.phase("a", initial=True, to="b")(lambda ctx: None)
    box.phase("b", final=True)(lambda ctx: None)
    return box


def test_main_prints_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--store", f"sqlite:///{tmp_path / 'absent.db'}", "runs"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: store sqlite:///") and err.count("\n") == 1
    assert not (tmp_path / "absent.db").exists()


def _commands(group: object, prefix: str = "") -> dict[str, object]:
    found: dict[str, object] = {}
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_every_command_that_prints_data_takes_json() -> None:
    import typer

    from phaseledger.cli import app

    commands = _commands(typer.main.get_command(app))
    assert {"start", "report", "projections status", "projections rebuild"} <= set(commands)
    without = sorted(name for name, command in commands.items()
                     if "--json" not in [opt for p in command.params for opt in getattr(p, "opts", [])])
    assert without == ["demo", "diagram", "serve"]  # they draw, tell or serve; they print no data


def test_format_is_a_hidden_json_alias_only_where_it_was_one() -> None:
    import typer

    from phaseledger.cli import app

    with_format = {}
    for name, command in _commands(typer.main.get_command(app)).items():
        for param in command.params:
            if "--format" in getattr(param, "opts", []):
                with_format[name] = param
    aliases = {name for name, param in with_format.items() if param.hidden}
    assert aliases == {"report", "projections status", "projections catch-up", "projections rebuild"}
    for name in aliases:
        assert with_format[name].help == "Deprecated: use --json."
    # diagram's --format picks the drawing (Mermaid, SVG, PNG): shown in help, no JSON to alias
    assert set(with_format) - aliases == {"diagram"} and not with_format["diagram"].hidden


@pytest.mark.parametrize(("as_json", "fmt", "wanted", "warned"), [
    (False, None, False, False),
    (True, None, True, False),
    (False, "json", True, True),
    (False, "table", False, True),
    (True, "table", True, True),
])
def test_wants_json_reads_json_and_the_deprecated_format(
    as_json: bool, fmt: str | None, wanted: bool, warned: bool, capsys: pytest.CaptureFixture[str],
) -> None:
    from phaseledger.cli._base import OutputFormat, wants_json

    assert wants_json(as_json, OutputFormat(fmt) if fmt else None) is wanted
    err = capsys.readouterr().err
    assert (f"--format {fmt} is deprecated" in err and "--json" in err) if warned else not err


def test_exit_statuses_are_documented() -> None:
    from phaseledger.cli._drive import INTERRUPTED, RUN_FAILED

    cli_doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    section = cli_doc.split("## Exit statuses", 1)[1].split("\n## ", 1)[0]
    for status in ("0", "1", "2", str(RUN_FAILED), str(INTERRUPTED)):
        assert f"| {status} |" in section
