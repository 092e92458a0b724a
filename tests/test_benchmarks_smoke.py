"""Every benchmark runs at tiny sizes, so the suite cannot rot. No timing is asserted here:
figures on a shared machine mean nothing at these sizes; ``make bench`` prints the real ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks._harness import Backends, Result, postgres_unreachable, postgres_url
from benchmarks.suite import BENCHMARKS


def _backends(tmp_path: Path) -> Backends:
    url = postgres_url()
    return Backends(tmp_path, None if postgres_unreachable(url) else url)


def _check(results: list[Result], name: str) -> None:
    assert results, f"benchmark {name!r} produced no figure"
    for result in results:
        assert result.benchmark
        for stats in (result.value, result.floor, result.ratio):
            if stats is not None:
                assert all(math.isfinite(x) and x >= 0 for x in stats.samples), result
                assert stats.min <= stats.median <= stats.max, result
        if result.floor is not None:
            assert result.ratio is not None and len(result.ratio.samples) == len(result.value.samples)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_at_tiny_sizes(name: str, tmp_path: Path) -> None:
    benchmark = BENCHMARKS[name]
    why = benchmark.unavailable()
    if why:
        pytest.skip(why)
    _check(benchmark.run(_backends(tmp_path), quick=True), name)


def test_main_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert main(["--quick", "--only", "steps", "--no-postgres", "--out", str(out)]) == 0
    document = json.loads((out / "latest.json").read_text())
    assert document["machine"]["cores"] >= 1
    cases = {r["case"] for r in document["results"]}
    assert "sqlite checkpoint_every_n_steps=1" in cases
    sqlite = next(r for r in document["results"] if r["case"] == "sqlite checkpoint_every_n_steps=1")
    assert sqlite["floor_name"] == "sqlite commit" and sqlite["ratio"]["median"] > 0
    targets = {t["target"]: t for t in document["targets"]}
    assert targets["journaled step on SQLite ≤ 1.5x the commit floor"]["status"] in ("met", "NOT met")
