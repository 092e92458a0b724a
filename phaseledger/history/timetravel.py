"""Time travel over a run's log: checkpoints, the run at any version, resume tokens, forks, lineage.

Everything here reads the event log; only :meth:`TimeTravel.fork` writes, and it writes a
new run. The engine's methods (``engine.checkpoints``, ``engine.state_at``,
``engine.fork``, ...) delegate to a :class:`TimeTravel` bound to the engine.

Forks copy. A fork's log starts with copies of the source's events up to the fork point
(the same event types and payloads, under the fork's run id, with their original
timestamps), its ``RunStarted.parent`` names the source run and version, and a
``RunResumed(reason="fork")`` marks where the fork's own history begins. Copying keeps
every run self-contained: loading, resuming, projecting or compacting a fork never
reads its parent, and a parent can be compacted or deleted without breaking its forks.
The cost is storage proportional to the copied prefix; ``engine.compact`` reclaims it
once the fork finishes.

Because the copies include the journal of the phase visit in progress at the fork
point, the fork's handler replays those recorded model responses, tool results and
steps from the log (never calling them again, never paying again) and runs live from
the fork point on. Usage recorded on copied events was paid by the parent: tools that
sum tokens across runs should skip events with ``version <= parent["version"]`` (the
:class:`~phaseledger.history.compare.RunComparison` reports it as ``inherited``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from phaseledger.domain.errors import (
    CheckpointNotFound,
    ConcurrencyConflict,
    HistoryCompacted,
    InvalidInput,
    InvalidToken,
    RunExists,
    RunNotFound,
)
from phaseledger.domain.ids import MAX_ID_LENGTH, validate_run_id
from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.domain.status import COMPLETED, FAILED
from phaseledger.domain.values import copy_json, encode_value
from phaseledger.engine.views import Run, run_view
from phaseledger.history.tokens import TokenClaims, looks_like_token, make_token, read_token, store_identity

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine



# -- views ------------------------------------------------------------------------------


class Checkpoint(BaseModel):
    """A point of a run's log where its state was recorded.

    Automatic checkpoints are the phase entries (``kind="phase"``, labelled with the
    phase); explicit ones come from ``await ctx.checkpoint(label)``.
    """

    id: str
    """``v<version>``: pass it to ``engine.checkpoint``, ``engine.fork(at=...)`` or ``resume_token(at=...)``."""
    run_id: str
    kind: Literal["phase", "explicit"]
    label: str
    """The phase entered (automatic) or the label given to ``ctx.checkpoint``."""
    phase: str
    """The phase the run was in."""
    version: int
    """The version of the event that recorded it."""
    time: datetime
    state: Any = None
    """The state recorded (a model of the workflow's state class when it is registered);
    filled by ``engine.checkpoint``, None in listings."""


class JournalEntry(BaseModel):
    """A call recorded in the current phase visit, served from the log on replay."""

    key: str
    seq: int
    name: str
    kind: str
    result: Any = None
    """The recorded result as JSON (a model's fields when ``result_type`` names a model)."""
    result_type: str | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


class RunAt(Run):
    """A run rebuilt as it stood right after the event at ``version``."""

    event: str
    """The type of the event at this version."""
    at: datetime
    """When that event was recorded."""
    journal: list[JournalEntry] = Field(default_factory=list)
    """The calls recorded in the phase visit in progress, in order."""
    inbox: list[dict[str, Any]] = Field(default_factory=list)
    """Signals received and not taken yet."""
    recorded_state: Any = None
    """The state as last recorded at or before this version: the latest explicit
    checkpoint of the phase visit, else the phase-entry (or final) state."""


class ForkPoint(BaseModel):
    """Where a fork branched: the source run and the version its copy stops at."""

    run_id: str
    version: int
    exists: bool = True
    """False when that run has since been deleted by retention."""


class ForkInfo(BaseModel):
    """A run forked from another one."""

    run_id: str
    parent_run_id: str
    version: int
    """The parent's version the fork branched at."""
    forked_on: datetime | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


class Lineage(BaseModel):
    """A run's family: the chain of runs it was forked from and the forks made of it."""

    run_id: str
    ancestors: list[ForkPoint] = Field(default_factory=list)
    """Parent first, then the parent's parent, up to the original run."""
    children: list[ForkInfo] = Field(default_factory=list)
    """Runs forked directly from this one."""
    descendants: list[ForkInfo] = Field(default_factory=list)
    """Every run forked from this one or from its forks, in the order they were started."""

    @property
    def parent(self) -> ForkPoint | None:
        """The run and version this run was forked from (None for an original run)."""
        return self.ancestors[0] if self.ancestors else None


# -- helpers ----------------------------------------------------------------------------


def _checkpoint_id(version: int) -> str:
    return f"v{version}"


class TimeTravel:
    """Time-travel operations of one engine (``engine.checkpoints()``, ``engine.fork()``, ...)."""

    def __init__(self, engine: Engine, token_key: bytes | None) -> None:
        self.engine = engine
        self.token_key = token_key
        """Signs resume tokens (``token_key=`` or ``$PHASELEDGER_TOKEN_KEY``); None: no tokens."""

    @property
    def store(self) -> Any:
        return self.engine.store

    def _state_model(self, run: WorkflowRun | None = None, workflow: str | None = None,
                     version: int | None = None) -> type[BaseModel] | None:
        key = (run.workflow, run.workflow_version) if run is not None else (workflow, version)
        wf = self.engine.registry.workflows.get(key)  # type: ignore[arg-type]
        return wf.state_model if wf is not None else None

    @staticmethod
    def _as_state(model: type[BaseModel] | None, data: Any) -> Any:
        if model is None or data is None:
            return copy_json(data)
        try:
            return model.model_validate(copy_json(data))
        except ValidationError:
            return copy_json(data)

    # -- checkpoints ---------------------------------------------------------------------

    def _scan_checkpoints(self, run_id: str) -> Iterator[tuple[Checkpoint, dict[str, Any]]]:
        phase = ""
        for event in self.store.events(run_id):
            if isinstance(event, WorkflowRun.PhaseEntered):
                phase = event.phase
                yield (
                    Checkpoint(id=_checkpoint_id(event.originator_version), run_id=run_id, kind="phase",
                               label=event.phase, phase=event.phase, version=event.originator_version,
                               time=event.timestamp),
                    event.state,
                )
            elif isinstance(event, WorkflowRun.CheckpointSaved):
                yield (
                    Checkpoint(id=_checkpoint_id(event.originator_version), run_id=run_id, kind="explicit",
                               label=event.label, phase=phase, version=event.originator_version,
                               time=event.timestamp),
                    event.state,
                )

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints in log order: every phase entry and every ``ctx.checkpoint``."""
        return [checkpoint for checkpoint, _ in self._scan_checkpoints(run_id)]

    def checkpoint(self, run_id: str, checkpoint_id: str | int) -> Checkpoint:
        """One checkpoint with its state: by id (``"v12"`` or ``12``) or by label (the latest).

        A label matches explicit checkpoints first, then phase entries of that phase.
        Raises :class:`CheckpointNotFound` naming the checkpoints there are.
        """
        found = list(self._scan_checkpoints(run_id))
        wanted = str(checkpoint_id)
        version = _parse_version(wanted)
        matches = [item for item in found if item[0].version == version] if version is not None else []
        if not matches and version is None:
            matches = [item for item in found if item[0].kind == "explicit" and item[0].label == wanted]
            matches = matches or [item for item in found if item[0].kind == "phase" and item[0].label == wanted]
        if not matches:
            listed = ", ".join(f"{c.id} ({c.label})" for c, _ in found[-10:]) or "none"
            raise CheckpointNotFound(
                f"run {run_id!r} has no checkpoint {checkpoint_id!r}; its latest checkpoints are: {listed} "
                "(engine.checkpoints(run_id) lists them all)"
            )
        checkpoint, state = matches[-1]
        run = self.store.load(run_id, version=1)
        return checkpoint.model_copy(update={"state": self._as_state(self._state_model(run), state)})

    # -- the run at any version ----------------------------------------------------------

    def _load_at(self, run_id: str, version: int) -> WorkflowRun:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidInput(f"version must be an int >= 1, got {version!r}")
        run = self.store.load(run_id, version=version)
        if run.version != version:
            head = self.store.load(run_id)
            if version > head.version:
                raise InvalidInput(
                    f"run {run_id!r} has {head.version} events; ask for a version from 1 to {head.version}"
                )
            raise HistoryCompacted(run_id, version, self.earliest_version(run_id))
        return run

    def earliest_version(self, run_id: str) -> int:
        """The earliest version after ``RunStarted`` that can still be rebuilt (2 unless compacted)."""
        later = self.store.events(run_id, gt=1, limit=1)
        return later[0].originator_version if later else 1

    def state_at(self, run_id: str, version: int) -> RunAt:
        """The run (phase, state, journal, status, usage) as it stood right after event ``version``.

        Raises :class:`RunNotFound`, :class:`InvalidInput` (no such version) or
        :class:`HistoryCompacted` (the events were removed by ``engine.compact``).
        """
        run = self._load_at(run_id, version)
        model = self._state_model(run)
        view = run_view(run, model)
        journal = sorted(
            (JournalEntry(key=key, seq=e.seq, name=e.name, kind=e.kind, result=copy_json(e.result),
                          result_type=e.result_type, error=e.error, usage=e.usage)
             for key, e in run.journal.items()),
            key=lambda entry: entry.seq,
        )
        recorded = run.phase_state
        checkpoints = [entry for entry in journal if entry.kind == "checkpoint" and entry.result is not None]
        if checkpoints and not run.finished:
            recorded = checkpoints[-1].result
        [event] = self.store.events(run_id, gt=version - 1, lte=version)
        return RunAt(
            **{name: getattr(view, name) for name in Run.model_fields},
            event=type(event).__name__, at=event.timestamp, journal=journal,
            inbox=[copy_json(signal._asdict()) for signal in run.inbox], recorded_state=self._as_state(model, recorded),
        )

    # -- resume tokens -------------------------------------------------------------------

    def resume_token(self, run_id: str, at: int | str | None = None) -> str:
        """A signed token naming the run and a version of its log (its head when ``at`` is None).

        ``at`` is a version or a checkpoint id/label. Raises :class:`TokenKeyMissing` when
        no key is configured.
        """
        head = self.store.load(run_id)
        version = head.version if at is None else self._resolve_at(run_id, at, head.version)
        return make_token(self.token_key, TokenClaims(run_id, version, store_identity(self.store)))

    def read_token(self, token: str) -> TokenClaims:
        """Verify a token for this engine's store; :class:`InvalidToken` when it is not valid here."""
        claims = read_token(self.token_key, token, store_identity(self.store))
        try:
            head = self.store.load(claims.run_id)
        except RunNotFound:
            raise InvalidToken(
                f"the resume token names run {claims.run_id!r}, which is not in this store (was it deleted?)"
            ) from None
        if head.version < claims.version:
            raise InvalidToken(
                f"the resume token names version {claims.version} of run {claims.run_id!r}, which has only "
                f"{head.version} events: the token does not belong to this run's log"
            )
        return claims

    def run_id_of(self, run_or_token: str) -> str:
        """The run id itself, or the run a valid token names."""
        if looks_like_token(run_or_token):
            return self.read_token(run_or_token).run_id
        return run_or_token

    def _resolve_at(self, run_id: str, at: int | str, head: int) -> int:
        if isinstance(at, bool) or not isinstance(at, (int, str)):
            raise InvalidInput(f"at= must be a version (int) or a checkpoint id or label (str), got {at!r}")
        if isinstance(at, int):
            if not 1 <= at <= head:
                raise InvalidInput(f"run {run_id!r} has {head} events; at= must be between 1 and {head}, got {at}")
            return at
        return self.checkpoint(run_id, at).version

    # -- forks ---------------------------------------------------------------------------

    async def fork(
        self,
        source: str,
        *,
        at: int | str | None = None,
        new_run_id: str | None = None,
        state: BaseModel | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        drive: bool = True,
    ) -> Run:
        """Branch a new run off ``source`` (a run id or a resume token) at a point of its log.

        See :meth:`phaseledger.Engine.fork`.
        """
        engine = self.engine
        if new_run_id is not None:
            validate_run_id(new_run_id, "new run id")
        if looks_like_token(source):
            claims = await engine.store.call(self.read_token, source)
            if at is not None:
                raise InvalidInput("give the fork point either in the token or as at=, not both")
            source_id, version = claims.run_id, claims.version
        else:
            source_id = validate_run_id(source)
            head = await engine.store.call(self.store.load, source_id)
            version = head.version if at is None else await engine.store.call(
                self._resolve_at, source_id, at, head.version
            )
        if version >= 2 and version == await engine.store.call(self._completion_version, source_id):
            version -= 1  # a completed run forks just before its completion: the final phase replays
        if version < 2:
            raise InvalidInput(
                f"cannot fork run {source_id!r} at version {version}: fork at version 2 (its first phase "
                "entry) or later"
            )
        events: list[WorkflowRun.Event] = await engine.store.call(self.store.events, source_id, lte=version)
        if [e.originator_version for e in events] != list(range(1, version + 1)):
            earliest = await engine.store.call(self.earliest_version, source_id)
            raise HistoryCompacted(source_id, version, earliest)
        started = events[0]
        assert isinstance(started, WorkflowRun.RunStarted)
        workflow = engine.registry.get(started.workflow, started.workflow_version)
        fork_at = events[-1]

        edited: dict[str, Any] | None = None
        if state is not None:
            if not isinstance(fork_at, (WorkflowRun.PhaseEntered, WorkflowRun.CheckpointSaved)):
                raise InvalidInput(
                    f"the state can only be edited at a checkpoint (a phase entry or ctx.checkpoint), and "
                    f"version {version} of run {source_id!r} is a {type(fork_at).__name__}; "
                    "engine.checkpoints(run_id) lists the checkpoints"
                )
            try:
                model = state if isinstance(state, workflow.state_model) else workflow.state_model.model_validate(
                    dict(state) if isinstance(state, Mapping) else state
                )
            except (ValidationError, TypeError) as exc:
                raise InvalidInput(f"the edited state does not fit {workflow.state_model.__qualname__}: {exc}") from exc
            edited = model.model_dump(mode="json")

        merged = dict((started.parent or {}).get("overrides") or {})
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise InvalidInput(f"overrides must be a mapping, got {type(overrides).__name__}")
            data, _ = encode_value(dict(overrides), "the fork's overrides")
            merged.update(data)

        suffix = f"-fork-{uuid.uuid4().hex[:8]}"
        new_id = new_run_id or source_id[:MAX_ID_LENGTH - len(suffix)] + suffix
        parent = {"run_id": source_id, "version": version, "forked_on": datetime.now(UTC).isoformat(),
                  "overrides": merged}
        fields = event_fields(started)
        fields["parent"] = parent
        run = WorkflowRun.begin(new_id, timestamp=started.timestamp, **fields)
        for event in events[1:]:
            run.trigger_event(type(event), timestamp=event.timestamp, **event_fields(event))
        if edited is not None:
            if isinstance(fork_at, WorkflowRun.PhaseEntered):
                run.trigger_event(
                    WorkflowRun.PhaseEntered, phase=fork_at.phase, from_phase=fork_at.phase, reason="fork",
                    attempt=run.attempts.get(fork_at.phase, 1), state=edited,
                )
            else:
                assert isinstance(fork_at, WorkflowRun.CheckpointSaved)
                run.trigger_event(
                    WorkflowRun.CheckpointSaved, seq=fork_at.seq, key=fork_at.key, label=fork_at.label, state=edited
                )
        reason = "retry" if run.status == FAILED else "fork"
        run.trigger_event(WorkflowRun.RunResumed, reason=reason)
        if drive:  # held before the fork is written, so no worker drives it meanwhile
            await engine.drives.take(new_id, steal=False)
        try:
            await engine.store.call(self.store.save, run)
        except BaseException as exc:
            await engine.drives.let_go(new_id, 0)
            if isinstance(exc, ConcurrencyConflict):
                raise RunExists(new_id) from None
            raise
        engine.hooks.resumed(run, "fork")
        if not drive:
            return run_view(run, workflow.state_model)
        return await engine.drives.drive(new_id, run)

    def _completion_version(self, run_id: str) -> int | None:
        run = self.store.load(run_id)
        return run.version if run.status == COMPLETED else None

    # -- lineage -------------------------------------------------------------------------

    def lineage(self, run_id: str) -> Lineage:
        """The runs ``run_id`` was forked from (nearest first) and the runs forked from it."""
        [started] = self.store.events(run_id, lte=1)
        ancestors: list[ForkPoint] = []
        parent = started.parent
        seen = {run_id}
        while parent and parent["run_id"] not in seen:
            seen.add(parent["run_id"])
            try:
                [above] = self.store.events(parent["run_id"], lte=1)
            except (RunNotFound, ValueError):
                ancestors.append(ForkPoint(run_id=parent["run_id"], version=parent["version"], exists=False))
                break
            ancestors.append(ForkPoint(run_id=parent["run_id"], version=parent["version"]))
            parent = above.parent
        forks: list[ForkInfo] = []
        for event in self.store.started_events():  # damaged runs' (unreadable) are passed over
            if event.parent:
                forked_on = event.parent.get("forked_on")
                forks.append(ForkInfo(
                    run_id=event.originator_id, parent_run_id=event.parent["run_id"],
                    version=event.parent["version"],
                    forked_on=datetime.fromisoformat(forked_on) if forked_on else None,
                    overrides=event.parent.get("overrides") or {},
                ))
        children = [f for f in forks if f.parent_run_id == run_id]
        family, descendants = {run_id}, []
        for fork in forks:  # forks are started after their parents, so one pass in log order suffices
            if fork.parent_run_id in family:
                family.add(fork.run_id)
                descendants.append(fork)
        return Lineage(run_id=run_id, ancestors=ancestors, children=children, descendants=descendants)


def _parse_version(text: str) -> int | None:
    digits = text[1:] if text[:1] in ("v", "V") else text
    return int(digits) if digits.isdigit() else None
