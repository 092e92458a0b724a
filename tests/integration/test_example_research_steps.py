"""examples/research_steps.py runs on a SQLite file, and a second run resumes from the log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "research_steps.py"


def test_research_steps_example_runs_and_is_idempotent(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'research.db'}"
    first = subprocess.run([sys.executable, str(EXAMPLE), "--store", store], capture_output=True, text=True,
                           timeout=120, check=True)
    assert "validation: rework needed" in first.stdout
    assert "run research-1: completed in completion, 4 steps, 12 events" in first.stdout
    second = subprocess.run([sys.executable, str(EXAMPLE), "--store", store], capture_output=True, text=True,
                            timeout=120, check=True)
    assert "planning" not in second.stdout  # finished: nothing runs again
    assert "run research-1: completed in completion, 4 steps, 12 events" in second.stdout
