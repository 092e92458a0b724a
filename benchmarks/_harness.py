"""What every benchmark shares: timing, statistics, ratios to floors, stores, machine facts, JSON.

The machines these run on are shared and noisy, so every figure is taken several times,
each time back to back with the floor it is compared with, and reported as the median,
minimum and maximum of the paired ratios as well as of the raw values.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_ENV_VARS = ("PHASELEDGER_BENCH_POSTGRES_URL", "PHASELEDGER_TEST_POSTGRES_URL")
RESULTS_DIR = Path(__file__).parent / "results"


def now() -> float:
    """A monotonic clock in seconds, with the best resolution available."""
    return time.perf_counter()


@dataclass(frozen=True)
class Stats:
    """Median, minimum and maximum of repeated samples of one figure."""

    median: float
    min: float
    max: float
    samples: tuple[float, ...]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        """Summarise samples (at least one)."""
        if not samples:
            raise ValueError("no samples")
        return cls(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def format(self, unit: str = "", digits: int = 1) -> str:
        """``median [min–max] unit``."""
        return f"{self.median:,.{digits}f} [{self.min:,.{digits}f}–{self.max:,.{digits}f}]{(' ' + unit) if unit else ''}"


@dataclass
class Result:
    """One figure of one benchmark case, with its floor and the paired ratios to it."""

    benchmark: str
    case: str
    metric: str
    unit: str
    value: Stats
    floor_name: str | None = None
    floor: Stats | None = None
    ratio: Stats | None = None
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def paired(
        cls, benchmark: str, case: str, metric: str, unit: str, values: Sequence[float],
        floor_name: str | None = None, floors: Sequence[float] | None = None, *,
        target: str | None = None, higher_is_better: bool = False, **extra: Any,
    ) -> Result:
        """A result whose ratio is taken repeat by repeat: value_i / floor_i.

        Both are measured back to back in each repeat, so a burst of load on the shared
        machine moves both. A ratio always reads "times the floor"; for throughputs
        (``higher_is_better``) the floor is a throughput too.
        """
        ratio = None
        if floors:
            ratio = Stats.of([v / f for v, f in zip(values, floors, strict=True) if f])
        return cls(
            benchmark, case, metric, unit, Stats.of(values), floor_name,
            Stats.of(floors) if floors else None, ratio, target, dict(extra, higher_is_better=higher_is_better),
        )

    def line(self) -> str:
        """One printable line."""
        text = f"  {self.case:<44} {self.metric:<22} {self.value.format(self.unit)}"
        if self.ratio is not None:
            text += f"   = {self.ratio.format('x', 2)} {self.floor_name}"
        versus = self.extra.get("x_phaseledger")
        if versus:
            text += f"   = {versus['median']:,.2f}x [{versus['min']:,.2f}–{versus['max']:,.2f}] phaseledger"
        if self.target:
            text += f"   (target {self.target})"
        return text


def collected(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` after a full garbage collection, so earlier work does not bill it."""
    gc.collect()
    return fn()


def bracketed(floor: Callable[[], float], subject: Callable[[], float]) -> tuple[float, float]:
    """``(subject, floor)``, the floor being the mean of one measurement just before the
    subject and one just after, so a burst of load during the pair moves both figures."""
    before = collected(floor)
    value = collected(subject)
    after = collected(floor)
    return value, (before + after) / 2


# -- stores -------------------------------------------------------------------------------------


def postgres_url() -> str:
    """The PostgreSQL database benchmarks use (environment, else the local test server)."""
    for var in POSTGRES_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return DEFAULT_POSTGRES_URL


def postgres_conninfo(url: str) -> str:
    """The psycopg connection string of a store URL."""
    from phaseledger.store.eventstore import StoreURL

    return StoreURL.parse(url).postgres_conninfo or ""


