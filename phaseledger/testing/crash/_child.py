"""The child side: the probe that counts kill points, writes the ledger and kills its own
process, the entry point of a child started as a fresh interpreter, and the fork server."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from phaseledger.domain.errors import UnknownWorkflow
from phaseledger.domain.workflow import Workflow
from phaseledger.testing.crash._killpoints import KILL_ENV, KILL_KINDS, LEDGER_ENV, CrashHarnessError, KillPoint


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
        from phaseledger.engine.journal import Journal, idempotency_key
        from phaseledger.store.eventstore import Store

        probe = self
        append = Store.append
        append_async = Store.append_async
        journaled = Journal.call

        def probed_append(store: Store, events: Sequence[Any], **kwargs: Any) -> int:
            result = append(store, events, **kwargs)
            if events:
                probe.hit("after_append")
            return result

        async def probed_append_async(store: Store, events: Sequence[Any], **kwargs: Any) -> int:
            result = await append_async(store, events, **kwargs)
            if events:
                probe.hit("after_append")
            return result

        async def probed_journaled(journal: Journal, key: str, kind: str, name: str,
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

            return await journaled(journal, key, kind, name, probed_call, *args, **kwargs)

        # The child is a test process: its store and journal are instrumented for good.
        setattr(Store, "append", probed_append)  # noqa: B010
        setattr(Store, "append_async", probed_append_async)  # noqa: B010
        setattr(Journal, "call", probed_journaled)  # noqa: B010


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
