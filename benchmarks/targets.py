"""The performance targets of the third round, checked against the results of one suite run.

``python -m benchmarks`` prints, after the benchmarks, one line per target: the figure it
is judged on (median, with [min–max] where there are repeats), the threshold, and
``met``, ``NOT met`` or ``not measured`` (its benchmark was skipped, unavailable, or ran
at sizes that do not give the figure). Every figure is one the benchmarks already print;
this module only picks them out and compares. Nothing here is asserted by a test: the
figures of a shared machine are for reading.

Where a target is not one figure, the rule used is:

- CPU per step on SQLite against the memory store's step: the ratio of the two medians
  (they are measured in different repeats, so not paired); printed once as measured and
  once less the CPU SQLite's own commit costs in the floor (paired, repeat by repeat).
- resume flat in history length: the longest history's resume over the shortest's, each
  as its median ratio to the commit floor of its own repeats, ≤ 1.5.
- projection memory flat: peak memory of a rebuild over a log ten times longer ≤ 1.5×.
- memory per waiting run ≈ 0: Python memory held by the worker (tracemalloc, after a
  collection) above the empty store, divided by the waiting runs, ≤ 16 B per run, less
  than any Python object a worker could keep per run (RSS per run printed beside it).
- resume and the state of a long run against LangGraph: printed with phaseledger's
  statements alone beside them (:mod:`benchmarks.compare.floor`), the floor of what its
  guarantees send to the store, and whether that floor alone is under LangGraph's figure.
- a follower keeping up: its lag stays bounded, read as: the largest lag in rows in the
  second half of the samples taken while the log grew is at most the largest in the
  first half plus the rows written during one follow interval. A lag that grows through
  the measurement fails this; one that rises and falls with each poll does not.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks._harness import Result, Stats
from benchmarks.bench_steps import AFTER_WORK, APPEND_ALONE
from benchmarks.compare.bench_compare import STATEMENTS_ALONE

TITLE = "Targets (performance, third round)"
BACKENDS = ("sqlite", "postgres")
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"

FLAT_RESUME = 1.5
FLAT_MEMORY = 1.5
HELD_BYTES_PER_RUN = 16.0


@dataclass(frozen=True)
class Verdict:
    """One target: what is promised, what was measured, and whether it is met."""

    target: str
    threshold: str
    status: str
    measured: str = ""
    value: float | None = None
    """The figure compared with the threshold, when measured."""

    def as_dict(self) -> dict[str, Any]:
        """For the JSON results."""
        return asdict(self)


def _find(results: Iterable[Result], benchmark: str, metric: str,
          case: Callable[[str], bool]) -> Result | None:
    return next((r for r in results if r.benchmark == benchmark and r.metric == metric and case(r.case)), None)


def _range(stats: Stats | dict[str, float], unit: str = "x", digits: int = 2) -> str:
    if isinstance(stats, Stats):
        median, low, high, n = stats.median, stats.min, stats.max, len(stats.samples)
    else:
        median, low, high, n = stats["median"], stats["min"], stats["max"], 2
    text = f"{median:,.{digits}f}{unit}"
    return text + (f" [{low:,.{digits}f}–{high:,.{digits}f}]" if n > 1 else "")


def _judge(target: str, threshold: str, value: float | None, ok: bool, measured: str) -> Verdict:
    if value is None:
        return Verdict(target, threshold, NOT_MEASURED)
    return Verdict(target, threshold, MET if ok else NOT_MET, measured, value)


def _missing(target: str, threshold: str) -> Verdict:
    return Verdict(target, threshold, NOT_MEASURED)


# -- 1 and 2: the journaled step ---------------------------------------------------------------


def step_floor(results: Sequence[Result], backend: str, limit: float) -> Verdict:
    """A journaled step (commit every step) against the commit floor of the same repeats."""
    target = f"journaled step on {NAMES[backend]} ≤ {limit}x the commit floor"
    threshold = f"≤ {limit:.2f}x"
    r = _find(results, "steps", "per step", lambda c: c == f"{backend} checkpoint_every_n_steps=1")
    if r is None or r.ratio is None:
        return _missing(target, threshold)
    measured = f"{_range(r.ratio)} ({r.value.median:,.0f} µs/step, floor {r.floor.median if r.floor else 0:,.0f} µs)"
    alone = _find(results, "steps", "per step", lambda c: c == APPEND_ALONE) if backend == "postgres" else None
    if alone is not None and alone.ratio is not None:
        measured += f"; the append function alone {_range(alone.ratio)}"
    after = _find(results, "steps", "per step", lambda c: c == f"{backend} {AFTER_WORK}")
    if after is not None and after.ratio is not None:
        measured += f"; a commit after the memory step's work {_range(after.ratio)}"
    return _judge(target, threshold, r.ratio.median, r.ratio.median <= limit, measured)


def step_cpu(results: Sequence[Result], limit: float = 3.0) -> list[Verdict]:
    """CPU per step on SQLite against the memory store's step: as measured, and less the commit's own CPU."""
    threshold = f"≤ {limit:.2f}x"
    raw_target = f"CPU per SQLite step ≤ {limit:g}x the memory store's step"
    net_target = "  the same, less SQLite's own commit CPU (the floor's)"
    memory = _find(results, "steps", "CPU per step", lambda c: c == "memory checkpoint_every_n_steps=1")
    sqlite = _find(results, "steps", "CPU per step", lambda c: c == "sqlite checkpoint_every_n_steps=1")
    if memory is None or sqlite is None or memory.value.median <= 0:
        return [_missing(raw_target, threshold), _missing(net_target, threshold)]
    base = memory.value.median
    raw = sqlite.value.median / base
    if sqlite.floor is None:
        return [_judge(raw_target, threshold, raw, raw <= limit,
                       f"{raw:.2f}x ({sqlite.value.median:,.0f} ÷ {base:,.1f} µs CPU, medians)"),
                _missing(net_target, threshold)]
    floor = (base + sqlite.floor.median) / base  # the memory step plus one commit's own CPU, nothing else
    verdicts = [_judge(raw_target, threshold, raw, raw <= limit,
                       f"{raw:.2f}x ({sqlite.value.median:,.0f} ÷ {base:,.1f} µs CPU, medians); "
                       f"the memory step plus one commit's CPU alone {floor:.2f}x")]
    net = statistics.median(v - f for v, f in zip(sqlite.value.samples, sqlite.floor.samples, strict=True))
    verdicts.append(_judge(net_target, threshold, net / base, net / base <= limit,
                           f"{net / base:.2f}x (({sqlite.value.median:,.0f} − {sqlite.floor.median:,.0f} commit) "
                           f"÷ {base:,.1f} µs CPU)"))
    return verdicts


# -- 3, 5 and 6: against the peers ------------------------------------------------------------------


def _versus(results: Sequence[Result], metric: str,
            case: Callable[[str], bool]) -> tuple[Result | None, dict[str, float]]:
    """A peer's result and its paired ratio to phaseledger's (theirs ÷ ours)."""
    r = _find(results, "compare", metric, case)
    return r, (r.extra.get("x_phaseledger") or {}) if r is not None else {}


def per_step_against(results: Sequence[Result], system: str, backend: str, limit: float, name: str) -> Verdict:
    """phaseledger's step against a peer's, same store, ratio taken repeat by repeat (theirs ÷ ours)."""
    if limit > 1:
        target, threshold = f"≥ {limit:g}x cheaper per step than {name} on {NAMES[backend]}", f"≥ {limit:.2f}x"
    else:
        target, threshold = f"faster per step than {name} on {NAMES[backend]}", "> 1.00x"
    r, ratio = _versus(results, "per step", lambda c: c == f"{system} on {backend}")
    if r is None or not ratio:
        return _missing(target, threshold)
    ok = ratio["median"] >= limit if limit > 1 else ratio["median"] > 1
    measured = f"{_range(ratio)} theirs ÷ ours ({r.value.median:,.0f} µs/step theirs)"
    if not ok and r.ratio is not None:  # theirs ÷ one commit: the most a step that commits could reach
        measured += f"; a step of one commit alone would be {r.ratio.median:.2f}x"
    return _judge(target, threshold, ratio["median"], ok, measured)


def recovery_against_langgraph(results: Sequence[Result], backend: str) -> Verdict:
    """Recovery after a kill to the first new step, against LangGraph's (theirs ÷ ours ≥ 1)."""
    target, threshold = f"resume to first new step ≤ LangGraph's on {NAMES[backend]}", "≥ 1.00x"
    r, ratio = _versus(results, "recover to first step",
                       lambda c: c.startswith(f"langgraph on {backend}, killed"))
    ours = _find(results, "compare", "recover to first step",
                 lambda c: c.startswith(f"phaseledger on {backend}, killed"))
    if r is None or ours is None or not ratio:
        return _missing(target, threshold)
    return _judge(target, threshold, ratio["median"], ratio["median"] >= 1,
                  f"{_range(ratio)} theirs ÷ ours ({ours.value.median:,.1f} ms vs {r.value.median:,.1f} ms)"
                  + _statements_alone(results, backend, "recover to first step", r))


