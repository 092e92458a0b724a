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
    ├── EncryptionSetupError         encryption or compression settings cannot be used
    ├── DecryptionFailed             no configured key opens a stored event
    ├── CorruptEvent                 a stored event or snapshot of one run cannot be read
    ├── InvalidInput                 a run input, signal payload, id or name fails validation
    ├── InvalidToken                 a resume token is forged, truncated or foreign
    ├── TokenKeyMissing              resume tokens need a signing key that is not configured
    ├── HistoryCompacted             the events asked for were removed by compaction
    ├── CheckpointNotFound           a run has no checkpoint (or version) of that id
    ├── RunNotFinished               the action needs a finished run (compaction)
    ├── StepFailed                   a step failed and will not be retried any more
    ├── RecordedError                a failure replayed from the log whose type is not rebuilt
    ├── CircuitOpen                  a circuit breaker refuses calls for now
    ├── SignalTimeout                no signal arrived before the timeout
    ├── WorkerAlreadyRunning         another worker owns this SQLite or memory:// store
    ├── StepTimeout                  an attempt of a step ran past its timeout
    ├── DeadlineExceeded             a phase's or a run's deadline passed
    ├── RunBusy                      another live process drives the run now
    ├── LeaseLost                    this driver lost the run to another one and stopped
    ├── EffectInDoubt                a step with an external effect may or may not have happened
    └── TransactionsUnsupported      a transactional step on a store without a database

Messages name the ids involved and say what to do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from phaseledger.domain.status import FAILED


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

    def __init__(self, run_id: str, detail: str = "") -> None:
        super().__init__(
            f"run {run_id!r} already exists{' ' + detail if detail else ''}; use engine.resume({run_id!r}) "
            "to continue it, start(..., if_exists='return') to get it back, or start a run with another run_id"
        )
        self.run_id = run_id


class RunFinished(PhaseledgerError):
    """The run has finished (completed, failed or cancelled) and cannot take this action."""

    def __init__(self, run_id: str, status: str, action: str) -> None:
        hint = " (engine.retry() re-enters the failed phase)" if status == FAILED else ""
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


class EncryptionSetupError(PhaseledgerError):
    """A store's encryption or compression settings cannot be used.

    A cipher key that is not base64 of 16, 24 or 32 bytes, a ``$PHASELEDGER_COMPRESS``
    that is neither on nor off, or the ``cryptography`` package missing; the message says
    which, and what to do.
    """


class DecryptionFailed(PhaseledgerError):
    """A stored event or snapshot of a run cannot be read with the configured cipher keys.

    It was written under a key that is not configured (any more), or it is encrypted and no
    key is configured. Add the key it was written with to ``$PHASELEDGER_CIPHER_KEY``
    (or ``Engine(cipher_key=...)``) after the current one.
    """

    def __init__(self, run_id: str, version: int, what: str, reason: str) -> None:
        super().__init__(f"cannot read {what} of run {run_id!r}: {reason}")
        self.run_id = run_id
        self.version = version
        self.what = what


class CorruptEvent(PhaseledgerError):
    """A stored event or snapshot of one run cannot be read: that run is damaged, no other.

    Its data does not decode, it lacks a field its type needs, or its type is one this
    release does not know. Loading, resuming or showing the run raises this; listings show
    the run as ``damaged`` and workers skip it until the row reads again.
    """

    def __init__(self, run_id: str, version: int, reason: str, *, snapshot: bool = False) -> None:
        what = "snapshot" if snapshot else "event"
        before = (f" (`phaseledger show {run_id} --at {version - 1}` shows it as it stood before)"
                  if version > 1 and not snapshot else "")
        super().__init__(
            f"run {run_id!r} is damaged: its {what} at version {version} cannot be read: {reason}. "
            f"Other runs are not affected. Repair that row of the store or restore the run from a backup{before}; "
            "once the row reads again the run resumes, and workers pick it up by themselves"
        )
        self.run_id = run_id
        self.version = version
        self.reason = reason
        self.snapshot = snapshot


class InvalidInput(PhaseledgerError, ValueError):
    """A run input or signal payload does not validate, or an id or name is not acceptable."""


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


