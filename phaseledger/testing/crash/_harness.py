"""The parent side: :class:`CrashHarness` starts children (forked from a server or as fresh
interpreters), kills them at kill points, checks the log after every kill and compares
each crashed run with an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.status import FINISHED, RETRYING, RUNNING, SLEEPING
from phaseledger.testing.crash._checks import check_log, committed_step_keys, comparable_without, event_fingerprint
from phaseledger.testing.crash._killpoints import KILL_ENV, KILL_KINDS, LEDGER_ENV, CrashHarnessError, KillPoint
from phaseledger.testing.crash._reports import ChildOutcome, CrashReport, RunReport

_CHILD_BOOT = "from phaseledger.testing.crash import child_main; child_main()"
_SERVER_BOOT = "from phaseledger.testing.crash import fork_server_main; fork_server_main()"


class CrashHarness:
    """Drive runs of one workflow through chains of killed and resumed child processes.

    ``target`` is ``package.module:attr`` or ``file.py:attr`` naming a Workflow (or a list of
    versions, or a factory); ``store`` a SQLite or PostgreSQL store URL. ``input`` is the run
    input (JSON). ``checkpoint_every_n_steps``, ``snapshot_every`` and ``max_inline_wait`` are
    passed to the child's Engine. ``env`` and ``cwd`` are given to every child (plus the
    current environment); the log is read with the encryption settings of that environment
    (``PHASELEDGER_CIPHER_KEY``, ``PHASELEDGER_COMPRESS``). ``workdir`` keeps the ledgers (a
    temporary directory by default). ``fork`` (default: on POSIX) forks children from a
    server process that imported the target once; ``fork=False`` starts every child as a
    fresh ``python`` interpreter.
    """

    def __init__(
        self,
        target: str,
        store: str,
        *,
        input: Mapping[str, Any] | None = None,
        checkpoint_every_n_steps: int | None = None,
        snapshot_every: int | None = 100,
        max_inline_wait: float = 30.0,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
        timeout: float = 120.0,
        max_processes: int = 50,
        workdir: str | os.PathLike[str] | None = None,
        ignore_events: Iterable[str] = ("StepAttemptFailed",),
        fork: bool | None = None,
    ) -> None:
        if store.startswith("memory:"):
            raise CrashHarnessError("the crash harness needs a store that outlives a process: a SQLite file or PostgreSQL")
        if not hasattr(signal, "SIGKILL"):
            raise CrashHarnessError("the crash harness needs SIGKILL (a POSIX system)")
        self.target = target
        self.store_url = store
        self.input = dict(input or {})
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.snapshot_every = snapshot_every
        self.max_inline_wait = max_inline_wait
        self.env = dict(env or {})
        self.cwd = cwd
        self.python = python
        self.timeout = timeout
        self.max_processes = max_processes
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="phaseledger-crash-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ignore_events = frozenset(ignore_events)
        self._store: Any = None
        self._store_lock = threading.Lock()
        self.fork = hasattr(os, "fork") if fork is None else fork
        """Fork children from a server process that imported everything once (fast), or
        start each child as a fresh interpreter (``fork=False``)."""
        self._local = threading.local()
        self._servers: list[tuple[subprocess.Popen[str], Any]] = []

    # -- plumbing --------------------------------------------------------------------------

    def _events(self, run_id: str) -> list[WorkflowRun.Event]:
        from phaseledger.store.cipher import CIPHER_KEY_ENV_VAR, COMPRESS_ENV_VAR, parse_compress
        from phaseledger.store.eventstore import Store

        with self._store_lock:
            if self._store is None:
                # Read with the children's encryption settings (``env`` may set them).
                environ = {**os.environ, **self.env}
                self._store = Store(self.store_url, snapshot_every=self.snapshot_every,
                                    cipher_key=environ.get(CIPHER_KEY_ENV_VAR, ""),
                                    compress=parse_compress(environ.get(COMPRESS_ENV_VAR)))
            if not self._store.exists(run_id):
                return []
            return self._store.events(run_id)

    def close(self) -> None:
        """Stop the fork servers, close the store connection, remove the temporary directory."""
        for server, log in self._servers:
            if server.stdin is not None:
                server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()
            log.close()
        self._servers.clear()
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ledger_path(self, run_id: str) -> Path:
        """The file the children of ``run_id`` write their step executions to."""
        return self.workdir / f"{run_id}.ledger"

    def run_child(self, run_id: str, kill: KillPoint | None = None) -> ChildOutcome:
        """Start one child that starts or resumes ``run_id``; wait until it exits or is killed."""
        argv = [
            "--target", self.target, "--store", self.store_url, "--run-id", run_id, "--input", json.dumps(self.input),
            "--snapshot-every", str(self.snapshot_every or 0), "--max-inline-wait", str(self.max_inline_wait),
        ]
        if self.checkpoint_every_n_steps:
            argv += ["--checkpoint-every", str(self.checkpoint_every_n_steps)]
        ledger = str(self.ledger_path(run_id))
        returncode, stdout, stderr = (self._forked if self.fork else self._spawned)(argv, kill, ledger, run_id)
        killed = returncode == -signal.SIGKILL
        status = suspended = None
        counts: dict[str, int] = {}
        if returncode == 0:
            last = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
            outcome = json.loads(last)
            status, suspended, counts = outcome.get("status"), outcome.get("suspended"), outcome.get("counts", {})
        elif not killed:
            raise CrashHarnessError(
                f"the child process for run {run_id!r} (kill point {kill}) exited with {returncode}:\n{stderr[-4000:]}"
            )
        return ChildOutcome(kill, killed, returncode, status, suspended, stderr, counts)

    def _spawned(self, argv: list[str], kill: KillPoint | None, ledger: str, run_id: str) -> tuple[int, str, str]:
        env = {**os.environ, **self.env, LEDGER_ENV: ledger}
        env.pop(KILL_ENV, None)
        if kill is not None:
            env[KILL_ENV] = str(kill)
        try:
            proc = subprocess.run([self.python, "-c", _CHILD_BOOT, *argv], env=env, cwd=self.cwd,
                                  capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CrashHarnessError(f"the child process for run {run_id!r} ran longer than {self.timeout}s") from exc
        return proc.returncode, proc.stdout, proc.stderr

    def _server(self) -> subprocess.Popen[str]:
        server: subprocess.Popen[str] | None = getattr(self._local, "server", None)
        if server is None or server.poll() is not None:
            log = open(self.workdir / f"fork-server-{threading.get_ident()}.log", "w")  # noqa: SIM115
            server = subprocess.Popen(
                [self.python, "-c", _SERVER_BOOT, self.target], env={**os.environ, **self.env}, cwd=self.cwd,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )
            self._local.server = server
            self._servers.append((server, log))
        return server

    def _forked(self, argv: list[str], kill: KillPoint | None, ledger: str, run_id: str) -> tuple[int, str, str]:
        out, err = self.workdir / f"{run_id}.stdout", self.workdir / f"{run_id}.stderr"
        request = {"argv": argv, "kill": str(kill) if kill else None, "ledger": ledger,
                   "stdout": str(out), "stderr": str(err)}
        server = self._server()
        assert server.stdin is not None and server.stdout is not None
        try:
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
        except BrokenPipeError:
            pass  # reported below with the server's log
        ready, _, _ = select.select([server.stdout], [], [], self.timeout)
        reply = server.stdout.readline() if ready else ""
        if not reply:
            server.kill()
            log = (self.workdir / f"fork-server-{threading.get_ident()}.log").read_text()[-4000:]
            raise CrashHarnessError(
                f"the fork server gave no answer for run {run_id!r} within {self.timeout}s "
                f"(is {self.target!r} importable from {self.cwd or os.getcwd()}?):\n{log}"
            )
        return json.loads(reply)["returncode"], out.read_text(), err.read_text()

    def _ledger_lines(self, run_id: str, offset: int) -> tuple[list[list[str]], int]:
        path = self.ledger_path(run_id)
        if not path.exists():
            return [], offset
        data = path.read_bytes()
        lines = [line.split("\t") for line in data[offset:].decode().splitlines()]
        return lines, len(data)

    # -- driving runs ----------------------------------------------------------------------

    def run(self, run_id: str, kills: Sequence[KillPoint] = ()) -> RunReport:
        """Drive ``run_id`` to its end: process i gets ``kills[i]``, later ones run unkilled.

        Checks the guarantees after every kill and at the end; problems go to the report.
        """
        report = RunReport(run_id)
        committed: list[WorkflowRun.Event] = []
        committed_keys: set[str] = set()
        offset = 0
        for index in range(self.max_processes):
            kill = kills[index] if index < len(kills) else None
            outcome = self.run_child(run_id, kill)
            report.processes += 1
            lines, offset = self._ledger_lines(run_id, offset)
            started = [key for _pid, what, key, _name in lines if what == "start"]
            report.executions.update(started)
            for key in sorted(set(started) & committed_keys):
                report.problems.append(f"step {key} ran again in process {index + 1} although its result was committed")
            events = self._events(run_id)
            if [event_fingerprint(e) for e in events[: len(committed)]] != [event_fingerprint(e) for e in committed]:
                report.problems.append(f"events committed before process {index + 1} were lost or changed")
            committed = events
            committed_keys = committed_step_keys(events, run_id)
            if outcome.killed:
                assert kill is not None
                report.kills.append(kill)
                finished = {key for _pid, what, key, _name in lines if what == "end"}
                report.lost_per_kill.append(len(finished - committed_keys))
                self._check_batch_bound(report, kill)
                continue
            report.counts.update(outcome.counts)
            if outcome.status in FINISHED:
                break
            if outcome.status in (SLEEPING, RETRYING) and outcome.suspended and outcome.suspended.get("until"):
                until = datetime.fromisoformat(str(outcome.suspended["until"]))
                time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.01)
                continue
            if outcome.status == RUNNING:
                continue
            raise CrashHarnessError(
                f"run {run_id!r} is {outcome.status} ({outcome.suspended}): the crash harness drives runs "
                "that finish without signals"
            )
        else:
            report.problems.append(f"the run did not finish within {self.max_processes} processes")
        report.reexecuted = sorted(key for key, n in report.executions.items() if n > 1)
        report.events = committed
        report.problems.extend(check_log(committed, run_id))
        self._final_view(report)
        return report

    def _check_batch_bound(self, report: RunReport, kill: KillPoint) -> None:
        batch = self.checkpoint_every_n_steps or 1
        bound = batch - 1 + (1 if kill.where == "in_step" else 0)
        if report.lost_per_kill[-1] > bound:
            report.problems.append(
                f"kill {kill} lost {report.lost_per_kill[-1]} finished step result(s); "
                f"checkpoint_every_n_steps={batch} allows at most {bound}"
            )

    def _final_view(self, report: RunReport) -> None:
        run = None
        for event in report.events:
            run = event.mutate(run)
        if run is None:
            report.problems.append("the run has no events")
            return
        report.status = run.status
        report.state = run.phase_state
        report.output = run.output

    def compare(self, baseline: RunReport, crashed: RunReport) -> None:
        """Add to ``crashed.problems`` every difference from the uninterrupted run."""
        for what in ("status", "state", "output"):
            if getattr(crashed, what) != getattr(baseline, what):
                crashed.problems.append(
                    f"final {what} {getattr(crashed, what)!r} differs from the uninterrupted run's "
                    f"{getattr(baseline, what)!r}"
                )
        got, expected = comparable_without(crashed.events, self.ignore_events), comparable_without(baseline.events, self.ignore_events)
        if got != expected:
            pairs = enumerate(zip(got, expected, strict=False))
            first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
            crashed.problems.append(
                f"the log differs from the uninterrupted run's at entry {first + 1}: "
                f"{got[first] if first < len(got) else 'nothing'} != "
                f"{expected[first] if first < len(expected) else 'nothing'}"
            )

    def baseline(self, run_id: str = "baseline") -> RunReport:
        """An uninterrupted run (one child, no kill), checked like the others."""
        return self.run(run_id)

    def explore(
        self,
        *,
        kill_points: int = 50,
        seed: int = 0,
        kills_per_run: int = 3,
        parallel: int = 2,
        run_prefix: str = "crash",
        exhaustive_first: bool = True,
    ) -> CrashReport:
        """Run until at least ``kill_points`` kills fired, comparing each run with a baseline.

        With ``exhaustive_first``, the first kill of successive runs walks every kill point
        the uninterrupted run passes (every step start, every step end, every append);
        later kills in a chain, and runs beyond that walk, are drawn from ``seed``.
        ``parallel`` runs are driven at a time (on different run ids).
        """
        baseline = self.baseline(f"{run_prefix}-baseline")
        report = CrashReport(baseline)
        rng = random.Random(seed)
        totals = {where: baseline.counts[where] for where in KILL_KINDS}
        firsts = [KillPoint(w, n) for w in KILL_KINDS for n in range(1, totals[w] + 1)] if exhaustive_first else []

        def schedule(i: int) -> list[KillPoint]:
            first = firsts[i] if i < len(firsts) else _random_point(rng, totals)
            return [first] + [_random_point(rng, totals, shrink=k + 1) for k in range(kills_per_run - 1)]

        index = 0
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            while report.kill_points < kill_points or index < len(firsts):
                batch = [(f"{run_prefix}-{index + j}", schedule(index + j)) for j in range(max(1, parallel))]
                index += len(batch)
                for run_report in pool.map(lambda item: self.run(item[0], item[1]), batch):
                    self.compare(baseline, run_report)
                    report.runs.append(run_report)
                if index > 20 * max(kill_points, 1) + len(firsts):
                    raise CrashHarnessError("kill points keep missing: the workflow may be too short to crash here")
        return report


def _random_point(rng: random.Random, totals: Mapping[str, int], shrink: int = 0) -> KillPoint:
    kinds = [k for k in KILL_KINDS if totals[k] > 0]
    where = rng.choice(kinds)
    top = max(1, totals[where] - shrink)
    return KillPoint(where, rng.randint(1, top))
