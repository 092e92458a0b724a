"""The targets table's logic, on fabricated results: which figure each target reads, and
how it is judged. No benchmark runs here and no timing is asserted."""

from __future__ import annotations

from typing import Any

from benchmarks._harness import Result
from benchmarks.bench_steps import AFTER_WORK, APPEND_ALONE
from benchmarks.targets import MET, NOT_MEASURED, NOT_MET, Verdict, evaluate, table


def _result(benchmark: str, case: str, metric: str, values: list[float], floors: list[float] | None = None,
            **extra: Any) -> Result:
    return Result.paired(benchmark, case, metric, "", values, "floor" if floors else None, floors, **extra)


def _by_target(verdicts: list[Verdict], start: str) -> Verdict:
    return next(v for v in verdicts if v.target.strip().startswith(start))


def test_nothing_measured_gives_a_line_per_target_all_not_measured() -> None:
    verdicts = evaluate([])
    assert len(verdicts) >= 20
    assert {v.status for v in verdicts} == {NOT_MEASURED}
    assert table(verdicts)[-1].endswith(f"0 met, 0 not met, {len(verdicts)} not measured")


def test_step_against_the_commit_floor() -> None:
    verdicts = evaluate([
        _result("steps", "sqlite checkpoint_every_n_steps=1", "per step", [140, 150, 160], [100, 100, 100]),
        _result("steps", "postgres checkpoint_every_n_steps=1", "per step", [150, 150, 150], [100, 100, 100]),
    ])
    sqlite = _by_target(verdicts, "journaled step on SQLite")
    assert (sqlite.status, sqlite.value) == (MET, 1.5)
    assert "1.50x [1.40–1.60]" in sqlite.measured
    assert _by_target(verdicts, "journaled step on PostgreSQL").status == NOT_MET
    alone = _result("steps", APPEND_ALONE, "per step", [130, 130, 130], [100, 100, 100])
    postgres = _by_target(evaluate([alone, _result(
        "steps", "postgres checkpoint_every_n_steps=1", "per step", [150, 150, 150], [100, 100, 100])]),
        "journaled step on PostgreSQL")
    assert postgres.status == NOT_MET and postgres.measured.endswith("the append function alone 1.30x [1.30–1.30]")
    after = _result("steps", f"postgres {AFTER_WORK}", "per step", [240, 250, 260], [100, 100, 100])
    postgres = _by_target(evaluate([alone, after, _result(
        "steps", "postgres checkpoint_every_n_steps=1", "per step", [300, 300, 300], [100, 100, 100])]),
        "journaled step on PostgreSQL")
    assert postgres.measured.endswith("the append function alone 1.30x [1.30–1.30]; "
                                      "a commit after the memory step's work 2.50x [2.40–2.60]")


def test_cpu_per_step_as_measured_and_less_the_commit() -> None:
    verdicts = evaluate([
        _result("steps", "memory checkpoint_every_n_steps=1", "CPU per step", [20, 20, 20]),
        _result("steps", "sqlite checkpoint_every_n_steps=1", "CPU per step", [90, 100, 110], [40, 40, 40]),
    ])
    raw, net = (v for v in verdicts if "CPU" in v.target)
    assert (raw.status, raw.value) == (NOT_MET, 5.0)
    assert raw.measured.endswith("the memory step plus one commit's CPU alone 3.00x")  # (20 + 40) ÷ 20
    assert (net.status, net.value) == (MET, 3.0)


def test_against_the_peers_reads_their_paired_ratio_to_phaseledger() -> None:
    def peer(system: str, ratio: float) -> Result:
        return _result("compare", f"{system} on sqlite", "per step", [1000], [100],
                       x_phaseledger={"median": ratio, "min": ratio, "max": ratio})

    verdicts = evaluate([peer("eventsourcing", 0.9), peer("langgraph", 4.2), peer("dbos", 4.9)])
    assert _by_target(verdicts, "faster per step than naive eventsourcing on SQLite").status == NOT_MET
    assert _by_target(verdicts, "≥ 4x cheaper per step than LangGraph (sync) on SQLite").status == MET
    dbos = _by_target(verdicts, "≥ 5x cheaper per step than DBOS on SQLite")
    assert dbos.status == NOT_MET and dbos.measured.endswith("a step of one commit alone would be 10.00x")
    assert "commit alone" not in _by_target(verdicts, "≥ 4x cheaper per step than LangGraph (sync) on SQLite").measured
    assert _by_target(verdicts, "faster per step than naive eventsourcing on PostgreSQL").status == NOT_MEASURED


