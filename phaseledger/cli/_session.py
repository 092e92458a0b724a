"""What every command shares: the store URL, the workflows to load, the console, and the
one place that opens the store (:meth:`Session.engine`, :meth:`Session.reports`).

Heavy imports (the engine, eventsourcing, pydantic-ai) happen here on first use, not when
the command starts, so ``phaseledger --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from phaseledger.domain.errors import PhaseledgerError, StoreUnavailable, UnknownWorkflow

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Workflow
    from phaseledger.engine.engine import Engine
    from phaseledger.projections.reports import Reports

WORKFLOWS_ENV_VAR = "PHASELEDGER_WORKFLOWS"
DEBUG_ENV_VAR = "PHASELEDGER_DEBUG"


class CommandError(PhaseledgerError):
    """A command cannot do what was asked (bad option, bad JSON, missing file); the message says why."""

    exit_code = 1


def refuse_missing_store(store: str | None) -> None:
    """Raise :class:`StoreUnavailable` when ``store`` names a SQLite file that does not exist.

    Commands that read a store call this first: opening a missing file would create an
    empty store and show nothing, as if the runs had vanished.
    """
    from phaseledger.store.eventstore import StoreURL

    url = StoreURL.parse(store)
    if url.sqlite_path is not None and not Path(url.sqlite_path).expanduser().exists():
        raise StoreUnavailable(
            f"store {url.url} does not exist (no file {url.sqlite_path!r}); check --store or "
            "$PHASELEDGER_STORE, or start a run there first"
        )


def warn_deprecated(old: str, new: str) -> None:
    """Say on stderr that an option spelling is deprecated and what replaces it (output is unchanged)."""
    print(f"warning: {old} is deprecated and will be removed; use {new}", file=sys.stderr)


def debug_from_env() -> bool:
    """Whether ``$PHASELEDGER_DEBUG`` asks for tracebacks (set, and not ``0``), as ``--debug`` does."""
    return os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")


def make_console(*, stderr: bool = False) -> Console:
    """A console that styles output on a terminal and prints plain, unwrapped text otherwise."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, no_color=True, width=240, soft_wrap=True)


@dataclass
class Session:
    """The options given before the command name, and the objects built from them on demand."""

    store: str | None = None
    """The store URL (``--store``, else ``$PHASELEDGER_STORE``, else the SQLite default)."""
    workflow_modules: list[str] = field(default_factory=list)
    """Import paths that define workflows (``--workflows``)."""
    debug: bool = field(default_factory=debug_from_env)
    """Show tracebacks of errors (``--debug`` or ``$PHASELEDGER_DEBUG``)."""
    console: Console = field(default_factory=make_console)
    _workflows: list[Workflow[Any]] | None = None

    @property
    def store_url(self) -> str:
        """The URL the engine will open (resolving the environment variable and default)."""
        from phaseledger.store.eventstore import StoreURL

        return StoreURL.parse(self.store).url

    def workflows(self) -> list[Workflow[Any]]:
        """Every workflow defined by the ``--workflows`` modules (imported once)."""
        if self._workflows is None:
            found: list[Workflow[Any]] = []
            for spec in self.workflow_modules:
                for workflow in load_workflows(spec):
                    if all(workflow is not other for other in found):
                        found.append(workflow)
            self._workflows = found
        return self._workflows

    def workflow(self, name: str, version: int | None = None) -> Workflow[Any]:
        """The workflow called ``name`` (latest version unless ``version``) among those loaded."""
        from phaseledger.domain.workflow import WorkflowRegistry

        registry = WorkflowRegistry()
        for workflow in self.workflows():
            registry.register(workflow)
        try:
            return registry.get(name, version)
        except UnknownWorkflow as exc:
            raise UnknownWorkflow(f"{exc}{self._workflows_hint()}") from None

    def _workflows_hint(self) -> str:
        if not self.workflow_modules:
            return "; pass --workflows MODULE (or set PHASELEDGER_WORKFLOWS) to load the module that defines it"
        return f" (loaded from {', '.join(self.workflow_modules)})"

    @contextmanager
    def engine(self, *, must_exist: bool = True) -> Iterator[Engine]:
        """Open the engine on the store, with the ``--workflows`` registered, for one command.

        ``must_exist`` refuses to create a SQLite file that is not there (reading commands
        would otherwise silently show an empty store).
        """
        from phaseledger.engine.engine import Engine
        from phaseledger.store.eventstore import Store, StoreURL

        if must_exist:
            refuse_missing_store(self.store)
        store = Store(StoreURL.parse(self.store).url)
        workflows = self.workflows()  # import errors surface before the store is touched
        engine = Engine(store, workflows=workflows)
        try:
            yield engine
        finally:
            engine.close()

    @contextmanager
    def reports(self, store: str | None = None) -> Iterator[Reports]:
        """Open the report projections on the store (``store`` instead of ``--store`` when given),
        for one command; a SQLite file that does not exist is refused, not created."""
        from phaseledger.projections.reports import Reports

        url = store or self.store
        refuse_missing_store(url)
        reports = Reports(url)
        try:
            yield reports
        finally:
            reports.close()

    def explain_unknown_workflow(self, exc: UnknownWorkflow) -> UnknownWorkflow:
        """The same error with a hint on how to load workflows."""
        return UnknownWorkflow(f"{exc}{self._workflows_hint()}")


def load_workflows(spec: str) -> list[Workflow[Any]]:
    """Import ``spec`` and return its workflows (see :func:`phaseledger.engine.loading.load_workflows`).

    A console script does not see the current directory, so it is put on ``sys.path`` first.
    """
    from phaseledger.engine.loading import load_workflows as load

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return load(spec)
    except UnknownWorkflow as exc:
        raise CommandError(str(exc)) from None
