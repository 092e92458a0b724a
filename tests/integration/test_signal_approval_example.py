"""The human-approval example (examples/approval.py) on memory and SQLite: approve, reject, time out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval.py"


@pytest.fixture(scope="module")
def approval() -> ModuleType:
    spec = importlib.util.spec_from_file_location("approval_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["approval_example"] = module  # its models are recorded by import path
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
@pytest.mark.parametrize(("decision", "expected"), [
    ({"approved": True, "comment": "go"}, "completed in phase done: applied 3 steps"),
    ({"approved": False, "comment": "not today"}, "completed in phase stopped: stopped: not today"),
    (None, "completed in phase stopped: stopped: no decision in time"),
])
async def test_the_approval_example(approval: ModuleType, backend: str, decision: dict | None, expected: str,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = "memory://" if backend == "memory" else f"sqlite:///{tmp_path}/approvals.db"
    answer = approval.Approval(**decision) if decision else None
    await approval.main(store, answer, timeout=0.2 if decision is None else 3600.0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("waiting, waiting for 'approve'")
    assert lines[-1].endswith(expected)
