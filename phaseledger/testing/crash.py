"""A crash harness: kill real processes running your workflow and prove the run still ends right.

:class:`CrashHarness` starts a workflow in a child ``python`` process (it imports the
workflow from a module and opens the store by URL), kills that process with ``SIGKILL``
at a chosen point, starts a *new* process that resumes the run, kills that one too if
told, and so on until a process finishes the run. Kill points are deterministic and
cheap; each names what it counts in the process it applies to:

``before_step:n``
    just before the n-th live step body of that process starts (between steps);
``in_step:n``
    after the n-th live step body returned, before its result is recorded (a step in
    flight: its side effect happened, the log does not know it);
``after_append:n``
    right after the n-th append to the event store committed.

Every live step execution is written to a ledger file outside the event store, with the
step's idempotency key. After each kill the harness reads what the store had committed,
and at the end it checks that:

* no step whose result was committed before a kill ran again afterwards;
* every event committed before a kill is still there, unchanged, at the same version;
  versions are gapless and no step, attempt, checkpoint or timer is recorded twice;
* the run finished with the same status, state, output and log (timestamps, clock and
  random values, resume markers and failed attempts aside) as an uninterrupted run;
* with ``checkpoint_every_n_steps=N``, a kill lost at most N-1 recorded step results
  (one more when the kill hit a step in flight).

Use it from a test (POSIX only, needs a SQLite file or PostgreSQL store)::

    harness = CrashHarness("myapp.flows:order_workflow", "sqlite:////tmp/crash.db",
                           input={"order": 42})
    report = harness.explore(kill_points=50, seed=1)
    report.raise_for_problems()
    assert report.kill_points >= 50

The module named by the target must be importable in the child (give ``cwd`` or
``env={"PYTHONPATH": ...}``), or be a path to a ``.py`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from phaseledger.domain.errors import PhaseledgerError, UnknownWorkflow
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.workflow import Workflow

KILL_ENV = "PHASELEDGER_CRASH_AT"
"""Environment variable telling a child process where to kill itself (``where:n``)."""
LEDGER_ENV = "PHASELEDGER_CRASH_LEDGER"
"""Environment variable naming the ledger file a child writes step executions to."""
KILL_KINDS = ("before_step", "in_step", "after_append")
_STEP_LIKE = ("step", "model", "tool")
_CHILD_BOOT = "from phaseledger.testing.crash import child_main; child_main()"
_SERVER_BOOT = "from phaseledger.testing.crash import fork_server_main; fork_server_main()"


class CrashHarnessError(PhaseledgerError):
    """The harness cannot do what was asked (bad target, child failure, run that cannot finish)."""


class CrashCheckFailed(AssertionError):
    """A crashed-and-resumed run broke a guarantee; the message lists every problem found."""


@dataclass(frozen=True)
class KillPoint:
    """Where a child process kills itself: the ``n``-th occurrence of ``where`` in that process."""

    where: str
    n: int

    def __post_init__(self) -> None:
        if self.where not in KILL_KINDS:
            raise CrashHarnessError(f"unknown kill point {self.where!r}: use one of {', '.join(KILL_KINDS)}")
        if self.n < 1:
            raise CrashHarnessError(f"kill point {self.where}:{self.n}: n counts from 1")

    def __str__(self) -> str:
        return f"{self.where}:{self.n}"

    @classmethod
    def parse(cls, text: str) -> KillPoint:
        """Parse ``where:n`` (for example ``in_step:3``)."""
        where, _, n = text.partition(":")
        try:
            return cls(where, int(n))
        except ValueError:
            raise CrashHarnessError(f"cannot parse kill point {text!r}: expected where:n, e.g. in_step:3") from None


# -- the child side ----------------------------------------------------------------------


class _Probe:
    """Installed in a child process: counts kill-point occurrences, writes the ledger, kills."""

    def __init__(self, kill: KillPoint | None, ledger: str | None) -> None:
        self.kill = kill
        self.counts: Counter[str] = Counter()
        self.ledger_fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if ledger else None

    def hit(self, where: str) -> None:
        self.counts[where] += 1
        if self.kill is not None and self.kill.where == where and self.counts[where] == self.kill.n:
            os.kill(os.getpid(), signal.SIGKILL)

    def note(self, what: str, key: str, name: str) -> None:
        if self.ledger_fd is not None:  # one write() per line: whole lines survive a SIGKILL
            os.write(self.ledger_fd, f"{os.getpid()}\t{what}\t{key}\t{name}\n".encode())

    def install(self) -> None:
        from phaseledger.engine.context import Context, idempotency_key
        from phaseledger.engine.store import Store

        probe = self
        save_events = Store.save_events
        journaled = Context._journaled

        def probed_save_events(store: Store, run_id: str, events: Sequence[Any]) -> int:
            result = save_events(store, run_id, events)
            if events:
                probe.hit("after_append")
            return result

        async def probed_journaled(ctx: Context[Any], key: str, kind: str, name: str,
                                   call: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
            async def probed_call() -> Any:
                step_key = idempotency_key()
                probe.hit("before_step")
                probe.note("start", step_key, name)
                result = call()
                if inspect.isawaitable(result):
                    result = await result
                probe.note("end", step_key, name)
                probe.hit("in_step")
                return result

            return await journaled(ctx, key, kind, name, probed_call, *args, **kwargs)

        Store.save_events = probed_save_events  # type: ignore[method-assign]
        Context._journaled = probed_journaled  # type: ignore[method-assign]


def load_workflows(target: str) -> list[Workflow[Any]]:
    """The workflows named by ``module:attr`` or ``path/to/file.py:attr`` (see
    :func:`phaseledger.engine.loading.load_workflows`); all versions are registered."""
    from phaseledger.engine.loading import load_workflows as load

    module_path = target.rpartition(":")[0]
    if module_path.endswith(".py"):
        sys.path.insert(0, str(Path(module_path).resolve().parent))  # so the file can import its neighbours
    try:
        return load(target)
    except (UnknownWorkflow, ImportError) as exc:
        raise CrashHarnessError(f"cannot load {target!r}: {exc}") from exc


async def _child_drive(args: argparse.Namespace) -> dict[str, Any]:
    from phaseledger.engine.engine import Engine

    workflows = load_workflows(args.target)
    options: dict[str, Any] = {"snapshot_every": args.snapshot_every or None, "max_inline_wait": args.max_inline_wait}
    if args.checkpoint_every:
        options["checkpoint_every_n_steps"] = args.checkpoint_every
    engine = Engine(args.store, workflows=workflows, **options)
    try:
        if not engine.store.exists(args.run_id):
            latest = max(workflows, key=lambda w: w.version)
            view = await engine.run(latest, json.loads(args.input or "{}"), run_id=args.run_id)
        else:
            view = engine.get(args.run_id)
            if not view.finished:
                view = await engine.resume(args.run_id)
        return {"status": view.status, "suspended": view.suspended, "version": view.version}
    finally:
        engine.close()


def _child_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phaseledger-crash-child")
    parser.add_argument("--target", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--input")
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--snapshot-every", type=int, default=100)
    parser.add_argument("--max-inline-wait", type=float, default=30.0)
    return parser


def _child_run(argv: Sequence[str], kill: str | None, ledger: str | None) -> dict[str, Any]:
    args = _child_parser().parse_args(argv)
    probe = _Probe(KillPoint.parse(kill) if kill else None, ledger)
    probe.install()
    outcome = asyncio.run(_child_drive(args))
    outcome["counts"] = {where: probe.counts[where] for where in KILL_KINDS}
    return outcome


def child_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of a child started as a fresh interpreter (``CrashHarness(fork=False)``)."""
    outcome = _child_run(sys.argv[1:] if argv is None else argv, os.environ.get(KILL_ENV), os.environ.get(LEDGER_ENV))
    sys.stdout.write(json.dumps(outcome, default=str) + "\n")
    sys.stdout.flush()


