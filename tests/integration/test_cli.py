"""The `phaseledger` command driven as a user drives it: a subprocess of the installed
console script, on a real SQLite file and on the real PostgreSQL server.

Runs are prepared with the Python API in this process; every check goes through the
command line: what it prints, its exit status, and what it left in the store.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from phaseledger import Engine

FLOWS = '''
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Workflow


class Count(BaseModel):
    n: int = 0
    limit: int = 3


counter = Workflow("counter", state=Count)


@counter.phase(initial=True, to={"count": None, "done": None})
async def start(ctx: Context[Count]) -> str:
    await ctx.step("hello", lambda: "hello")
    return "count"


@counter.phase(to={"count": lambda s: s.n < s.limit, "done": None})
async def count(ctx: Context[Count]) -> str:
    ctx.state.n = await ctx.step("add", lambda n: n + 1, ctx.state.n)
    return "count" if ctx.state.n < ctx.state.limit else "done"


@counter.phase(final=True)
async def done(ctx: Context[Count]) -> dict:
    return {"total": ctx.state.n}


class Approve(BaseModel):
    approved: bool


class Request(BaseModel):
    item: str = "laptop"
    decision: str | None = None


approval = Workflow("approval", state=Request, signals={"approve": Approve})


@approval.phase(initial=True, to="decided")
async def ask(ctx: Context[Request]) -> None:
    answer = await ctx.wait_for_signal("approve")
    ctx.state.decision = "yes" if answer.approved else "no"


@approval.phase(final=True)
async def decided(ctx: Context[Request]) -> str:
    return ctx.state.decision


flaky = Workflow("flaky", state=Count)


def fetch(n: int) -> int:
    if Path("fail.flag").exists():
        raise ConnectionError("backend down")
    return n * 10


@flaky.phase(initial=True, final=True)
async def fetch_all(ctx: Context[Count]) -> dict:
    first = await ctx.step("first", lambda: 1)
    return {"second": await ctx.step("fetch", fetch, first)}
'''

SCRIPT = Path(sys.executable).with_name("phaseledger")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with a workflows module, the current directory of the test and of the command."""
    (tmp_path / "flows.py").write_text(FLOWS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def flows(project: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"flows_{abs(hash(project))}", project / "flows.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: int | None = 0,
) -> subprocess.CompletedProcess[str]:
    """Run the console script (``python -m phaseledger.cli`` where it is not installed)."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "phaseledger.cli"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PHASELEDGER_")}
    result = subprocess.run(
        command + list(args), cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120,
    )
    if check is not None:
        assert result.returncode == check, (
            f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def cli_all(*calls: tuple[str, ...], cwd: Path, check: int | None = 0) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (process start-up dominates their time)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args, cwd=cwd, check=check), calls))


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The command failed with one `error:` line on stderr naming every fragment, and no traceback."""
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def prepare(store: str, module: Any, fail: Path) -> None:
    """A completed counter run, a counter run started but never driven, a run waiting for a
    signal, and a failed run."""

    async def scenario() -> None:
        engine = Engine(store, workflows=[module.counter, module.approval, module.flaky])
        try:
            await engine.run(module.counter, {"limit": 3}, run_id="done-1")
            await engine.start(module.counter, {"limit": 2}, run_id="new-1")
            await engine.run(module.approval, {"item": "chair"}, run_id="wait-1")
            fail.touch()
            await engine.run(module.flaky, {}, run_id="fail-1")
            fail.unlink()
        finally:
            engine.close()

    asyncio.run(scenario())


def store_history(store: str, run_id: str) -> list[str]:
    engine = Engine(store)
    try:
        return [e.type for e in engine.history(run_id)]
    finally:
        engine.close()


# -- the command's surface -------------------------------------------------------------


def test_help_lists_every_command_and_version_prints(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    for command in ("runs", "show", "history", "resume", "retry", "signal", "cancel", "worker", "diagram", "diff",
                    "demo", "projections", "report"):
        assert command in result.stdout
    assert cli("--version", cwd=tmp_path).stdout.startswith("phaseledger ")
    assert "--at" in cli("show", "--help", cwd=tmp_path).stdout


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "phaseledger.cli", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and "history" in result.stdout


# -- every command on every durable store ----------------------------------------------


def test_reading_commands(durable_store_url: str, project: Path) -> None:
    store = durable_store_url
    prepare(store, flows(project), project / "fail.flag")
    s = ("--store", store)
    (listed, completed, counters, none, shown, failed, waiting, data, early, events, timeline) = cli_all(
        (*s, "runs"),
        (*s, "runs", "--status", "completed", "--json"),
        (*s, "runs", "--workflow", "counter", "--json"),
        (*s, "runs", "--status", "failed", "--workflow", "approval"),
        (*s, "-w", "flows.py", "show", "done-1"),
        (*s, "show", "fail-1"),
        (*s, "show", "wait-1"),
        (*s, "show", "done-1", "--json"),
        (*s, "show", "done-1", "--at", "3", "--json"),
        (*s, "history", "done-1", "--json"),
        (*s, "history", "done-1"),
        cwd=project,
    )
    for run_id in ("done-1", "new-1", "wait-1", "fail-1"):
        assert run_id in listed.stdout
    assert "\x1b[" not in listed.stdout and "━" not in listed.stdout  # plain text when not on a terminal
    assert [r["run_id"] for r in json.loads(completed.stdout)] == ["done-1"]
    assert sorted(r["run_id"] for r in json.loads(counters.stdout)) == ["done-1", "new-1"]
    assert "no failed 'approval' runs" in none.stdout

    assert "completed" in shown.stdout and '"total": 3' in shown.stdout and "add" in shown.stdout
    assert "StepFailed" in failed.stdout and "backend down" in failed.stdout
    assert "waiting" in waiting.stdout and "signal 'approve'" in waiting.stdout
    run = json.loads(data.stdout)
    assert run["status"] == "completed" and run["output"] == {"total": 3}
    assert [step["name"] for step in run["steps_recorded"]] == ["hello", "add", "add", "add"]
    at_3 = json.loads(early.stdout)
    assert at_3["version"] == 3 and at_3["status"] == "running" and at_3["phase"] == "start"

    assert [e["type"] for e in json.loads(events.stdout)] == store_history(store, "done-1")
    for expected in ("RunStarted", "entered count from start", "RunCompleted"):
        assert expected in timeline.stdout


def test_acting_commands(durable_store_url: str, project: Path) -> None:
    store = durable_store_url
    prepare(store, flows(project), project / "fail.flag")

    resumed = json.loads(cli("--store", store, "-w", "flows", "resume", "new-1", "--json", cwd=project).stdout)
    assert resumed[0]["status"] == "completed" and resumed[0]["executed"] == 3

    signalled = json.loads(cli("--store", store, "-w", "flows.py", "signal", "wait-1", "approve", "--data",
                               '{"approved": true}', "--resume", "--json", cwd=project).stdout)
    assert signalled["status"] == "completed" and signalled["output"] == "yes"

    retried = cli("--store", store, "-w", "flows.py", "retry", "fail-1", cwd=project).stdout
    assert "completed" in retried
    run = json.loads(cli("--store", store, "show", "fail-1", "--json", cwd=project).stdout)
    assert run["output"] == {"second": 10} and run["replayed_steps"] == 1  # 'first' came from the log

    async def another_waiting() -> None:
        module = flows(project)
        engine = Engine(store, workflows=[module.approval])
        await engine.run(module.approval, run_id="wait-2")
        engine.close()

    asyncio.run(another_waiting())
    cancelled = cli("--store", store, "cancel", "wait-2", "--reason", "not needed", "--json", cwd=project).stdout
    assert json.loads(cancelled)["status"] == "cancelled"
    assert store_history(store, "wait-2")[-1] == "RunCancelled"


def test_resume_all_and_worker(durable_store_url: str, project: Path) -> None:
    store = durable_store_url
    module = flows(project)

    async def start_some() -> None:
        engine = Engine(store, workflows=[module.counter])
        for i in range(3):
            await engine.start(module.counter, {"limit": 1}, run_id=f"batch-{i}")
        engine.close()

    asyncio.run(start_some())
    resumed = json.loads(cli("--store", store, "-w", "flows", "resume", "--all", "--json", cwd=project).stdout)
    assert sorted(r["run_id"] for r in resumed) == ["batch-0", "batch-1", "batch-2"]
    assert {r["status"] for r in resumed} == {"completed"}

    async def start_more() -> None:
        engine = Engine(store, workflows=[module.counter])
        for i in range(2):
            await engine.start(module.counter, {"limit": 2}, run_id=f"queued-{i}")
        engine.close()

    asyncio.run(start_more())
    stats = json.loads(cli("--store", store, "-w", "flows", "worker", "--until-idle", "--poll", "0.05", "--json",
                           cwd=project).stdout)
    assert stats["completed"] == 2
    runs = json.loads(cli("--store", store, "runs", "--status", "completed", "--json", cwd=project).stdout)
    assert {"queued-0", "queued-1"} <= {r["run_id"] for r in runs}


def test_diff_report_and_projections(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    module = flows(project)

    async def two_runs() -> None:
        engine = Engine(store, workflows=[module.counter])
        await engine.run(module.counter, {"limit": 2}, run_id="a")
        await engine.run(module.counter, {"limit": 3}, run_id="b")
        engine.close()

    asyncio.run(two_runs())
    comparison = json.loads(cli("--store", store, "diff", "a", "b", "--json", cwd=project).stdout)
    assert comparison["identical"] is False
    assert {d["path"] for d in comparison["state_differences"]} >= {"n", "limit"}
    text = cli("--store", store, "diff", "a", "b", cwd=project).stdout
    assert "state path" in text and "count > count > count" in text

    report = json.loads(cli("--store", store, "report", "--format", "json", cwd=project).stdout)
    assert "completed" in json.dumps(report)
    assert cli("--store", store, "projections", "status", cwd=project).returncode == 0


# -- diagrams ----------------------------------------------------------------------------


def test_diagram_mermaid_and_images(project: Path) -> None:
    mermaid = cli("-w", "flows.py", "diagram", "counter", cwd=project).stdout
    assert "stateDiagram-v2" in mermaid and "count --> count" in mermaid and "done --> [*]" in mermaid
    cli("-w", "flows", "diagram", "approval", "-o", "approval.mmd", cwd=project)
    assert "ask --> decided" in (project / "approval.mmd").read_text()

    no_graphviz = cli("-w", "flows.py", "diagram", "counter", "--format", "svg", cwd=project,
                      env={"PATH": str(project)}, check=None)
    one_line_error(no_graphviz, "Graphviz", "dot", "Mermaid")
    assert not (project / "counter.svg").exists()

    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed here: SVG and PNG output not checked")
    cli("-w", "flows.py", "diagram", "counter", "--format", "svg", cwd=project)
    assert (project / "counter.svg").read_text().lstrip().startswith("<?xml")
    cli("-w", "flows.py", "diagram", "counter", "-f", "png", "-o", "c.png", cwd=project)
    assert (project / "c.png").read_bytes().startswith(b"\x89PNG")


# -- error paths: one line, status 1, the store unchanged ------------------------------------


def test_error_paths(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    prepare(store, flows(project), project / "fail.flag")
    before = store_history(store, "wait-1")
    s = ("--store", store)
    signal = (*s, "-w", "flows.py", "signal", "wait-1", "approve", "--data")
    expected: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        ((*s, "show", "nope"), ("run 'nope' not found",)),
        (("--store", "sqlite:///missing.db", "runs"), ("does not exist",)),
        ((*signal, "{bad"), ("--data is not valid JSON",)),
        ((*signal, '{"approved": "maybe"}'), ("approve", "Approve")),
        (("-w", "flows.py", "diagram", "nosuch"), ("workflow 'nosuch' is not registered", "counter@1")),
        ((*s, "resume", "new-1"), ("not registered", "--workflows")),
        ((*s, "-w", "no_such_module", "runs"), ("cannot import workflows module",)),
        ((*s, "cancel", "done-1"), ("it is completed",)),
        ((*s, "runs", "--status", "weird"), ("unknown status",)),
        ((*s, "show", "done-1", "--at", "999"), ("--at",)),
        ((*s, "worker", "--until-idle"), ("--workflows",)),
    ]
    results = cli_all(*(args for args, _ in expected), ("--debug", *s, "show", "nope"), ("show",),
                      cwd=project, check=None)
    for (args, fragments), result in zip(expected, results, strict=False):
        assert result.returncode == 1, (args, result.stderr)
        one_line_error(result, *fragments)
    assert not (project / "missing.db").exists()
    assert store_history(store, "wait-1") == before  # the bad signals appended nothing

    debug, usage = results[-2:]
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RunNotFound" in debug.stderr
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    result = cli("--store", "postgresql://postgres@127.0.0.1:1/test", "runs", check=None, cwd=tmp_path)
    one_line_error(result, "cannot open store", "127.0.0.1")


# -- the demo ------------------------------------------------------------------------------


def test_demo_rejects_an_unusable_model(tmp_path: Path) -> None:
    result = cli("demo", "--model", "no-such-provider:model", "--db", "d.db", check=None, cwd=tmp_path)
    one_line_error(result, "no-such-provider:model")


def test_demo_kills_resumes_and_explains(tmp_path: Path) -> None:
    result = cli("demo", "--db", "demo.db", cwd=tmp_path)
    out = result.stdout
    assert "killed with SIGKILL" in out
    assert "a new process resumes the run" in out
    assert "from the log instead of running them" in out
    assert "tokens not paid again" in out
    assert "RunResumed" in out and "RunCompleted" in out  # the history
    assert "stateDiagram-v2" in out
    shown = json.loads(cli("--store", "sqlite:///demo.db", "show", "research-demo", "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "completed"
    assert shown["replayed_steps"] >= 2
    assert shown["usage"]["replayed_requests"] >= 1 and shown["usage"]["tokens_saved"] > 0