def _statements_alone(results: Sequence[Result], backend: str, metric: str, theirs: Result) -> str:
    """The floor beside a figure against LangGraph: phaseledger's statements alone, and how they compare."""
    alone = _find(results, "compare", metric, lambda c: c.startswith(f"{STATEMENTS_ALONE} on {backend},"))
    if alone is None:
        return ""
    floor, peer = alone.value.median, theirs.value.median
    return f"; its statements alone {floor:,.1f} ms, {'under' if floor < peer else 'over'} LangGraph's whole"


def rebuild_against_langgraph(results: Sequence[Result], backend: str) -> Verdict:
    """A finished run's state rebuilt in a new process, against LangGraph's ``get_state``."""
    metric = "state of a long run"  # a one-phase run of many steps; else the comparison's run
    if _find(results, "compare", metric, lambda c: c.startswith(f"langgraph on {backend},")) is None:
        metric = "state rebuild"
    r, ratio = _versus(results, metric, lambda c: c.startswith(f"langgraph on {backend},"))
    ours = _find(results, "compare", metric, lambda c: c.startswith(f"phaseledger on {backend},"))
    steps = int(r.extra.get("steps", 0)) if r is not None else 0
    target = (f"state of a {steps:,}-step run ≤ LangGraph's get_state on {NAMES[backend]}" if steps
              else f"state of a long run ≤ LangGraph's get_state on {NAMES[backend]}")
    threshold = "≥ 1.00x"
    if r is None or ours is None or not ratio:
        return _missing(target, threshold)
    alone = _statements_alone(results, backend, metric, r) if metric == "state of a long run" else ""
    return _judge(target, threshold, ratio["median"], ratio["median"] >= 1,
                  f"{_range(ratio)} theirs ÷ ours ({ours.value.median:,.1f} ms vs {r.value.median:,.1f} ms){alone}")