class StepTimeout(PhaseledgerError, TimeoutError):
    """An attempt of a step ran longer than its ``timeout``; retry policies treat it like any
    failure (``retry_on``/``give_up_on`` can name it)."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(f"step {name!r} did not finish within its timeout of {seconds:g}s")
        self.name = name
        self.seconds = seconds


class DeadlineExceeded(PhaseledgerError, TimeoutError):
    """A phase's or a run's deadline passed (``@workflow.phase(timeout=...)``, ``Workflow(timeout=...)``).

    Raised at the first live journaled call after the deadline, and by a step attempt or a
    retry wait that would run past it. ``scope`` is ``"phase"`` or ``"run"``. The deadline
    counts from the recorded phase entry or run start, so a resumed run keeps it. A handler
    may catch it and route (return another phase, or set state its guards read).
    """

    def __init__(self, run_id: str, scope: str, name: str, deadline: datetime) -> None:
        super().__init__(
            f"the {scope} deadline of {name!r} in run {run_id!r} passed at "
            f"{deadline.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; catch DeadlineExceeded in the handler to route "
            "elsewhere, or give the " + ("phase" if scope == "phase" else "workflow") + " a longer timeout"
        )
        self.run_id = run_id
        self.scope = scope
        self.name = name
        self.deadline = deadline


class RunBusy(PhaseledgerError):
    """Another live process drives this run: its lease is held and its heartbeat is fresh.

    ``owner`` names the driver (``host:pid:id``); ``expires_at`` is when its lease runs out
    unless renewed. Wait for it, or take the run over explicitly (``steal=True``).
    """

    def __init__(self, run_id: str, owner: str, host: str | None, pid: int | None,
                 expires_at: datetime, heartbeat: str) -> None:
        where = f"{host}:{pid}" if host else owner
        super().__init__(
            f"run {run_id!r} is being driven by {where} (driver {owner}, {heartbeat}); its lease "
            f"expires at {expires_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC unless renewed. Wait for that driver to "
            "finish, or take the run over with resume(..., steal=True) / `phaseledger resume --steal` "
            "(the step it is running now may then run twice)"
        )
        self.run_id = run_id
        self.owner = owner
        self.host = host
        self.pid = pid
        self.expires_at = expires_at


class LeaseLost(PhaseledgerError):
    """This driver lost its run: another driver took it over, or the lease ran out unrenewed.

    The driver stopped at its next journal boundary and appended nothing more; the run's
    new owner continues it.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"lost the lease on run {run_id!r}: another driver took the run over (or this "
            "process could not renew its lease in time), so this one stopped at its last journal "
            "boundary without writing. engine.get() shows the run as its new owner leaves it"
        )
        self.run_id = run_id


class EffectInDoubt(PhaseledgerError):
    """A step declared with an external effect was found in doubt, and its policy is ``fail``.

    Its intent was recorded but not its outcome: the process died while it ran, so the effect
    may or may not have happened. Find out with its idempotency key ``key``; then
    ``engine.retry`` (or ``phaseledger retry``) runs it again with that key.
    """

    def __init__(self, run_id: str, name: str, key: str, since: datetime | None) -> None:
        when = f" since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if since is not None else ""
        super().__init__(
            f"step {name!r} of run {run_id!r} is in doubt{when}: its effect (idempotency key {key!r}) may or may "
            "not have happened, and its policy is 'fail'. Check the external system for that key; retry the run "
            "to run the step again with the same key, or declare the step with on_doubt='reconcile' or 'ask'"
        )
        self.run_id = run_id
        self.name = name
        self.key = key
        self.since = since
class TransactionsUnsupported(PhaseledgerError):
    """``ctx.transaction`` needs a store in a database (SQLite or PostgreSQL): a ``memory://``
    store has none to write the step's rows to. Raised before the step runs or records anything."""

    def __init__(self, name: str, store: str) -> None:
        super().__init__(
            f"transactional step {name!r} needs a SQLite or PostgreSQL store, but the run is stored in {store}, "
            "which has no database to write to. Use a sqlite:/// or postgresql:// store, or ctx.step() "
            "for work that does not write to the store's database"
        )
        self.name = name
        self.store = store
