"""The deploy gate: replay every unfinished run of a store against the code about to be deployed.

Nothing runs live and nothing is written: each run is loaded, and the handler of its
current phase is replayed by :func:`~phaseledger.engine.dryrun.dry_replay`, which serves
recorded calls from the log with the resume path's own checks and stops at the first call
that would run live. The store is read only: no event, lease, snapshot or read-model row
is written, so the gate can run against production from CI.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phaseledger.deploys.models import CallInfo, CheckReport, RunCompatibility, Verdict, VersionUse
from phaseledger.domain.errors import CorruptEvent, RunNotFound, StoreUnavailable
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.dryrun import CallSeen, DryOutcome, dry_replay
from phaseledger.engine.engine import Engine
from phaseledger.store.cipher import CipherKeys
from phaseledger.store.eventstore import Store, StoreURL

__all__ = ["check_deploy", "check_deploy_sync"]

_BATCH = 200
"""Runs loaded per call of the store (one thread hop each)."""


async def check_deploy(
    store: str | Store | None, workflows: Iterable[Workflow[Any]], *, cipher_key: CipherKeys | None = None,
) -> CheckReport:
    """Classify every unfinished run of ``store`` for the new code's ``workflows``; write nothing.

    ``store`` is a URL (default ``$PHASELEDGER_STORE``; a SQLite file that does not exist is
    refused, not created) or an open :class:`~phaseledger.Store`, left open. ``workflows``
    are every workflow version the new code registers (old versions kept for their runs
    included). ``cipher_key`` decrypts an encrypted store (default ``$PHASELEDGER_CIPHER_KEY``).
    See :class:`~phaseledger.RunCompatibility` for the verdicts; ``report.ok`` says whether
    the code may be deployed.
    """
    own = not isinstance(store, Store)
    opened = _open(store, cipher_key) if not isinstance(store, Store) else store
    try:
        engine = Engine(opened, workflows=workflows)  # the registry, and what handlers see as ctx.engine
        registry = engine.registry
        runs: list[RunCompatibility] = []
        unreadable: list[str] = []
        for batch in _batches(await opened.call(lambda: list(opened.run_ids())), _BATCH):
            loaded = await opened.call(_load_unfinished, opened, batch)
            for run_id, run in loaded:
                if run is None:
                    unreadable.append(run_id)
                else:
                    runs.append(await _check_run(engine, run))
        latest = {name: max(v for (n, v) in registry.workflows if n == name) for (name, _) in registry.workflows}
        return CheckReport(
            store=opened.url.redacted, checked_on=datetime.now(UTC), workflows=registry.names(),
            runs=runs, versions=_versions(registry.workflows, latest, runs), unreadable=unreadable,
        )
    finally:
        if own:
            opened.close()


def check_deploy_sync(
    store: str | Store | None, workflows: Iterable[Workflow[Any]], *, cipher_key: CipherKeys | None = None,
) -> CheckReport:
    """:func:`check_deploy` for synchronous code (a CI script, a test)."""
    return asyncio.run(check_deploy(store, workflows, cipher_key=cipher_key))


def _open(url: str | None, cipher_key: CipherKeys | None) -> Store:
    parsed = StoreURL.parse(url)
    if parsed.sqlite_path is not None and not Path(parsed.sqlite_path).expanduser().exists():
        raise StoreUnavailable(f"store {parsed.url} does not exist (no file {parsed.sqlite_path!r}): "
                               "check the store URL")
    return Store(parsed.url, cipher_key=cipher_key)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _load_unfinished(store: Store, run_ids: list[str]) -> list[tuple[str, WorkflowRun | None]]:
    """The unfinished runs among ``run_ids`` (None for a run that cannot be read)."""
    found: list[tuple[str, WorkflowRun | None]] = []
    for run_id in run_ids:
        try:
            run = store.load(run_id)
        except CorruptEvent:
            found.append((run_id, None))
            continue
        except RunNotFound:  # deleted meanwhile
            continue
        if not run.finished:
            found.append((run_id, run))
    return found


async def _check_run(engine: Engine, run: WorkflowRun) -> RunCompatibility:
    registry = engine.registry
    versions = sorted(v for (n, v) in registry.workflows if n == run.workflow)
    base: dict[str, Any] = {"run_id": run.id, "workflow": run.workflow, "workflow_version": run.workflow_version,
                            "status": run.status, "phase": run.phase}
    if run.workflow_version not in versions:
        have = f"registered versions: {versions}" if versions else "the workflow is not registered at all"
        return RunCompatibility(
            **base, verdict="pinned", version_registered=False,
            detail=f"continues on v{run.workflow_version}, which the new code does not register ({have}): "
                   f"keep that version registered until the run finishes, or the run cannot resume",
        )
    workflow = registry.get(run.workflow, run.workflow_version)
    outcome = await dry_replay(engine, run, workflow)
    verdict, detail = _verdict(outcome, workflow, pinned=run.workflow_version < versions[-1])
    return RunCompatibility(
        **base, verdict=verdict, version_registered=True, replayed_calls=outcome.replayed,
        stopped_at=_info(outcome.stopped_at), sequence=outcome.sequence, recorded=_info(outcome.recorded),
        new=_info(outcome.asked), upcast=outcome.upcast, detail=detail,
    )


def _verdict(outcome: DryOutcome, workflow: Workflow[Any], *, pinned: bool) -> tuple[Verdict, str]:
    where = f"v{workflow.version}"
    if outcome.ended == "diverged":
        return "diverges", f"{where}: {outcome.error}"
    if outcome.ended == "failed":
        return "fails", f"{where}: {outcome.error}"
    served = f"{outcome.replayed} recorded call(s) served"
    stop = outcome.stopped_at
    then = f", then {stop.kind} {stop.name!r} runs live" if stop is not None else ""
    if pinned:
        return "pinned", f"continues on {where} (registered): {served}{then}"
    if outcome.upcast:
        return "upcast", f"{where}: {served}{then}; read through the new models: " + "; ".join(outcome.upcast)
    return "compatible", f"{where}: {served}{then}"


def _info(call: CallSeen | None) -> CallInfo | None:
    if call is None:
        return None
    return CallInfo(kind=call.kind, name=call.name, fingerprint=call.fingerprint, key=call.key)


def _versions(registered: Iterable[tuple[str, int]], latest: dict[str, int],
              runs: list[RunCompatibility]) -> list[VersionUse]:
    needed = Counter((run.workflow, run.workflow_version) for run in runs)
    keys = sorted(set(registered) | set(needed))
    registered = set(registered)
    return [
        VersionUse(workflow=name, version=version, registered=(name, version) in registered,
                   latest=latest.get(name) == version, unfinished_runs=needed[(name, version)])
        for name, version in keys
    ]