# -- 4: bytes ------------------------------------------------------------------------------------


def bytes_per_step(results: Sequence[Result], backend: str, limit: float = 300.0) -> Verdict:
    """Bytes stored per trivial step (events, notification log and snapshots over steps).

    Judged on the storage benchmark's "all rows" case of trivial steps (every column of the
    run's rows and the notification id, divided by the steps); its "on disk" case (what the
    database adds: row headers, pages, indexes) is printed beside it.
    """
    target, threshold = f"bytes per trivial step on {NAMES[backend]}", f"≤ {limit:,.0f} B"

    def case(words: str) -> Result | None:
        return _find(results, "storage", "bytes per step",
                     lambda c: c.startswith(backend) and "trivial" in c and words in c)

    rows, disk = case("all rows"), case("on disk")
    if rows is None:
        return _missing(target, threshold)
    on_disk = f", {disk.value.median:,.0f} B on disk" if disk is not None else ""
    return _judge(target, threshold, rows.value.median, rows.value.median <= limit,
                  f"{rows.value.median:,.0f} B in the rows{on_disk}")


# -- 5 and 7: resume and replay --------------------------------------------------------------------


def resume_flat(results: Sequence[Result], backend: str, limit: float = FLAT_RESUME) -> Verdict:
    """Resume (with snapshots) at the longest history against the shortest, each against its floor."""
    target, threshold = f"resume flat in history length on {NAMES[backend]}", f"≤ {limit:.2f}x"
    found = [r for r in results if r.benchmark == "resume" and r.metric == "resume to first step"
             and r.case.startswith(f"{backend} ") and r.extra.get("snapshot_every") and "events" in r.extra]
    if len({r.extra["events"] for r in found}) < 2:
        return _missing(target, threshold)
    short = min(found, key=lambda r: r.extra["events"])
    long = max(found, key=lambda r: r.extra["events"])
    a, b = (long.ratio, short.ratio) if long.ratio and short.ratio else (long.value, short.value)
    ratio = a.median / b.median if b.median else float("inf")
    return _judge(target, threshold, ratio, ratio <= limit,
                  f"{ratio:.2f}x ({long.extra['events']:,} events {long.value.median:,.1f} ms, "
                  f"{short.extra['events']:,} events {short.value.median:,.1f} ms)")


def throughput(results: Sequence[Result], benchmark: str, metric: str, prefix: str, target: str,
               limit: float) -> Verdict:
    """A throughput in events/s against its least."""
    threshold = f"≥ {limit:,.0f}/s"
    r = _find(results, benchmark, metric, lambda c: c.startswith(prefix))
    if r is None:
        return _missing(target, threshold)
    return _judge(target, threshold, r.value.median, r.value.median >= limit, _range(r.value, " events/s", 0))


def projection_memory(results: Sequence[Result], backend: str, limit: float = FLAT_MEMORY) -> Verdict:
    """Peak memory of a projection rebuild over a log ten times longer."""
    target, threshold = f"projection rebuild memory flat on {NAMES[backend]}", f"≤ {limit:.2f}x"
    r = _find(results, "projections", "peak memory", lambda c: c.startswith(f"{backend} peak memory"))
    if r is None or r.ratio is None:
        return _missing(target, threshold)
    return _judge(target, threshold, r.ratio.median, r.ratio.median <= limit,
                  f"{r.ratio.median:.2f}x ({r.value.median:,.0f} KiB; {r.case.split(', ', 1)[-1]})")