def fork_server_main() -> None:
    """Entry point of the fork server (``CrashHarness(fork=True)``, the default on POSIX).

    A ``python`` process that imports phaseledger and the target once, then forks one
    child per request: requests and replies are JSON lines on stdin and stdout. Each child
    is a new process, killed by SIGKILL for real; forking only saves the interpreter start
    and the imports, which dominate the cost of short runs. The server opens no store
    connection and starts no thread, so its children start clean.
    """
    load_workflows(sys.argv[1])
    import phaseledger.engine.engine  # noqa: F401  (imported once, before any fork)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _forked_child(request)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        sys.stdout.flush()


def _forked_child(request: dict[str, Any]) -> None:
    code = 1
    try:
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        outcome = _child_run(request["argv"], request.get("kill"), request.get("ledger"))
        sys.stdout.write(json.dumps(outcome, default=str) + "\n")
        sys.stdout.flush()
        code = 0
    except BaseException:  # noqa: BLE001 - report anything in the child's stderr file; never return to the server loop
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


# -- the parent side ---------------------------------------------------------------------


@dataclass
class ChildOutcome:
    """What one child process did."""

    kill: KillPoint | None
    killed: bool
    """True when the child died by SIGKILL at its kill point."""
    returncode: int
    status: str | None
    """The run's status the child reported when it exited normally."""
    suspended: dict[str, Any] | None
    stderr: str
    counts: dict[str, int] = field(default_factory=dict)
    """Kill-point occurrences the child passed (when it exited normally)."""


