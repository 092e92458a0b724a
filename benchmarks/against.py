"""``python -m benchmarks.against REV``: this tree against an earlier revision, in one run.

    python -m benchmarks.against a18f0d3 --only steps resume --rounds 3

A redesign must not make the hot paths slower. This checks out ``REV`` into a temporary
git worktree and runs the chosen benchmarks on it and on this tree, alternating (old,
new, old, new, ...) so that a burst of load on the shared machine falls on both. Each
figure is then compared as ``new / old`` of its ratio to the floor measured in the same
benchmark run (the raw value where a figure has no floor), median over the rounds; for
throughputs the comparison is inverted, so below 1.00 always means faster now.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.suite import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.against", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", help="the git revision to compare with (a commit, tag or branch)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=["steps", "resume"],
                        help="the benchmarks to run (default: steps resume)")
    parser.add_argument("--rounds", type=int, default=3, help="old/new pairs to run (default 3)")
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL cases")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs; figures mean little)")
    return parser.parse_args(argv)


def _run_suite(tree: Path, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Run ``tree``'s own ``python -m benchmarks`` (its workloads, on its phaseledger); return its results."""
    command = [sys.executable, "-m", "benchmarks", "--only", *args.only, "--out", str(out)]
    command += ["--no-postgres"] * args.no_postgres + ["--quick"] * args.quick
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return list(json.loads((out / "latest.json").read_text())["results"])


def _figure(result: dict[str, Any]) -> tuple[float, bool]:
    """The figure compared (the ratio to its floor, else the value) and whether higher is better."""
    higher = bool(result.get("extra", {}).get("higher_is_better")) or result["unit"].endswith("/s")
    stats = result["ratio"] or result["value"]
    return float(stats["median"]), higher


def compare(old_runs: list[list[dict[str, Any]]], new_runs: list[list[dict[str, Any]]]) -> list[str]:
    """One line per figure: its name, old and new medians, and ``new / old`` (< 1: faster now)."""
    def key(result: dict[str, Any]) -> tuple[str, str, str]:
        return result["benchmark"], result["case"], result["metric"]

    lines = []
    for result in new_runs[0]:
        pairs = []
        for old, new in zip(old_runs, new_runs, strict=True):
            before = next((r for r in old if key(r) == key(result)), None)
            after = next((r for r in new if key(r) == key(result)), None)
            if before is None or after is None:
                continue
            (was, higher), (now, _) = _figure(before), _figure(after)
            if was > 0 and now > 0:
                pairs.append((was, now, was / now if higher else now / was))
        if not pairs:
            continue
        was = statistics.median(p[0] for p in pairs)
        now = statistics.median(p[1] for p in pairs)
        change = statistics.median(p[2] for p in pairs)
        what = "× floor" if result["ratio"] else result["unit"]
        lines.append(f"{'/'.join(key(result)):<70} old {was:>10.3f}  new {now:>10.3f} {what:<8} "
                     f"new/old {change:5.2f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phaseledger-against-") as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(old_tree),
                        args.revision], check=True)
        try:
            old_runs, new_runs = [], []
            for round_ in range(args.rounds):
                print(f"round {round_ + 1}/{args.rounds}: {args.revision} ...", flush=True)
                old_runs.append(_run_suite(old_tree, args, Path(tmp) / f"old-{round_}"))
                print(f"round {round_ + 1}/{args.rounds}: this tree ...", flush=True)
                new_runs.append(_run_suite(ROOT, args, Path(tmp) / f"new-{round_}"))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_tree)], check=False)
    print(f"\n{args.rounds} round(s), medians; new/old below 1.00 means this tree is faster")
    for line in compare(old_runs, new_runs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
