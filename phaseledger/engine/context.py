"""The handler context: every non-deterministic thing a phase handler does goes through it.

Each call gets a key in the current phase visit (its ordinal, or a key chosen by the
caller, such as an agent's tool-call id). On replay a call whose key is in the journal is
served from it without running; a call that does not match what was recorded raises
:class:`~phaseledger.NonDeterminismError`. Everything else runs live and is recorded. The
context is the handler's typed face of the phase visit's :class:`~phaseledger.engine.journal.Journal`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random as _random
import uuid as _uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from phaseledger.domain.effects import Effect, InDoubtPolicy, fingerprint
from phaseledger.domain.errors import SerializationError
from phaseledger.domain.journal import Kind
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.values import copy_json
from phaseledger.engine.journal import CURRENT_JOURNAL, STEP_KEY, Journal, utcnow

if TYPE_CHECKING:
    from phaseledger.domain.workflow import Phase
    from phaseledger.engine.driver import RunDriver
    from phaseledger.engine.engine import Engine

StateT = TypeVar("StateT", bound=BaseModel)


class Context(Generic[StateT]):
    """What a phase handler receives: the run's state and the journaled operations.

    ``state`` is the pydantic state as it stood when the phase was entered (rebuilt the
    same way on replay); mutate it freely, it is recorded when the phase changes.
    """

    def __init__(self, driver: RunDriver, phase: Phase) -> None:
        self._driver = driver
        self._phase = phase
        self.state: StateT = driver.workflow.state_model.model_validate(copy_json(driver.run.phase_state))
        self._journal = Journal(driver, phase)

    # -- identity ----------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The id of the run."""
        return self._driver.run.id

    @property
    def phase(self) -> str:
        """The name of the current phase."""
        return self._phase.name

    @property
    def attempt(self) -> int:
        """How many times this phase has been entered in this run (1 the first time)."""
        return self._driver.run.attempts.get(self._phase.name, 1)

    @property
    def workflow(self) -> str:
        """The workflow's name."""
        return self._driver.workflow.name

    @property
    def overrides(self) -> Mapping[str, Any]:
        """The what-if values of a fork (``engine.fork(..., overrides=...)``); empty otherwise.

        Read-only and recorded in the fork's first event, so they hold on every resume.
        """
        parent = self._driver.run.parent or {}
        return MappingProxyType(copy_json(parent.get("overrides") or {}))

    @property
    def engine(self) -> Engine:
        """The engine driving the run."""
        return self._driver.engine

    @property
    def idempotency_key(self) -> str:
        """Inside a step: that step's stable key (see :func:`idempotency_key`); outside: the phase visit's."""
        return STEP_KEY.get() or f"{self.run_id}:{self._journal.visit}"

    # -- the operations handlers use ---------------------------------------------------

    async def run_agent(self, agent: Any, user_prompt: Any = None, /, **kwargs: Any) -> Any:
        """Run a pydantic-ai agent durably: each model request and tool call is journaled.

        The agent needs the :class:`~phaseledger.PhaseledgerDurability` capability. On replay
        recorded responses and tool results come from the log, so no token is paid twice.
        ``kwargs`` are those of ``agent.run`` (``deps``, ``message_history``, ``output_type``, ...);
        returns its ``AgentRunResult``. See ``docs/agents.md``.
        """
        from phaseledger.agents.run import run_agent

        token = CURRENT_JOURNAL.set(self._journal)  # its units are journaled in this phase visit
        try:
            return await run_agent(self, agent, user_prompt, **kwargs)
        finally:
            CURRENT_JOURNAL.reset(token)

    async def step(
        self, name: str, fn: Callable[..., Any], /, *args: Any,
        retry: RetryPolicy | None = None, breaker: str | None = None,
        attempt_timeout: float | None = None, total_timeout: float | None = None,
        effect: Effect | InDoubtPolicy | bool | None = None, **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync or async) once and record its result.

        On replay the recorded result is returned and ``fn`` is not called. Results are JSON
        values or pydantic models and come back as the same type. ``retry`` overrides the
        phase, workflow and engine policies; ``breaker`` names a shared circuit breaker.
        Raises :class:`~phaseledger.StepFailed` when attempts are exhausted.

        ``attempt_timeout`` bounds each attempt and ``total_timeout`` all of them together,
        counted from the first attempt's recorded start (seconds): an attempt that runs
        past either fails with :class:`~phaseledger.StepTimeout`, which the retry policy
        handles like any failure (no retry once ``total_timeout`` is spent). The phase's and
        the run's deadlines bound every attempt too (:class:`~phaseledger.DeadlineExceeded`).
        A bounded synchronous ``fn`` runs in a worker thread, so the loop (and the lease's
        heartbeat) keeps running; when a bound fires, that thread is left to finish alone.

        ``effect`` declares that ``fn`` has an external effect (an :class:`~phaseledger.Effect`,
        a policy's name, or True for ``Effect()``): its intent is recorded and committed
        before each attempt, and a step found in doubt after a crash is handled by the
        effect's policy (run again with the same key, fail, reconcile, or ask a person).
        ``fn`` reads its idempotency key with :func:`~phaseledger.idempotency_key`.

        ``retry``, ``breaker``, ``attempt_timeout``, ``total_timeout`` and ``effect`` are this
        method's own options, never passed to ``fn``. When ``fn`` itself takes a parameter of one of
        those names, passing that name here is ambiguous and raises :class:`TypeError`
        (bind ``fn``'s argument with :func:`functools.partial` or a lambda instead).
        """
        if (retry is not None or breaker is not None or attempt_timeout is not None or total_timeout is not None
                or effect is not None):
            _check_step_options(fn, {"retry": retry, "breaker": breaker, "attempt_timeout": attempt_timeout,
                                     "total_timeout": total_timeout, "effect": effect})
        declared = Effect.of(effect) if effect is not None else None
        journal = self._journal
        key = journal.next_key()
        # A replayed step is served here as journal.call would serve it (a resume replays every
        # step of the visit); a live one goes through journal.call, which wrappers may probe.
        if journal.recorded(key) is not None and (entry := journal.lookup(key, Kind.STEP, name)) is not None:
            return journal.replay(entry)
        call: Callable[[], Any] = lambda: fn(*args, **kwargs)  # noqa: E731
        bounded = attempt_timeout is not None or total_timeout is not None or journal.deadline is not None
        if bounded and not inspect.iscoroutinefunction(fn):
            call = lambda: asyncio.to_thread(fn, *args, **kwargs)  # noqa: E731  (the context goes along)
        return await journal.call(
            key, Kind.STEP, name, call, retry=retry, breaker=breaker,
            attempt_timeout=attempt_timeout, total_timeout=total_timeout,
            effect=declared, inputs=fingerprint(args, kwargs) if declared is not None else None,
        )

    async def transaction(self, name: str, fn: Callable[..., Any], /, *args: Any,
                          retry: RetryPolicy | None = None, **kwargs: Any) -> Any:
        """Run ``fn(conn, *args, **kwargs)`` in a transaction of the store's database, exactly once.

        ``conn`` is a connection to the database the store lives in, inside a transaction
        that also appends this step's record: a :class:`sqlite3.Connection` on a SQLite
        store, a :class:`psycopg.Connection` (rows as dicts) on PostgreSQL. Its writes and the
        record commit together, so after any crash both are in the database or neither is,
        and the writes happened exactly once. ``fn`` is a plain function, run in a thread;
        it must neither commit nor roll back, and should be quick: SQLite's write lock is
        held while it runs.

        On replay the recorded result is returned and ``fn`` is not called. Results are
        recorded as a step's (JSON values or pydantic models). When ``fn`` raises, nothing
        it wrote is kept; the attempt is recorded and retried under ``retry`` (else the
        phase's, workflow's or engine's policy), each attempt in a transaction of its own,
        and :class:`~phaseledger.StepFailed` is raised once attempts are exhausted. When
        another driver took the run over, nothing commits and this one stops
        (:class:`~phaseledger.LeaseLost`). A ``memory://`` store has no database:
        :class:`~phaseledger.TransactionsUnsupported`.
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"ctx.transaction({name!r}, ...) takes a plain function: the database's driver "
                            f"is synchronous, and {getattr(fn, '__name__', fn)!r} is async")
        if retry is not None:
            _check_step_options(fn, {"retry": retry, "breaker": None, "attempt_timeout": None, "total_timeout": None})
        journal = self._journal
        return await journal.transaction(journal.next_key(), name, lambda conn: fn(conn, *args, **kwargs), retry=retry)

    def now(self) -> datetime:
        """The current UTC time, recorded: replay sees the same value."""
        return self._journal.value(Kind.CLOCK, "now", utcnow, datetime.isoformat, datetime.fromisoformat)

    def uuid(self) -> _uuid.UUID:
        """A random UUID4, recorded: replay sees the same value."""
        return self._journal.value(Kind.RANDOM, "uuid", _uuid.uuid4, str, _uuid.UUID)

    def random(self) -> float:
        """A random float in [0, 1), recorded: replay sees the same value."""
        return self._journal.value(Kind.RANDOM, "random", _random.random, float, float)

    def artifact(self, name: str, content: str | list[Any]) -> None:
        """Publish a document of this phase under ``name``: markdown text, or a table.

        A table is a list of rows, each a dict (column to value) or a list of values (the
        first row then names the columns). The artifact is journaled like any recorded
        value (replay publishes nothing again) and shown on the run's page of the web
        view. ``content`` must be JSON (:class:`~phaseledger.SerializationError` otherwise).
        """
        if isinstance(content, str):
            document: dict[str, Any] = {"format": "markdown", "content": content}
        elif isinstance(content, list):
            document = {"format": "table", "content": content}
        else:
            raise TypeError(f"ctx.artifact({name!r}, ...) takes markdown text or a list of rows, "
                            f"got {type(content).__name__}")
        self._journal.value(Kind.ARTIFACT, name, lambda: document, copy_json, copy_json)

    async def checkpoint(self, label: str) -> None:
        """Record the state explicitly under ``label`` (``CheckpointSaved``) and commit.

        On replay the state recorded here is restored when it differs from the handler's
        (a fork that edited the state at this checkpoint); otherwise ``ctx.state`` is
        left as it is.
        """
        entry = await self._journal.checkpoint(label, functools.partial(state_data, self))
        if entry is None:
            self.engine.hooks.checkpoint(self._driver.run, label)
        elif entry.result is not None and entry.result != state_data(self):
            self.state = self._driver.workflow.state_model.model_validate(copy_json(entry.result))

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` durably: the wake time is recorded, so a crash changes nothing.

        Long sleeps suspend the run (status ``sleeping``) and free the engine; a worker or
        ``engine.resume`` continues it when it is due.
        """
        await self._journal.sleep(seconds)

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """Return the payload of a ``name`` signal, suspending the run durably until one arrives.

        The payload is the workflow's declared model for that signal, else JSON. A signal
        sent before the wait is kept and taken here. With ``timeout`` (seconds) and no
        signal by then, raises :class:`~phaseledger.SignalTimeout`.
        """
        payload = await self._journal.signal(name, timeout)
        model = self._driver.workflow.signals.get(name)
        return model.model_validate(payload) if model else payload

# -- what the driver does with a phase visit's context ---------------------------------------


async def run_handler(ctx: Context[Any], handler: Callable[[Context[Any]], Any]) -> Any:
    """Run a phase handler with ``ctx``'s journal as the task's current journal."""
    token = CURRENT_JOURNAL.set(ctx._journal)
    try:
        return await handler(ctx)
    finally:
        CURRENT_JOURNAL.reset(token)


def check_consumed(ctx: Context[Any]) -> None:
    """Raise :class:`~phaseledger.NonDeterminismError` if the handler left recorded calls unmade."""
    ctx._journal.check_consumed()


def state_data(ctx: Context[Any]) -> dict[str, Any]:
    """The handler's state as JSON data (:class:`~phaseledger.SerializationError` if it cannot be)."""
    try:
        return ctx.state.model_dump(mode="json")
    except Exception as exc:
        raise SerializationError(f"the state of run {ctx.run_id!r} cannot be serialised: {exc}") from exc


_STEP_OPTIONS = ("retry", "breaker", "attempt_timeout", "total_timeout", "effect")


def _check_step_options(fn: Callable[..., Any], given: Mapping[str, Any]) -> None:
    """Refuse ``ctx.step`` options that ``fn`` could have been meant to receive, or of the wrong type."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature take no such keyword
        parameters = {}  # type: ignore[assignment]
    bound = fn.keywords if isinstance(fn, functools.partial) else {}  # the function's own, bound already
    for name in _STEP_OPTIONS:
        if given[name] is not None and name in parameters and name not in bound:
            raise TypeError(
                f"ctx.step(..., {name}=...) is ambiguous: {getattr(fn, '__name__', fn)!r} takes a parameter "
                f"named {name!r}, but {name}= is ctx.step's own option. Pass the function's argument with "
                f"functools.partial(fn, {name}=...) (or a lambda), and the step option, if any, as {name}= here"
            )
    retry, breaker = given["retry"], given["breaker"]
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"ctx.step(..., retry=...) takes a RetryPolicy, got {type(retry).__name__}: "
                        "to pass retry= to the function, use functools.partial")
    if breaker is not None and not isinstance(breaker, str):
        raise TypeError(f"ctx.step(..., breaker=...) takes a circuit breaker's name, got {type(breaker).__name__}")
    for name in ("attempt_timeout", "total_timeout"):
        value = given[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise TypeError(f"ctx.step(..., {name}=...) takes a number of seconds > 0, got {value!r}")
