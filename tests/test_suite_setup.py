"""The suite says which PostgreSQL server it tests against, and why PostgreSQL tests skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_skipped_postgres_tests_say_why_and_how_to_point_them_elsewhere() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PHASELEDGER_TEST_POSTGRES_URL")}
    env["PHASELEDGER_TEST_POSTGRES_URL"] = "postgresql://postgres@127.0.0.1:1/test"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/integration/test_stores.py",
         "-k", "postgres"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("PostgreSQL tests")]
    assert len(notes) == 1, result.stdout  # once, even under -q
    assert "127.0.0.1:1" in notes[0] and "not reachable" in notes[0]
    assert "PHASELEDGER_TEST_POSTGRES_URL=" in notes[0]
    assert "skipped" in result.stdout


def test_the_readme_keeps_two_set_up_commands_and_says_where_postgres_tests_connect() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in setup.splitlines()] == ["make demo", "make test"]
    assert "PHASELEDGER_TEST_POSTGRES_URL" in readme.split("## ", 1)[0]  # before the tour