# -- 8: scale ------------------------------------------------------------------------------------


def waiting_memory(results: Sequence[Result], backend: str, limit: float = HELD_BYTES_PER_RUN) -> Verdict:
    """Python memory a worker holds per waiting run, at the most waiting runs measured."""
    target, threshold = f"worker memory per waiting run ≈ 0 on {NAMES[backend]}", f"≤ {limit:g} B/run"
    held = [r for r in results if r.benchmark == "scale" and r.metric == "tracemalloc held"
            and r.case.startswith(f"{backend} worker") and r.extra.get("runs")]
    if not held:
        return _missing(target, threshold)
    r = max(held, key=lambda x: x.extra["runs"])
    per_run = float(r.extra["bytes_per_run"])
    rss = (r.extra.get("per_run") or {}).get("rss")
    measured = f"{per_run:,.1f} B/run held with {r.extra['runs']:,} waiting"
    if rss is not None:
        measured += f" (RSS {rss:,.0f} B/run)"
    return _judge(target, threshold, per_run, per_run <= limit, measured)


def follower_lag(results: Sequence[Result]) -> list[Verdict]:
    """Whether the report follower's lag stayed bounded, per worker-process case."""
    threshold = "bounded"
    rows = [r for r in results if r.benchmark == "scale" and r.metric == "lag (rows of the log)"]
    if not rows:
        return [_missing("report follower keeps up with the workers (PostgreSQL)", threshold)]
    verdicts = []
    for r in rows:
        target = f"report follower keeps up: {r.case.removesuffix(', report follower')}"
        samples = list(r.value.samples)
        if len(samples) < 4:
            verdicts.append(_missing(target, threshold))
            continue
        half = len(samples) // 2
        first, second = max(samples[:half]), max(samples[half:])
        slack = float(r.extra.get("log_rows_per_second", 0)) * float(r.extra.get("follow_interval", 0))
        seconds = _find(results, "scale", "lag (s)", lambda c, case=r.case: c == case)
        lag_s = f", lag p99 {seconds.extra.get('p99', seconds.value.max):.2f} s" if seconds is not None else ""
        verdicts.append(_judge(
            target, threshold, second - first, second <= first + slack,
            f"max lag {first:,.0f} → {second:,.0f} rows (1st → 2nd half; slack {slack:,.0f}){lag_s}; "
            f"applied {r.extra.get('applied_rows_per_second', 0):,.0f} of "
            f"{r.extra.get('log_rows_per_second', 0):,.0f} rows/s",
        ))
    return verdicts


# -- all of them ----------------------------------------------------------------------------------


def evaluate(results: Sequence[Result]) -> list[Verdict]:
    """Every target, in the order of the issue's list, judged on ``results``."""
    verdicts = [step_floor(results, "sqlite", 1.5), step_floor(results, "postgres", 1.4), *step_cpu(results)]
    for backend in BACKENDS:
        verdicts += [
            per_step_against(results, "eventsourcing", backend, 1.0, "naive eventsourcing"),
            per_step_against(results, "langgraph", backend, 4.0, "LangGraph (sync)"),
            per_step_against(results, "dbos", backend, 5.0, "DBOS"),
        ]
    verdicts += [bytes_per_step(results, b) for b in BACKENDS]
    verdicts += [recovery_against_langgraph(results, b) for b in BACKENDS]
    verdicts += [resume_flat(results, b) for b in BACKENDS]
    verdicts += [rebuild_against_langgraph(results, b) for b in BACKENDS]
    for backend in BACKENDS:
        verdicts.append(throughput(results, "replay", "full replay", f"{backend} ",
                                   f"full replay on {NAMES[backend]}", 100_000))
    for backend in BACKENDS:
        verdicts.append(throughput(results, "projections", "rebuild", f"{backend} rebuild",
                                   f"projection rebuild on {NAMES[backend]}", 50_000))
        verdicts.append(projection_memory(results, backend))
    verdicts += [waiting_memory(results, b) for b in BACKENDS]
    verdicts += follower_lag(results)
    return verdicts


def table(verdicts: Sequence[Verdict]) -> list[str]:
    """The printed table: one line per target."""
    width = max(len(v.target) for v in verdicts)
    lines = [f"  {'target':<{width}}  {'threshold':<12} {'status':<13} measured"]
    for v in verdicts:
        lines.append(f"  {v.target:<{width}}  {v.threshold:<12} {v.status:<13} {v.measured}".rstrip())
    met = sum(v.status == MET for v in verdicts)
    missed = sum(v.status == NOT_MET for v in verdicts)
    lines.append(f"  {met} met, {missed} not met, {len(verdicts) - met - missed} not measured")
    return lines
