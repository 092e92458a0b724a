"""The `phaseledger` command driven as a user drives it: a subprocess of the installed
console script, on a real SQLite file and on the real PostgreSQL server.

Runs are prepared with the Python API in this process; every check goes through the
command line: what it prints, its exit status, and what it left in the store. The
subprocess imports the same phaseledger code as the tests (its checkout comes first on
PYTHONPATH), whichever copy the console script was installed from.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import phaseledger
from phaseledger import Engine, RunNotFound

FLOWS = '''
import asyncio
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


slow = Workflow("slow", state=Count)


async def tick(n: int) -> int:
    await asyncio.sleep(0.1)
    return n + 1


@slow.phase(initial=True, final=True)
async def ticking(ctx: Context[Count]) -> int:
    while ctx.state.n < ctx.state.limit:
        ctx.state.n = await ctx.step("tick", tick, ctx.state.n)
    return ctx.state.n


nap = Workflow("nap", state=Count)


@nap.phase(initial=True, to="awake")
async def dozing(ctx: Context[Count]) -> None:
    await ctx.sleep(3600)


@nap.phase(final=True)
async def awake(ctx: Context[Count]) -> int:
    return 1
'''

SCRIPT = Path(sys.executable).with_name("phaseledger")
PACKAGE_ROOT = str(Path(phaseledger.__file__).resolve().parent.parent)
"""The checkout whose code the tests import; the command runs it too."""


def command_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command: no PHASELEDGER_ settings, this checkout first on PYTHONPATH."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PHASELEDGER_")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, base.get("PYTHONPATH")]))
    return {**base, **(env or {})}


def command() -> list[str]:
    """The console script (``python -m phaseledger.cli`` where it is not installed)."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "phaseledger.cli"]


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
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: int | None = 0, timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the console script (``python -m phaseledger.cli`` where it is not installed)."""
    result = subprocess.run(
        command() + list(args), cwd=cwd, env=command_env(env), capture_output=True, text=True, timeout=timeout,
    )
    if check is not None:
        assert result.returncode == check, (
            f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def cli_all(*calls: tuple[str, ...], cwd: Path, check: int | None = 0,
            env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands side by side (process start-up dominates their time)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: cli(*args, cwd=cwd, check=check, env=env), calls))


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str, status: int = 1,
                   prefix: str = "error: ") -> str:
    """The command failed (exit ``status``) with one `error:` line on stderr naming every
    fragment, and no traceback."""
    assert result.returncode == status, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
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
    for command in ("start", "runs", "show", "history", "resume", "retry", "signal", "cancel", "worker", "diagram",
                    "diff", "demo", "projections", "report"):
        assert command in result.stdout
    assert cli("--version", cwd=tmp_path).stdout.startswith("phaseledger ")
    assert "--at" in cli("show", "--help", cwd=tmp_path).stdout


def test_the_command_runs_the_code_under_test(tmp_path: Path) -> None:
    result = cli("--debug", "--store", "memory://", "show", "nope", cwd=tmp_path, check=None)
    assert result.returncode == 1
    assert str(Path(PACKAGE_ROOT) / "phaseledger" / "cli") in result.stderr  # the traceback's frames


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


@pytest.mark.parametrize("engine", ["dbos", "temporal", "prefect"])
def test_demo_on_another_engine_is_killed_and_resumed_there(engine: str, tmp_path: Path) -> None:
    from phaseledger.testing.dispatchers import available

    if available(engine):
        pytest.skip(str(available(engine)))
    # The engine's own server (Temporal's, Prefect's) starts first: on a loaded 2-core machine this took over 2 minutes.
    out = cli("demo", "--on", engine, "--db", "demo.db", cwd=tmp_path, timeout=360).stdout
    assert "killed with SIGKILL" in out and "tokens not paid again" in out
    assert {"temporal": "temporal server start-dev", "dbos": "system database", "prefect": "flow run"}[engine] in out
    shown = json.loads(cli("--store", "sqlite:///demo.db", "show", "research-demo", "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "completed"
    assert shown["usage"]["replayed_requests"] >= 1 and shown["usage"]["tokens_saved"] > 0
    if engine == "dbos":  # DBOS's own record of the run: a workflow whose id is the run id, ended
        import sqlite3

        with sqlite3.connect(tmp_path / "demo-dbos.sqlite") as db:
            rows = db.execute("SELECT status FROM workflow_status WHERE workflow_uuid = 'research-demo'").fetchall()
        assert rows == [("SUCCESS",)]


def test_demo_on_an_unknown_engine_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("demo", "--on", "airflow", "--db", "demo.db", check=None, cwd=tmp_path)
    assert result.returncode == 2 and "airflow" in result.stderr and "Traceback" not in result.stderr


# -- start: runs begin from the shell ---------------------------------------------------------


def test_start_leaves_a_run_to_a_worker_or_drives_it(durable_store_url: str, project: Path) -> None:
    s = ("--store", durable_store_url, "-w", "flows")
    (project / "input.json").write_text('{"limit": 1}')
    queued, plain, driven = cli_all(
        (*s, "start", "counter", "--input", '{"limit": 2}', "--run-id", "c-1", "--json"),
        (*s, "start", "counter", "--run-id", "c-2"),
        (*s, "start", "counter", "--input", "@input.json", "--drive", "--json"),
        cwd=project,
    )
    run = json.loads(queued.stdout)
    assert (run["run_id"], run["status"], run["steps"]) == ("c-1", "running", 0)
    assert "started run c-2" in plain.stdout
    assert "worker" in plain.stdout and "resume c-2" in plain.stdout  # what drives it next
    done = json.loads(driven.stdout)
    assert done["status"] == "completed" and done["output"] == {"total": 1} and done["run_id"]

    stats = json.loads(cli(*s, "worker", "--until-idle", "--poll", "0.05", "--json", cwd=project).stdout)
    assert stats["completed"] == 2
    shown = json.loads(cli(*s, "show", "c-1", "--json", cwd=project).stdout)
    assert shown["output"] == {"total": 2}

    exists, not_object, invalid, no_module = cli_all(
        (*s, "start", "counter", "--run-id", "c-1"),
        (*s, "start", "counter", "--input", "[1]"),
        (*s, "start", "counter", "--input", '{"limit": "many"}'),
        ("--store", durable_store_url, "start", "counter"),
        cwd=project, check=None,
    )
    one_line_error(exists, "'c-1' already exists", "--run-id", "resume c-1")
    one_line_error(not_object, "--input must be a JSON object")
    one_line_error(invalid, "limit")
    one_line_error(no_module, "'counter' is not registered", "--workflows")


def test_start_creates_a_sqlite_store_that_reading_commands_then_find(project: Path) -> None:
    cli("--store", "sqlite:///new.db", "-w", "flows", "start", "counter", "--run-id", "n-1", cwd=project)
    assert (project / "new.db").exists()
    assert "n-1" in cli("--store", "sqlite:///new.db", "runs", cwd=project).stdout


# -- one JSON convention; the global --store everywhere -----------------------------------------


def test_json_and_the_global_store_work_for_report_and_projections(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    prepare(store, flows(project), project / "fail.flag")
    report, alias, deprecated, status, caught = cli_all(
        ("--store", store, "report", "--json"),
        ("report", "--store", store, "--json"),  # the command's own --store, kept as an alias
        ("--store", store, "report", "--format", "json"),
        ("--store", store, "projections", "status", "--json"),
        ("--store", store, "projections", "catch-up", "--json"),
        cwd=project,
    )
    summary = json.loads(report.stdout)
    assert summary["runs_by_status"]["completed"] == 1 and summary["runs_by_status"]["failed"] == 1
    assert json.loads(alias.stdout)["runs_by_status"] == summary["runs_by_status"]
    assert json.loads(deprecated.stdout)["runs_by_status"] == summary["runs_by_status"]
    assert "--format json is deprecated" in deprecated.stderr and "--json" in deprecated.stderr
    assert not report.stderr
    assert json.loads(status.stdout)["store"].startswith("sqlite:///")
    assert json.loads(caught.stdout)["lag"] == 0


# -- reading commands refuse a SQLite file that does not exist ---------------------------------


def test_every_reading_command_refuses_a_missing_sqlite_file(project: Path) -> None:
    missing = ("--store", "sqlite:///nope.db")
    readers = [("runs",), ("show", "x"), ("history", "x"), ("diff", "a", "b"), ("report",),
               ("projections", "status"), ("projections", "catch-up"), ("projections", "rebuild")]
    for args, result in zip(readers, cli_all(*((*missing, *r) for r in readers), cwd=project, check=None),
                            strict=True):
        assert result.returncode == 1, (args, result.stderr)
        one_line_error(result, "store sqlite:///nope.db does not exist", "--store")
        assert not result.stdout
    assert not (project / "nope.db").exists()


# -- exit statuses: a run that fails again is not a success -------------------------------------


def test_a_run_that_fails_again_exits_3_with_the_reason(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    module = flows(project)
    prepare(store, module, project / "fail.flag")

    async def queue_flaky() -> None:
        engine = Engine(store, workflows=[module.flaky])
        await engine.start(module.flaky, run_id="flaky-2")
        engine.close()

    asyncio.run(queue_flaky())
    (project / "fail.flag").touch()
    s = ("--store", store, "-w", "flows")
    retried, resumed, as_json = cli_all((*s, "retry", "fail-1"), (*s, "resume", "flaky-2"),
                                        (*s, "start", "flaky", "--drive", "--json", "--run-id", "flaky-3"),
                                        cwd=project, check=None)
    line = one_line_error(retried, "run 'fail-1' failed", "ConnectionError: backend down", "retry fail-1", status=3)
    assert "in phase fetch_all" in line
    assert "retried run fail-1: failed" in retried.stdout
    one_line_error(resumed, "run 'flaky-2' failed", "backend down", status=3)
    data = json.loads(as_json.stdout)  # the JSON is still printed, recorded tracebacks included
    assert data["status"] == "failed" and "ConnectionError: backend down" in data["error"]["message"]
    one_line_error(subprocess.CompletedProcess(as_json.args, as_json.returncode, "", as_json.stderr),
                   "run 'flaky-3' failed", status=3)

    (project / "fail.flag").unlink()
    assert json.loads(cli(*s, "retry", "fail-1", "--json", cwd=project).stdout)["status"] == "completed"


# -- resume --all drives only the runs that are due ---------------------------------------------


def test_resume_all_leaves_runs_that_are_not_due(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    module = flows(project)
    prepare(store, module, project / "fail.flag")

    async def nap() -> None:
        engine = Engine(store, workflows=[module.nap])
        await engine.run(module.nap, run_id="nap-1")  # sleeps an hour
        engine.close()

    asyncio.run(nap())
    s = ("--store", store, "-w", "flows")
    first = json.loads(cli(*s, "resume", "--all", "--json", cwd=project).stdout)
    assert [(r["run_id"], r["status"]) for r in first] == [("new-1", "completed")]  # not wait-1, nap-1

    nothing = cli(*s, "resume", "--all", cwd=project).stdout
    assert "no runs are due to resume (2 unfinished waiting for a signal, a timer or a retry time)" in nothing

    cli(*s, "signal", "wait-1", "approve", "--data", '{"approved": false}', cwd=project)
    woken = json.loads(cli(*s, "resume", "--all", "--json", cwd=project).stdout)
    assert [(r["run_id"], r["status"]) for r in woken] == [("wait-1", "completed")]
    assert store_history(store, "nap-1")[-1] == "RunSuspended"


# -- signal: a payload that the workflow declares is asked for ----------------------------------


def test_signal_without_data_says_the_payload_is_needed(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    prepare(store, flows(project), project / "fail.flag")
    before = store_history(store, "wait-1")
    result = cli("--store", store, "-w", "flows", "signal", "wait-1", "approve", cwd=project, check=None)
    line = one_line_error(result, "signal 'approve'", "Approve payload", "approved", "--data")
    assert "input_value" not in line
    assert store_history(store, "wait-1") == before


def test_a_signal_name_typo_is_refused_and_a_repeated_id_is_not_sent_again(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    prepare(store, flows(project), project / "fail.flag")
    s = ("--store", store, "-w", "flows")
    before = store_history(store, "wait-1")
    typo = cli(*s, "signal", "wait-1", "approvee", "--data", '{"approved": true}', cwd=project, check=None)
    one_line_error(typo, "declares no signal 'approvee'", "'approve'")
    assert store_history(store, "wait-1") == before
    first = cli(*s, "signal", "wait-1", "approve", "--data", '{"approved": true}', "--id", "a-1", cwd=project)
    again = cli(*s, "signal", "wait-1", "approve", "--data", '{"approved": true}', "--id", "a-1", cwd=project)
    assert "sent to" in first.stdout and "already delivered" not in first.stdout
    assert "(id 'a-1') was already delivered, not sent again" in again.stdout
    assert store_history(store, "wait-1").count("SignalReceived") == 1


# -- output people can read -----------------------------------------------------------------------


def test_runs_json_is_a_summary_and_times_read_one_way(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    module = flows(project)
    prepare(store, module, project / "fail.flag")

    async def nap() -> None:
        engine = Engine(store, workflows=[module.nap])
        await engine.run(module.nap, run_id="nap-1")
        engine.close()

    asyncio.run(nap())
    s = ("--store", store)
    summary, full, shown, history, table = cli_all(
        (*s, "runs", "--json"), (*s, "runs", "--json", "--full"), (*s, "show", "nap-1"), (*s, "history", "nap-1"),
        (*s, "runs"), cwd=project)
    rows = json.loads(summary.stdout)
    assert {r["run_id"] for r in rows} == {"done-1", "new-1", "wait-1", "fail-1", "nap-1"}
    assert all("state" not in r and "output" not in r for r in rows)
    failed = next(r for r in rows if r["run_id"] == "fail-1")
    assert failed["status"] == "failed" and "backend down" in failed["error"] and failed["steps"] == 1
    assert all("state" in r for r in json.loads(full.stdout))  # --full: the whole views, as before

    for text in (shown.stdout, history.stdout, table.stdout):
        assert "+00:00" not in text and "T" not in "".join(re.findall(r"\d{4}-\d\d-\d\d.\d\d", text))
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    assert re.search(rf"started\s+{stamp}", shown.stdout)
    assert re.search(rf"waiting for\s+until {stamp}", shown.stdout)
    assert re.search(rf"timer set to wake at {stamp}", history.stdout)
    assert re.search(stamp, table.stdout)


def test_the_worker_summary_explains_itself(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    prepare(store, flows(project), project / "fail.flag")
    out = cli("--store", store, "-w", "flows", "worker", "--until-idle", "--poll", "0.05", cwd=project).stdout
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("worker stopped after 1 drive: 1 completed, 0 failed, 0 cancelled, 0 left waiting")
    for internal in ("indexed", "notified", "lost", "claimed"):
        assert internal not in summary


def test_help_shows_metavars_not_type_placeholders(tmp_path: Path) -> None:
    screens = cli_all(("--help",), ("start", "--help"), ("resume", "--help"), ("runs", "--help"),
                      ("worker", "--help"), ("diagram", "--help"), ("signal", "--help"), ("report", "--help"),
                      ("projections", "status", "--help"), cwd=tmp_path, env={"COLUMNS": "160"})
    for screen in screens:
        assert not re.search(r"<(bool|str|int|float|path|list)", screen.stdout), screen.stdout
    diagram = screens[5].stdout
    assert "mermaid|svg|png" in diagram and "--workflow-version" in diagram
    assert "--version" not in diagram.replace("--workflow-version", "")  # no clash with `phaseledger --version`
    assert "N [x>=1]" in screens[4].stdout  # --concurrency N


def test_diagram_workflow_version_and_the_old_spelling(project: Path) -> None:
    new, old, version = cli_all(("-w", "flows", "diagram", "counter", "--workflow-version", "1"),
                                ("-w", "flows", "diagram", "counter", "--version", "1"),
                                ("--version",), cwd=project)
    assert new.stdout == old.stdout and "stateDiagram-v2" in new.stdout
    assert "diagram --version is deprecated" in old.stderr and "--workflow-version" in old.stderr
    assert version.stdout.startswith("phaseledger ")
    missing = cli("-w", "flows", "diagram", "counter", "--workflow-version", "2", check=None, cwd=project)
    one_line_error(missing, "counter")


# -- Ctrl-C: one line, status 130, and the run resumes ---------------------------------------------


def _sigint_default() -> None:
    """In the child: Ctrl-C's default disposition, even when this process was started ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_steps(store: str, run_id: str, count: int, timeout: float = 60.0) -> None:
    """Wait until the run has recorded ``count`` steps (it is being driven by another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(RunNotFound):  # the run is not there yet
            if store_history(store, run_id).count("StepRecorded") >= count:
                return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id!r} recorded fewer than {count} steps in {timeout} s")


def interrupt(args: list[str], *, cwd: Path, store: str, run_id: str) -> subprocess.CompletedProcess[str]:
    """Run a command, press Ctrl-C (SIGINT) once its run has recorded two steps, and collect it."""
    process = subprocess.Popen(args, cwd=cwd, env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_sigint_default)  # noqa: PLW1509 - only resets a signal
    try:
        wait_for_steps(store, run_id, 2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def test_ctrl_c_stops_the_run_with_one_line_and_status_130(project: Path) -> None:
    store = f"sqlite:///{project / 'runs.db'}"
    s = ("--store", store, "-w", "flows")
    cli(*s, "start", "slow", "--input", '{"limit": 40}', "--run-id", "slow-1", cwd=project)
    result = interrupt([*command(), *s, "resume", "slow-1"], cwd=project, store=store, run_id="slow-1")
    line = one_line_error(result, "run 'slow-1' stopped", "resume slow-1", status=130, prefix="interrupted: ")
    assert f"phaseledger --store {store} -w flows resume slow-1" in line

    started = interrupt([*command(), *s, "start", "slow", "--input", '{"limit": 40}', "--run-id", "slow-2",
                         "--drive"], cwd=project, store=store, run_id="slow-2")
    one_line_error(started, "run 'slow-2' stopped", "resume slow-2", status=130, prefix="interrupted: ")

    resumed = json.loads(cli(*s, "resume", "slow-1", "slow-2", "--json", cwd=project).stdout)
    assert [r["status"] for r in resumed] == ["completed", "completed"]  # no lease was left behind
    for r in resumed:  # the steps recorded before Ctrl-C come from the log; the rest ran once
        assert r["replayed"] >= 2 and r["replayed"] + r["executed"] == 40, r