def test_bytes_per_step_is_judged_on_the_trivial_steps_rows_with_the_disk_figure_beside() -> None:
    other = _result("storage", "sqlite 200-byte results", "bytes per step", [500])
    assert _by_target(evaluate([other]), "bytes per trivial step on SQLite").status == NOT_MEASURED
    rows = _result("storage", "sqlite trivial steps (int result), all rows", "bytes per step", [280])
    disk = _result("storage", "sqlite trivial steps (int result), on disk", "bytes per step", [350])
    verdict = _by_target(evaluate([other, rows, disk]), "bytes per trivial step on SQLite")
    assert (verdict.status, verdict.value) == (MET, 280) and "350 B on disk" in verdict.measured
    heavy = _result("storage", "sqlite trivial steps (int result), all rows", "bytes per step", [320])
    assert _by_target(evaluate([heavy]), "bytes per trivial step on SQLite").status == NOT_MET


def test_recovery_against_langgraph_prints_phaseledgers_statements_alone_beside() -> None:
    def recovery(case: str, ms: float, **extra: Any) -> Result:
        return _result("compare", f"{case} on postgres, killed at step 500", "recover to first step", [ms], **extra)

    ours = recovery("phaseledger", 20.0)
    theirs = recovery("langgraph", 8.0, x_phaseledger={"median": 0.4, "min": 0.4, "max": 0.4})
    verdict = _by_target(evaluate([ours, theirs]), "resume to first new step ≤ LangGraph's on PostgreSQL")
    assert verdict.status == NOT_MET and "statements alone" not in verdict.measured
    for alone, side in ((9.0, "over"), (6.0, "under")):
        floor = recovery("phaseledger's statements alone", alone)
        verdict = _by_target(evaluate([ours, theirs, floor]), "resume to first new step ≤ LangGraph's on PostgreSQL")
        assert verdict.status == NOT_MET
        assert verdict.measured.endswith(f"its statements alone {alone:.1f} ms, {side} LangGraph's whole")


def test_resume_flat_compares_the_longest_history_with_the_shortest() -> None:
    def resume(events: int, ratio: float, snapshot_every: int | None = 100) -> Result:
        return _result("resume", f"sqlite {events:,} events, snapshots", "resume to first step", [ratio], [1.0],
                       events=events, snapshot_every=snapshot_every)

    flat = _by_target(evaluate([resume(100, 2.0), resume(10_000, 2.4), resume(10_000, 90, None)]),
                      "resume flat in history length on SQLite")
    assert (flat.status, round(flat.value or 0, 2)) == (MET, 1.2)
    assert _by_target(evaluate([resume(100, 2.0)]), "resume flat").status == NOT_MEASURED


def test_follower_lag_bounded_or_growing() -> None:
    def lag(samples: list[float]) -> Result:
        return _result("scale", "postgres 1 worker process(es) x 10, report follower", "lag (rows of the log)",
                       samples, log_rows_per_second=100.0, follow_interval=0.2)

    bounded = evaluate([lag([0, 30, 5, 25, 0, 40, 10, 35])])
    assert _by_target(bounded, "report follower keeps up").status == MET
    growing = evaluate([lag([0, 30, 60, 90, 120, 150, 180, 210])])
    assert _by_target(growing, "report follower keeps up").status == NOT_MET


def test_memory_per_waiting_run_reads_the_most_runs() -> None:
    def held(runs: int, per_run: float) -> Result:
        return _result("scale", f"sqlite worker, {runs:,} runs waiting", "tracemalloc held", [1.0], [1.0],
                       runs=runs, bytes_per_run=per_run, per_run={"rss": 300.0})

    verdict = _by_target(evaluate([held(1_000, 40.0), held(10_000, 2.0)]), "worker memory per waiting run")
    assert (verdict.status, verdict.value) == (MET, 2.0)
    assert "RSS 300 B/run" in verdict.measured
