"""Importing the Temporal dispatcher without temporalio says which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
sys.modules["temporalio"] = None  # as if the extra were not installed
from phaseledger import PhaseledgerError
try:
    import phaseledger.dispatch.temporal
except PhaseledgerError as error:
    assert isinstance(error, ImportError), type(error)
    print(type(error).__name__, error)
"""


def test_a_missing_temporal_extra_is_a_clear_phaseledger_error() -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("DispatcherUnavailable ")
    assert "pip install 'phaseledger[temporal]'" in done.stdout
