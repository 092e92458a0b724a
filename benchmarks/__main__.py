"""``python -m benchmarks``: run the suite, print ratios to the floors and the targets, write JSON.

    python -m benchmarks                      # everything, full sizes
    python -m benchmarks --only steps resume  # some benchmarks
    python -m benchmarks --quick              # tiny sizes: checks they run, figures mean little
    python -m benchmarks --no-postgres        # SQLite (and memory) only

PostgreSQL comes from ``$PHASELEDGER_BENCH_POSTGRES_URL`` (else
``$PHASELEDGER_TEST_POSTGRES_URL``, else the local server); when it does not answer, its
cases are skipped with a note.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks._harness import (
    RESULTS_DIR,
    Backends,
    Result,
    machine_facts,
    postgres_unreachable,
    postgres_url,
    print_header,
    print_result,
    scratch_dir,
    write_json,
)
from benchmarks.suite import BENCHMARKS, Benchmark
from benchmarks.targets import TITLE, evaluate, table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default: each benchmark's own)")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL cases")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to write the JSON results")
    parser.add_argument("--no-json", action="store_true", help="print only")
    return parser.parse_args(argv)


def run(names: Sequence[str], backends: Backends, *, quick: bool = False,
        repeats: int | None = None) -> list[Result]:
    """Run the named benchmarks and print each result as it comes."""
    results: list[Result] = []
    for name in names:
        benchmark: Benchmark = BENCHMARKS[name]
        print_header(f"{name}: {benchmark.title}")
        skipped = benchmark.unavailable()
        if skipped:
            print(f"  skipped: {skipped}", flush=True)
            continue
        for result in benchmark.run(backends, quick=quick, repeats=repeats):
            print_result(result)
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pg = None if args.no_postgres else postgres_url()
    if pg:
        why = postgres_unreachable(pg)
        if why:
            print(f"PostgreSQL cases skipped: {why}", file=sys.stderr)
            pg = None
    facts = machine_facts(pg)
    print(f"{facts['cores']} cores, {facts['cpu']}, Python {facts['python']}, SQLite {facts['sqlite']}, "
          f"PostgreSQL {facts.get('postgresql', 'not used')}, load {facts['load_average']}")
    names = args.only or list(BENCHMARKS)
    with scratch_dir() as tmp:
        results = run(names, Backends(tmp, pg), quick=args.quick, repeats=args.repeats)
    verdicts = evaluate(results)
    print_header(TITLE + (" (quick sizes: figures mean little)" if args.quick else ""))
    print("\n".join(table(verdicts)), flush=True)
    if not args.no_json:
        path = write_json(results, facts, {"quick": args.quick, "repeats": args.repeats, "only": names}, args.out,
                          [v.as_dict() for v in verdicts])
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
