"""No pickle in the log: handled agent failures are journaled as plain JSON and rebuilt safely.

Each test drives a durable agent whose first model request fails with a provider error that
``ModelFallback`` handles, on a real SQLite store. The run then fails in a later step, so
``engine.retry`` replays the agent from the journal: the recorded failure is raised again
from the log, and the fallback must take the same path without calling a model.
"""

from __future__ import annotations

import base64
import json
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.capabilities import ModelFallback
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from phaseledger import Context, Engine, RecordedError, Workflow
from phaseledger.agents import PhaseledgerDurability

BODY = {"error": {"type": "overloaded", "retry": True}}


class Trip(BaseModel):
    city: str = "Oslo"


class Scenario:
    """An agent whose primary model fails with a 503 once, a backup model, and a run to replay.

    With ``follow_up`` the backup asks for a tool and the primary answers after it: that request's
    history holds pydantic-ai's description of the failed attempt (type name and message), so it
    replays only if the replayed error reads as the live one did.
    """

    def __init__(self, *, follow_up: bool = True) -> None:
        self.follow_up = follow_up
        self.calls = {"primary": 0, "backup": 0, "tool": 0}
        self.seen: list[BaseException] = []
        self.crash = True
        backup_model = FunctionModel(self.backup, model_name="backup")
        self.agent = Agent(
            FunctionModel(self.primary, model_name="primary"), name="trips",
            capabilities=[ModelFallback(backup_model, fallback_on=self.falls_back),
                          PhaseledgerDurability(models={"backup": backup_model})],
        )

        @self.agent.tool_plain
        def weather(city: str) -> str:
            self.calls["tool"] += 1
            return f"sunny in {city}"

        self.workflow = Workflow("trips", state=Trip)

        @self.workflow.phase(initial=True, final=True)
        async def plan(ctx: Context[Trip]) -> Any:
            output = (await ctx.run_agent(self.agent, f"weather in {ctx.state.city}?")).output
            await ctx.step("book", self.book)
            return output

    def primary(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls["primary"] += 1
        if len(messages) == 1:
            try:
                raise ConnectionResetError("the provider hung up")
            except ConnectionResetError as exc:
                raise ModelHTTPError(503, "primary", body=BODY) from exc
        return ModelResponse(parts=[TextPart(f"answer: {messages[-1].parts[0].content}")])

    def backup(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.calls["backup"] += 1
        if not self.follow_up:
            return ModelResponse(parts=[TextPart("answer: sunny in Oslo")])
        return ModelResponse(parts=[ToolCallPart("weather", {"city": "Oslo"}, tool_call_id="c1")])

    def falls_back(self, exc: Exception) -> bool:
        self.seen.append(exc)
        return isinstance(exc, (ModelHTTPError, RecordedError))

    @property
    def live_calls(self) -> dict[str, int]:
        return {"primary": 2, "backup": 1, "tool": 1} if self.follow_up else {"primary": 1, "backup": 1, "tool": 0}

    def book(self) -> str:
        if self.crash:
            raise RuntimeError("booking service down")
        return "booked"


async def first_attempt(scenario: Scenario, url: str) -> None:
    """Run until the step after the agent fails: the handled 503 is journaled by then."""
    async with Engine(url, workflows=[scenario.workflow], snapshot_every=None) as engine:
        run = await engine.run(scenario.workflow, {}, run_id="trip")
    assert run.status == "failed"
    assert scenario.calls == scenario.live_calls
    assert [type(e) for e in scenario.seen] == [ModelHTTPError]


async def retry(scenario: Scenario, url: str) -> Any:
    """Retry the run: the agent replays from the journal, then the step succeeds."""
    scenario.crash = False
    scenario.seen.clear()
    async with Engine(url, workflows=[scenario.workflow], snapshot_every=None) as engine:
        return await engine.retry("trip")


def replayed_error(scenario: Scenario, run: Any) -> BaseException:
    """The error the fallback saw on replay, once the retried run took the recorded path."""
    assert run.status == "completed", run.error
    assert run.output == "answer: sunny in Oslo"
    assert scenario.calls == scenario.live_calls  # nothing ran again
    assert len(scenario.seen) == 1
    return scenario.seen[0]


def stored_blobs(db: Path) -> list[bytes]:
    with sqlite3.connect(db) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert "stored_events" in tables
        return [bytes(row[0]) for table in tables if table.startswith("stored_")
                for row in conn.execute(f"SELECT state FROM {table}")]  # noqa: S608 - names read from the file


def assert_no_pickle(value: Any, key: str = "") -> None:
    """No ``pickle`` field and no base64 pickle anywhere in a stored event (tracebacks may name test files)."""
    if isinstance(value, dict):
        assert "pickle" not in value
        for name, item in value.items():
            assert_no_pickle(item, name)
    elif isinstance(value, list):
        for item in value:
            assert_no_pickle(item, key)
    elif isinstance(value, str):
        assert not value.startswith(("gASV", "gAWV")), key  # base64 of a protocol 4 or 5 pickle
        assert key == "traceback" or "pickle" not in value, key


def rewrite_recorded_error(db: Path, rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Replace the recorded error of the journaled model request in the SQLite file itself."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT originator_id, originator_version, state FROM stored_events").fetchall()
        targets = [(rid, version, json.loads(state)) for rid, version, state in rows if b'"error":{' in state]
        targets = [t for t in targets if t[2].get("key") == "a0:m0"]
        assert len(targets) == 1
        rid, version, data = targets[0]
        data["error"] = rewrite(data["error"])
        conn.execute(
            "UPDATE stored_events SET state = ? WHERE originator_id = ? AND originator_version = ?",
            (json.dumps(data).encode(), rid, version),
        )


class _Planted:
    """Pickles as a call of ``open(path, "w")``: loading the pickle creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (self.path, "w")


def planted_pickle(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(_Planted(marker))).decode()


async def test_a_handled_model_failure_round_trips_as_plain_json(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    scenario = Scenario()
    await first_attempt(scenario, url)
    replayed = replayed_error(scenario, await retry(scenario, url))

    assert type(replayed) is ModelHTTPError
    assert (replayed.status_code, replayed.model_name, replayed.body) == (503, "primary", BODY)
    assert str(replayed) == f"status_code: 503, model_name: primary, body: {BODY}"
    cause = replayed.__cause__
    assert isinstance(cause, RecordedError)  # raise ... from ConnectionResetError, kept as data
    assert (cause.type_name, cause.module) == ("ConnectionResetError", "builtins")
    assert cause.message == "the provider hung up"
    assert "ConnectionResetError: the provider hung up" in cause.traceback

    blobs = stored_blobs(db)
    assert any(b'"status_code":503' in blob for blob in blobs)
    for blob in blobs:
        assert b"\x80\x04\x95" not in blob and b"\x80\x05\x95" not in blob  # how pickles of protocol 4 and 5 start
        assert_no_pickle(json.loads(blob))


async def test_a_planted_pickle_in_an_old_record_never_runs(tmp_path: Path) -> None:
    """A record as earlier releases wrote it (type, message, traceback, pickle), its pickle planted."""
    db, marker = tmp_path / "runs.db", tmp_path / "planted"
    url = f"sqlite:///{db}"
    scenario = Scenario()
    await first_attempt(scenario, url)
    rewrite_recorded_error(db, lambda error: {
        "type": error["type"], "message": error["message"], "traceback": error["traceback"],
        "pickle": planted_pickle(marker),
    })
    run = await retry(scenario, url)

    assert not marker.exists()
    replayed = replayed_error(scenario, run)
    assert type(replayed) is ModelHTTPError  # rebuilt from the type and message old records hold
    assert replayed.status_code == 503 and replayed.model_name == "primary"


async def test_a_planted_record_of_an_unknown_type_replays_as_recorded_error(tmp_path: Path) -> None:
    db, marker = tmp_path / "runs.db", tmp_path / "planted"
    url = f"sqlite:///{db}"
    scenario = Scenario(follow_up=False)  # the planted message would change the next request's history
    await first_attempt(scenario, url)
    rewrite_recorded_error(db, lambda error: {
        "type": "system", "module": "os", "message": f"touch {marker}", "traceback": "",
        "args": [f"touch {marker}"], "pickle": planted_pickle(marker),
    })
    run = await retry(scenario, url)

    assert not marker.exists()
    replayed = replayed_error(scenario, run)
    assert isinstance(replayed, RecordedError)
    assert (replayed.type_name, replayed.module, replayed.message) == ("system", "os", f"touch {marker}")
    assert replayed.data["args"] == [f"touch {marker}"]
