"""The exceptions phaseledger raises.

Every error a user can hit derives from :class:`PhaseledgerError`. Definition errors
(found when a workflow is declared) are apart from run-time errors::

    PhaseledgerError
    ├── WorkflowDefinitionError      a workflow definition is invalid
    ├── UnknownWorkflow              a workflow (or version of it) is not registered
    ├── RunNotFound                  no run has this id in the store
    ├── RunExists                    a run with this id already exists
    ├── RunFinished                  the run is completed, failed or cancelled
    ├── InvalidTransition            a handler asked for a phase change the machine forbids
    ├── NonDeterminismError          replay met another call than the one recorded
    ├── SerializationError           a value cannot be recorded in the log
    ├── ConcurrencyConflict          another writer appended to the run first
    ├── StoreUnavailable             the store cannot be reached or opened
    ├── InvalidInput                 a run input or signal payload fails validation
    ├── InvalidToken                 a resume token is forged, truncated or foreign
    ├── TokenKeyMissing              resume tokens need a signing key that is not configured
    ├── HistoryCompacted             the events asked for were removed by compaction
    ├── CheckpointNotFound           a run has no checkpoint (or version) of that id
    ├── RunNotFinished               the action needs a finished run (compaction)
    ├── StepFailed                   a step failed and will not be retried any more
    ├── CircuitOpen                  a circuit breaker refuses calls for now
    ├── SignalTimeout                no signal arrived before the timeout
    └── WorkerAlreadyRunning         another worker owns this SQLite or memory:// store

Messages name the ids involved and say what to do.
"""

from __future__ import annotations

from typing import Any


class PhaseledgerError(Exception):
    """Root of every exception raised by phaseledger."""


class WorkflowDefinitionError(PhaseledgerError):
    """A workflow definition is invalid; raised when the workflow is defined or registered."""


class UnknownWorkflow(PhaseledgerError):
    """The workflow, or the version of it that a run was started with, is not registered."""


class RunNotFound(PhaseledgerError):
    """No run with this id exists in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id!r} not found in the store; check the id and the store URL "
            "(engine.runs() or `phaseledger runs` lists the runs there)"
        )
        self.run_id = run_id


class RunExists(PhaseledgerError):
    """A run with this id already exists; pick another id or resume the existing run."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id!r} already exists; use engine.resume({run_id!r}) to continue it "
            "or start a run with another run_id"
        )
        self.run_id = run_id


class RunFinished(PhaseledgerError):
    """The run has finished (completed, failed or cancelled) and cannot take this action."""

    def __init__(self, run_id: str, status: str, action: str) -> None:
        hint = " (engine.retry() re-enters the failed phase)" if status == "failed" else ""
        super().__init__(f"cannot {action} run {run_id!r}: it is {status}{hint}")
        self.run_id = run_id
        self.status = status


class InvalidTransition(PhaseledgerError):
    """A handler asked for a phase change the workflow's state machine does not allow."""


class NonDeterminismError(PhaseledgerError):
    """Replay met another call than the one recorded at this point of the run.

    The workflow code changed under a running run. Finish the run with the code it started
    with (register that version), or start a new run.
    """

    def __init__(self, run_id: str, seq: int | str, recorded: str, asked: str) -> None:
        super().__init__(
            f"non-determinism in run {run_id!r} at sequence {seq}: the log recorded {recorded} "
            f"but the code asked for {asked}. The workflow code changed under a running run: "
            "resume it with the code it started with (register that workflow version), "
            "or start a new run"
        )
        self.run_id = run_id
        self.seq = seq
        self.recorded = recorded
        self.asked = asked


class SerializationError(PhaseledgerError):
    """A value cannot be recorded in the log (it is not JSON and not a pydantic model)."""


class ConcurrencyConflict(PhaseledgerError):
    """Another writer appended to the run first; reload the run and try again."""

    def __init__(self, run_id: str, version: int | None = None) -> None:
        where = f" at version {version}" if version is not None else ""
        super().__init__(
            f"run {run_id!r} was advanced by another writer{where}; nothing was appended. "
            "Another engine or worker owns it now: reload it before acting again"
        )
        self.run_id = run_id
        self.version = version