def postgres_unreachable(url: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(postgres_conninfo(url), connect_timeout=3):
            return None
    except Exception as exc:  # any failure means "not reachable" here
        return str(exc).strip() or type(exc).__name__


@dataclass
class Backends:
    """Where a benchmark may put its data: a scratch directory and, maybe, PostgreSQL."""

    tmpdir: Path
    postgres: str | None

    @property
    def durable(self) -> list[str]:
        """The durable backends available: ``sqlite`` and, when reachable, ``postgres``."""
        return ["sqlite", "postgres"] if self.postgres else ["sqlite"]

    def sqlite_path(self, label: str = "bench") -> Path:
        """A fresh SQLite file path in the scratch directory."""
        return self.tmpdir / f"{label}-{uuid.uuid4().hex[:10]}.db"

    @contextlib.contextmanager
    def store_url(self, backend: str, label: str = "bench") -> Iterator[str]:
        """A fresh, empty store URL on ``backend`` (memory, sqlite or postgres), removed after."""
        if backend == "memory":
            yield "memory://"
        elif backend == "sqlite":
            path = self.sqlite_path(label)
            try:
                yield f"sqlite:///{path}"
            finally:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        elif backend == "postgres":
            with self.postgres_schema(label) as (url, _schema):
                yield url
        else:
            raise ValueError(f"unknown backend {backend!r}")

    @contextlib.contextmanager
    def postgres_schema(self, label: str = "bench") -> Iterator[tuple[str, str]]:
        """A new PostgreSQL schema of its own: ``(store_url, schema)``, dropped after."""
        import psycopg
        from psycopg import sql

        if not self.postgres:
            raise RuntimeError("PostgreSQL is not available to these benchmarks")
        schema = f"plb_{label}_{uuid.uuid4().hex[:8]}"
        sep = "&" if "?" in self.postgres else "?"
        conninfo = postgres_conninfo(self.postgres)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"{self.postgres}{sep}schema={schema}", schema
        finally:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory on the same file system as ordinary temp files."""
    with tempfile.TemporaryDirectory(prefix="phaseledger-bench-") as path:
        yield Path(path)


# -- the machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _postgres_facts(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    import psycopg

    with psycopg.connect(postgres_conninfo(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        fsync = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    return {"postgresql": version, "postgresql_fsync": fsync, "postgresql_synchronous_commit": sync_commit}


def _git_commit() -> str | None:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            timeout=5, check=True,
        )
        return out.stdout.strip() or None
    return None


def machine_facts(postgres: str | None) -> dict[str, Any]:
    """What the figures depend on: cores, CPU, load, Python, SQLite, PostgreSQL, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("phaseledger", "eventsourcing", "pydantic", "pydantic-ai-slim", "psycopg", "orjson",
                    "langgraph", "langgraph-checkpoint-sqlite", "langgraph-checkpoint-postgres", "dbos"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "optimized": not __debug__,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(terse=True),
        "packages": versions,
        "commit": _git_commit(),
    }
    try:
        facts.update(_postgres_facts(postgres))
    except Exception as exc:  # facts are best-effort; the benchmark itself reports failures
        facts["postgresql_error"] = str(exc)
    return facts


# -- reporting --------------------------------------------------------------------------------


def write_json(results: Sequence[Result], facts: dict[str, Any], settings: dict[str, Any],
               out_dir: Path = RESULTS_DIR, targets: Sequence[dict[str, Any]] = ()) -> Path:
    """Write the results (and the targets judged on them) as JSON (``<timestamp>.json`` and
    ``latest.json``); return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "generated_at": stamp,
        "machine": facts,
        "settings": settings,
        "results": [asdict(r) for r in results],
        "targets": list(targets),
    }
    text = json.dumps(document, indent=2, default=str)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def print_header(title: str) -> None:
    """A section title on stdout."""
    print(f"\n== {title}", flush=True)


def print_result(result: Result) -> None:
    """A result line on stdout."""
    print(result.line(), flush=True)
