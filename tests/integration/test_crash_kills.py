"""Real processes killed with SIGKILL at every kind of point, resumed by new processes.

The crash harness checks after every kill and at the end that no committed step ran
again, no committed event was lost or changed, versions are gapless, nothing is recorded
twice, and the run ended exactly like an uninterrupted one. These tests also count the
workflow's own side effects, written to a file outside the event store.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from phaseledger.testing.crash import KILL_KINDS, CrashHarness, CrashReport, KillPoint
from tests.integration.crashflows import EFFECTS_ENV

TARGET = "tests.integration.crashflows:order_workflow"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def harness(store: str, tmp_path: Path, **options: object) -> CrashHarness:
    return CrashHarness(
        TARGET, store, env={EFFECTS_ENV: str(tmp_path / "effects.tsv")}, cwd=ROOT,
        workdir=tmp_path / "ledgers", **options,  # type: ignore[arg-type]
    )


def check_side_effects(report: CrashReport, effects: Path) -> None:
    """The workflow's own effects: each charge once per run, repeats only where the harness saw a re-execution."""
    lines = [line.split("\t") for line in effects.read_text().splitlines()]
    by_run: dict[str, Counter[str]] = defaultdict(Counter)
    for key, name in lines:
        by_run[key.split(":", 1)[0]][f"{key}\t{name}"] += 1
    for run in [report.baseline, *report.runs]:
        effects_of_run = by_run[run.run_id]
        charges = {k for k in effects_of_run if k.endswith("\tcharge")}
        assert len(charges) == 4, (run.run_id, sorted(charges))
        repeated = {k.split("\t")[0] for k, n in effects_of_run.items() if n > 1 and not k.endswith("\treview")}
        assert repeated <= set(run.reexecuted), (run.run_id, repeated, run.reexecuted)


def check_report(report: CrashReport, minimum: int) -> None:
    report.raise_for_problems()
    assert report.kill_points >= minimum
    fired = Counter(k.where for run in report.runs for k in run.kills)
    assert set(fired) == set(KILL_KINDS), fired
    assert report.baseline.status == "completed"
    assert report.baseline.output == {"label": "LABEL-100", "total": 100, "items": 4}
    # At-least-once for steps in flight: a kill inside a step body made that step run
    # again in the next process, under the same idempotency key.
    in_flight = [run for run in report.runs if run.kills and run.kills[0].where == "in_step"]
    assert any(run.lost_per_kill[0] == 1 and run.reexecuted for run in in_flight)


def test_fifty_kill_points_on_sqlite(tmp_path: Path) -> None:
    with harness(f"sqlite:///{tmp_path}/runs.db", tmp_path) as h:
        report = h.explore(kill_points=50, seed=3, kills_per_run=3, parallel=2)
    check_report(report, 50)
    check_side_effects(report, tmp_path / "effects.tsv")


@pytest.mark.postgres
def test_twenty_kill_points_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    with harness(postgres_url, tmp_path) as h:
        report = h.explore(kill_points=20, seed=5, kills_per_run=3, parallel=2, exhaustive_first=False)
        first = h.run("in-flight", [KillPoint("in_step", 1), KillPoint("after_append", 1), KillPoint("in_step", 2)])
        h.compare(report.baseline, first)
        report.runs.append(first)
    check_report(report, 20)
    check_side_effects(report, tmp_path / "effects.tsv")


def test_batched_commits_lose_at_most_n_minus_one_steps(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    with harness(store, tmp_path, checkpoint_every_n_steps=3) as h:
        report = h.explore(kill_points=15, seed=11, kills_per_run=3, parallel=2, exhaustive_first=False)
        # Kill just before the 4th live step: charges 2 and 3 are recorded but not committed yet.
        lost = h.run("batched-lost", [KillPoint("before_step", 4)])
        h.compare(report.baseline, lost)
        report.runs.append(lost)
    report.raise_for_problems()  # includes: every kill lost at most N-1 results (N with a step in flight)
    assert report.kill_points >= 15
    assert lost.lost_per_kill == [2]
    assert max(n for run in report.runs for n in run.lost_per_kill) <= 3
    with harness(store, tmp_path) as unbatched:
        reference = unbatched.baseline("unbatched-baseline")
        unbatched.compare(reference, report.baseline)  # final results equal those with N=1
    assert not report.baseline.problems, report.baseline.problems
    check_side_effects(report, tmp_path / "effects.tsv")
