"""Driving runs from a command: Ctrl-C stops with one line, a failed run sets the exit status.

Commands that drive runs (``start --drive``, ``resume``, ``retry``, ``signal --resume``)
run their coroutine through :func:`drive`. Ctrl-C cancels the run at once: the step in
flight is not recorded (it runs again on resume), the run's lease is released, and the
command exits with status 130 after one line naming the run and the command that resumes
it. A run that ends failed makes the command exit with status 3 (:func:`exit_if_failed`).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from phaseledger.cli import _render as render
from phaseledger.cli._session import CommandError, Session
from phaseledger.domain.status import FAILED

if TYPE_CHECKING:
    from phaseledger.engine.views import Run

T = TypeVar("T")

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""
RUN_FAILED = 3
"""Exit status when a run the command drove ended failed (the command itself worked)."""


class Interrupted(CommandError):
    """Ctrl-C stopped the command; the message says which run stopped and how to resume it."""

    exit_code = INTERRUPTED


@dataclass
class NowDriving:
    """Which run a command is driving now (named when Ctrl-C stops it)."""

    run_id: str | None = None


def command_line(session: Session, *words: str) -> str:
    """A ``phaseledger`` command line with this session's store and workflows (passwords hidden)."""
    parts = ["phaseledger"]
    if session.store is not None:
        from phaseledger.store.eventstore import StoreURL

        parts += ["--store", StoreURL.parse(session.store).redacted]
    for module in session.workflow_modules:
        parts += ["-w", module]
    return shlex.join([*parts, *words])


def interrupted_message(session: Session, run_id: str | None) -> str:
    """The one line printed after Ctrl-C: what stopped and how to continue."""
    if run_id is None:
        return "interrupted before any run was driven; nothing changed"
    return (f"interrupted: run {run_id!r} stopped at its last recorded step (the step in flight runs again); "
            f"resume it with: {command_line(session, 'resume', run_id)}")


def drive(session: Session, work: Coroutine[Any, Any, T], driving: NowDriving | str) -> T:
    """Run ``work`` (which drives a run) to its end; Ctrl-C raises :class:`Interrupted`.

    ``driving`` is the run id, or a :class:`NowDriving` the coroutine updates as it goes from
    run to run. On Ctrl-C ``asyncio.run`` cancels every task: drivers stop at once and give
    back their leases, so the run can be resumed right away.
    """
    current = NowDriving(driving) if isinstance(driving, str) else driving
    try:
        return asyncio.run(work)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(session, current.run_id)) from None


def failure_line(session: Session, run: Run) -> str:
    """Why a driven run failed, and the command that re-enters its failed phase."""
    error = run.error or {}
    where = f" in phase {error['phase']}" if error.get("phase") else ""
    return (f"run {run.run_id!r} failed{where}: {error.get('type')}: {error.get('message')}; "
            f"after fixing the cause: {command_line(session, 'retry', run.run_id)}")


def exit_if_failed(session: Session, runs: Iterable[Run], *, errors: bool = False) -> None:
    """Print one ``error:`` line per failed run, then exit: status 1 if ``errors`` (some run
    could not be driven), else :data:`RUN_FAILED` if a run failed; return if neither."""
    failed = [run for run in runs if run.status == FAILED]
    for run in failed:
        render.print_error(failure_line(session, run))
    if errors:
        raise typer.Exit(1)
    if failed:
        raise typer.Exit(RUN_FAILED)
