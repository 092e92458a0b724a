"""The FastAPI approval service example (examples/approval_service.py): start changes over
HTTP, decide them with signals, read their status, and browse the mounted web view."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("starlette")
from starlette.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval_service.py"


@pytest.fixture(scope="module")
def service_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("approval_service_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["approval_service_example"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def client(service_module: ModuleType, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(service_module.build_service(f"sqlite:///{tmp_path}/approvals.db")) as c:
        yield c


def test_a_change_is_started_approved_and_executed(client: TestClient) -> None:
    started = client.post("/changes", json={"id": "chg-1", "request": "rotate the API keys"})
    assert started.status_code == 201
    assert started.json()["status"] == "waiting" and started.json()["waiting_for"] == "approve"
    assert len(started.json()["plan"]) == 3
    again = client.post("/changes", json={"id": "chg-1", "request": "rotate the API keys"})
    assert again.status_code == 201 and again.json()["status"] == "waiting"  # idempotent start
    other = client.post("/changes", json={"id": "chg-1", "request": "something else"})
    assert other.status_code == 409

    decided = client.post("/changes/chg-1/decision", json={"approved": True, "comment": "go", "decision_id": "d1"})
    assert decided.status_code == 200
    assert decided.json()["status"] == "completed" and decided.json()["phase"] == "done"
    assert decided.json()["applied"] == ["done: back up before: rotate the API keys",
                                         "done: apply: rotate the API keys", "done: verify: rotate the API keys"]
    retried = client.post("/changes/chg-1/decision", json={"approved": True, "decision_id": "d1"})
    assert retried.status_code == 409  # finished: the decision cannot be taken again
    assert client.get("/changes/chg-1").json()["output"] == "applied 3 steps"


def test_a_rejected_change_stops_and_errors_are_http_errors(client: TestClient) -> None:
    client.post("/changes", json={"id": "chg-2", "request": "deploy on Friday"})
    rejected = client.post("/changes/chg-2/decision", json={"approved": False, "comment": "not on a Friday"})
    assert rejected.json()["status"] == "completed" and rejected.json()["phase"] == "stopped"
    assert client.get("/changes/nope").status_code == 404
    assert client.post("/changes/nope/decision", json={"approved": True}).status_code == 404
    assert client.post("/changes", json={"id": "bad id!", "request": "x"}).status_code == 422


def test_the_web_view_is_mounted_read_only(client: TestClient) -> None:
    client.post("/changes", json={"id": "chg-3", "request": "resize the database"})
    runs = client.get("/runs-ui/runs")
    assert runs.status_code == 200 and "chg-3" in runs.text and "Approvals · runs" in runs.text
    page = client.get("/runs-ui/runs/chg-3")
    assert page.status_code == 200 and "waiting" in page.text
    assert 'href="/runs-ui/static/app.css"' in page.text
    assert client.post("/runs-ui/actions/cancel", data={"run_id": "chg-3"}).status_code == 403


def test_the_worker_of_the_service_takes_up_a_decision_sent_from_elsewhere(client: TestClient, tmp_path: Path,
                                                                          service_module: ModuleType) -> None:
    import asyncio
    import time

    from phaseledger import Engine

    client.post("/changes", json={"id": "chg-4", "request": "renew the certificate"})
    other = Engine(f"sqlite:///{tmp_path}/approvals.db", workflows=[service_module.approval])
    try:
        asyncio.run(other.signal("chg-4", "approve", service_module.Approval(approved=True)))
    finally:
        other.close()
    for _ in range(300):
        if client.get("/changes/chg-4").json()["status"] == "completed":
            break
        time.sleep(0.05)
    assert client.get("/changes/chg-4").json()["phase"] == "done"
