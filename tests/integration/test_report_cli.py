"""``phaseledger projections status|catch-up|rebuild`` and ``phaseledger report`` on a SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from phaseledger import Context, Engine, Workflow
from phaseledger.cli.reports import projections_app, report_app
from phaseledger.engine.journal import current_journal


class Doc(BaseModel):
    words: int = 0


def make_workflow() -> Workflow[Doc]:
    wf = Workflow("writer", state=Doc, version=1)

    @wf.phase(initial=True, to={"done": None})
    async def draft(ctx: Context[Doc]) -> str:
        journal = current_journal()
        await journal.call(journal.next_key(), "model", "draft", lambda: "text", outcome=lambda _: ({
            "requests": 1, "input_tokens": 40, "output_tokens": 60, "model": "small", "cost": 0.02}, None))
        ctx.state.words = await ctx.step("count", lambda: 60)
        if ctx.run_id == "broken":
            raise RuntimeError("no words")
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Doc]) -> int:
        return ctx.state.words

    return wf


@pytest.fixture
async def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/cli.db"
    wf = make_workflow()
    engine = Engine(url, workflows=[wf])
    await engine.run(wf, {}, run_id="fine")
    await engine.run(wf, {}, run_id="broken")
    engine.close()
    return url


def test_status_catch_up_and_rebuild(store: str) -> None:
    runner = CliRunner()
    status = runner.invoke(projections_app, ["status", "--store", store, "--json"])
    assert status.exit_code == 0, status.output
    before = json.loads(status.output)
    assert before["position"] is None and before["lag"] > 0 and not before["outdated"]

    caught = runner.invoke(projections_app, ["catch-up", "--store", store, "--page-size", "2"])
    assert caught.exit_code == 0, caught.output
    assert f"applied {before['lag']} event(s)" in caught.output and "lag 0" in caught.output

    plain = runner.invoke(projections_app, ["status", "--store", store])
    assert "up to date" in plain.output and "report_runs" in plain.output and "\x1b[" not in plain.output

    rebuilt = runner.invoke(projections_app, ["rebuild", "--store", store, "--json"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.output) == {"applied": before["lag"], "position": before["lag"], "generation": 2}


def test_report_as_json_and_table(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("PHASELEDGER_STORE", store)
    result = runner.invoke(report_app, ["--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["runs_by_status"] == {"completed": 1, "failed": 1}
    assert summary["lag"] == 0
    (writer,) = summary["workflows"]
    assert (writer["runs"], writer["input_tokens"], writer["output_tokens"]) == (2, 80, 120)
    assert writer["cost"] == pytest.approx(0.04)
    assert {p["phase"] for p in summary["phases"]} == {"draft", "done"}

    table = runner.invoke(report_app, [])
    assert table.exit_code == 0, table.output
    for text in ("runs by status", "completed", "failed", "phase durations", "tokens and cost by workflow",
                 "writer", "0.0400"):
        assert text in table.output


def test_errors_print_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(projections_app, ["status", "--store", "nosuch://here"])
    assert result.exit_code == 1
    assert "unsupported store URL" in result.output


def test_format_json_is_a_deprecated_alias_of_json(store: str) -> None:
    runner = CliRunner()
    new = runner.invoke(report_app, ["--json", "--store", store])
    old = runner.invoke(report_app, ["--format", "json", "--store", store])
    assert new.exit_code == old.exit_code == 0, old.output
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert "--format json is deprecated" in old.stderr and "use --json" in old.stderr
    assert not new.stderr
    table = runner.invoke(projections_app, ["status", "--store", store, "--format", "table"])
    assert "report projection" in table.stdout and "deprecated" in table.stderr


def test_format_json_is_an_alias_for_catch_up_and_rebuild_too(store: str) -> None:
    runner = CliRunner()
    for command in ("catch-up", "rebuild"):
        new = runner.invoke(projections_app, [command, "--store", store, "--json"])
        old = runner.invoke(projections_app, [command, "--store", store, "--format", "json"])
        assert new.exit_code == old.exit_code == 0, old.output
        assert json.loads(old.stdout).keys() == json.loads(new.stdout).keys()
        assert "--format json is deprecated" in old.stderr and not new.stderr
        plain = runner.invoke(projections_app, [command, "--store", store, "--format", "table"])
        assert plain.exit_code == 0 and not plain.stdout.lstrip().startswith("{")
        assert "--format table is deprecated" in plain.stderr


def test_a_bad_format_is_a_usage_error(store: str) -> None:
    result = CliRunner().invoke(report_app, ["--format", "yaml", "--store", store])
    assert result.exit_code == 2
    assert "yaml" in result.output


def test_errors_show_their_traceback_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from phaseledger import PhaseledgerError

    monkeypatch.setenv("PHASELEDGER_DEBUG", "1")
    result = CliRunner().invoke(projections_app, ["status", "--store", "nosuch://here"])
    assert isinstance(result.exception, PhaseledgerError)  # not turned into one line: the traceback shows