@dataclass
class RunReport:
    """One run driven to its end by a chain of processes, and what the harness saw."""

    run_id: str
    kills: list[KillPoint] = field(default_factory=list)
    """The kill points that fired, in order (one per killed process)."""
    processes: int = 0
    executions: Counter[str] = field(default_factory=Counter)
    """Live step executions started, by idempotency key."""
    reexecuted: list[str] = field(default_factory=list)
    """Keys that ran more than once (steps in flight or not yet committed at a kill, retries)."""
    lost_per_kill: list[int] = field(default_factory=list)
    """Per kill: step results finished in the killed process but not committed."""
    counts: Counter[str] = field(default_factory=Counter)
    """Kill-point occurrences passed by the processes that were not killed."""
    status: str | None = None
    state: Any = None
    output: Any = None
    events: list[WorkflowRun.Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class CrashReport:
    """The uninterrupted reference run and every crashed run compared with it."""

    baseline: RunReport
    runs: list[RunReport] = field(default_factory=list)

    @property
    def kill_points(self) -> int:
        """Kill points that fired across all runs (each one a process killed by SIGKILL)."""
        return sum(len(r.kills) for r in self.runs)

    @property
    def processes(self) -> int:
        """Child processes started, the reference run's included."""
        return self.baseline.processes + sum(r.processes for r in self.runs)

    @property
    def problems(self) -> list[str]:
        """Every broken guarantee, prefixed by its run id."""
        return [f"{r.run_id}: {p}" for r in [self.baseline, *self.runs] for p in r.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`CrashCheckFailed` listing the problems, if there are any."""
        if self.problems:
            raise CrashCheckFailed(f"{len(self.problems)} problem(s):\n" + "\n".join(self.problems))


def _visit_keys(events: Iterable[WorkflowRun.Event], run_id: str) -> list[tuple[str, WorkflowRun.Event]]:
    """Pair each journal event with the idempotency key of its call (``run:visit.key``)."""
    visit = 0
    keyed = []
    for event in events:
        if isinstance(event, (WorkflowRun.RunStarted, WorkflowRun.PhaseEntered)):
            visit = event.originator_version
        key = getattr(event, "key", None)
        if key is not None:
            keyed.append((f"{run_id}:{visit}.{key}", event))
    return keyed


def committed_step_keys(events: Iterable[WorkflowRun.Event], run_id: str) -> set[str]:
    """Idempotency keys of the step-like calls whose results are in these events."""
    return {
        key for key, event in _visit_keys(events, run_id)
        if isinstance(event, WorkflowRun.StepRecorded) and event.kind in _STEP_LIKE
    }


def check_log(events: Sequence[WorkflowRun.Event], run_id: str) -> list[str]:
    """Problems in one run's log: version gaps, a call recorded twice, events after the end."""
    problems = []
    versions = [e.originator_version for e in events]
    if versions != list(range(1, len(events) + 1)):
        problems.append(f"event versions are not gapless from 1: {versions}")
    if not events or not isinstance(events[0], WorkflowRun.RunStarted):
        problems.append("the log does not start with RunStarted")
    seen: Counter[tuple[str, ...]] = Counter()
    for key, event in _visit_keys(events, run_id):
        ident = (type(event).__name__, key)
        if isinstance(event, WorkflowRun.StepAttemptFailed):
            ident += (str(event.attempt),)
        if isinstance(event, (WorkflowRun.StepRecorded, WorkflowRun.CheckpointSaved)):
            ident = ("recorded", key)
        seen[ident] += 1
    problems.extend(f"{kind} {key} is recorded {n} times" for (kind, key, *_), n in seen.items() if n > 1)
    ends = [i for i, e in enumerate(events) if isinstance(e, (WorkflowRun.RunCompleted, WorkflowRun.RunFailed))]
    if len(ends) > 1 or (ends and ends[0] != len(events) - 1 and not _retried_after(events, ends[0])):
        problems.append(f"the run ends more than once or has events after its end (at versions {[i + 1 for i in ends]})")
    return problems


def _retried_after(events: Sequence[WorkflowRun.Event], index: int) -> bool:
    nxt = events[index + 1] if index + 1 < len(events) else None
    return isinstance(nxt, WorkflowRun.RunResumed) and nxt.reason == "retry"


def _comparable(events: Sequence[WorkflowRun.Event], ignore: frozenset[str]) -> list[tuple[str, dict[str, Any]]]:
    from phaseledger.testing.replay import comparable_events

    result = []
    for kind, data in comparable_events(events):
        if kind in ignore:
            continue
        if "StepAttemptFailed" in ignore:
            data.pop("seq", None)  # failed attempts take sequence numbers too
        result.append((kind, data))
    return result


class CrashHarness:
    """Drive runs of one workflow through chains of killed and resumed child processes.

    ``target`` is ``package.module:attr`` or ``file.py:attr`` naming a Workflow (or a list of
    versions, or a factory); ``store`` a SQLite or PostgreSQL store URL. ``input`` is the run
    input (JSON). ``checkpoint_every_n_steps``, ``snapshot_every`` and ``max_inline_wait`` are
    passed to the child's Engine. ``env`` and ``cwd`` are given to every child (plus the
    current environment). ``workdir`` keeps the ledgers (a temporary directory by default).
    ``fork`` (default: on POSIX) forks children from a server process that imported the
    target once; ``fork=False`` starts every child as a fresh ``python`` interpreter.
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
        from phaseledger.engine.store import Store

        with self._store_lock:
            if self._store is None:
                self._store = Store(self.store_url, snapshot_every=self.snapshot_every)
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
            if [_fingerprint(e) for e in events[: len(committed)]] != [_fingerprint(e) for e in committed]:
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
            if outcome.status in ("completed", "failed", "cancelled"):
                break
            if outcome.status in ("sleeping", "retrying") and outcome.suspended and outcome.suspended.get("until"):
                until = datetime.fromisoformat(str(outcome.suspended["until"]))
                time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.01)
                continue
            if outcome.status == "running":
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
        got, expected = _comparable(crashed.events, self.ignore_events), _comparable(baseline.events, self.ignore_events)
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
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


def _fingerprint(event: WorkflowRun.Event) -> tuple[Any, ...]:
    data = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else vars(event)
    return (type(event).__name__, json.dumps(data, sort_keys=True, default=str))


if __name__ == "__main__":  # pragma: no cover - children start through child_main()
    child_main()