class StoreUnavailable(PhaseledgerError):
    """The store cannot be opened or reached; check the URL and that the server is up.

    Every database error of a store operation is raised as this (or as
    :class:`ConcurrencyConflict`), whatever the driver underneath said. ``transient`` is
    True when waiting may help (a lost connection, a server restarting or down, a SQLite
    file locked past its timeout): workers and drivers retry those with backoff.
    """

    def __init__(self, message: str, *, store: str | None = None, operation: str | None = None,
                 reason: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.store = store
        """The store's URL, password hidden (None when not known)."""
        self.operation = operation
        """What was being done, for example ``append events of run 'r1'``."""
        self.reason = reason
        """What the database driver said."""
        self.transient = transient


class InvalidInput(PhaseledgerError, ValueError):
    """A run input or a signal payload does not validate against its pydantic model."""


class InvalidToken(PhaseledgerError):
    """A resume token is forged, truncated, or belongs to another store."""


class TokenKeyMissing(PhaseledgerError):
    """Resume tokens need a signing key: ``Engine(token_key=...)`` or ``$PHASELEDGER_TOKEN_KEY``."""


class HistoryCompacted(PhaseledgerError):
    """The events asked for were removed by compaction; only later versions can be read."""

    def __init__(self, run_id: str, version: int, earliest: int) -> None:
        super().__init__(
            f"run {run_id!r} was compacted: the events before version {earliest} were removed, so "
            f"version {version} cannot be rebuilt; ask for version {earliest} or later"
        )
        self.run_id = run_id
        self.version = version
        self.earliest = earliest


class CheckpointNotFound(PhaseledgerError):
    """A run has no checkpoint, label or version of that id (``engine.checkpoints()`` lists them)."""


class RunNotFinished(PhaseledgerError):
    """The action needs a finished run (completed, failed or cancelled)."""

    def __init__(self, run_id: str, status: str, action: str) -> None:
        super().__init__(
            f"cannot {action} run {run_id!r}: it is {status}, and only finished runs "
            "(completed, failed or cancelled) can be; let it finish or cancel it first"
        )
        self.run_id = run_id
        self.status = status


class StepFailed(PhaseledgerError):
    """A step failed and will not be retried any more (attempts exhausted or not retryable).

    A handler may catch it and route to another phase; uncaught, the run fails.
    """

    def __init__(self, name: str, error_type: str, message: str, attempts: int) -> None:
        super().__init__(f"step {name!r} failed after {attempts} attempt(s): {error_type}: {message}")
        self.name = name
        self.error_type = error_type
        self.message = message
        self.attempts = attempts


class CircuitOpen(PhaseledgerError):
    """A circuit breaker is open and refuses calls until its reset timeout passes (retryable)."""

    def __init__(self, breaker: str, retry_in: float) -> None:
        super().__init__(
            f"circuit breaker {breaker!r} is open after repeated failures; "
            f"calls are refused for another {retry_in:.1f}s"
        )
        self.breaker = breaker
        self.retry_in = retry_in


class SignalTimeout(PhaseledgerError):
    """No signal of this name arrived before the timeout given to ``wait_for_signal``."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(f"no {name!r} signal arrived within {timeout}s")
        self.name = name
        self.timeout = timeout


class WorkerAlreadyRunning(PhaseledgerError):
    """Another worker already owns this store (SQLite and ``memory://`` allow one worker)."""

    def __init__(self, store: str, holder: str) -> None:
        super().__init__(
            f"another worker ({holder}) already owns store {store}: a SQLite or memory:// store "
            "takes one worker process at a time. Stop that worker first, or use a PostgreSQL "
            "store to run several workers"
        )
        self.store = store
        self.holder = holder


def describe_error(exc: BaseException, *, traceback_lines: int = 12) -> dict[str, Any]:
    """The JSON record of an error kept in the log: type, message and a short traceback."""
    import traceback

    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    short = "".join(tb).splitlines()[-traceback_lines:]
    return {"type": type(exc).__name__, "message": str(exc), "traceback": "\n".join(short)}
