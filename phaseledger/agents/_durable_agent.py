"""``DurableAgent``: one pydantic-ai agent run as a single-phase workflow.

For users who want a durable agent without defining phases: ``await durable.run(prompt,
run_id="...")`` starts a run; called again with the same ``run_id`` after a crash, it
resumes the run from its log (recorded model responses and tool results are not paid
again); once the run completed it returns the recorded output.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_ai.agent import AbstractAgent

from phaseledger.agents._capability import PhaseledgerDurability
from phaseledger.agents._scope import ON_UNIT_COMMIT
from phaseledger.agents.run import AgentNotDurable
from phaseledger.domain.errors import InvalidInput, PhaseledgerError, RunExists
from phaseledger.domain.retry import RetryPolicy
from phaseledger.domain.status import COMPLETED, FAILED
from phaseledger.domain.workflow import Workflow
from phaseledger.engine.engine import Engine

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from phaseledger.engine.context import Context
    from phaseledger.engine.views import Run, Usage

Callback = Callable[[str, str], Any]


class DurableAgentInput(BaseModel):
    """The recorded input of a ``DurableAgent`` run."""

    prompt: str | None = None


class AgentRunFailed(PhaseledgerError):
    """The durable agent's run failed; ``run`` is its view (``run.error`` says why)."""

    def __init__(self, run: Run) -> None:
        error = run.error or {}
        super().__init__(
            f"durable agent run {run.run_id!r} failed: {error.get('type', 'Error')}: {error.get('message', '')}. "
            f"Call run() again with run_id={run.run_id!r} to retry it (recorded work is kept)"
        )
        self.run = run


@dataclass
class DurableAgentResult:
    """What ``DurableAgent.run`` returns."""

    run_id: str
    output: Any
    """The agent's output (None while the run is suspended, e.g. waiting to retry)."""
    run: Run
    """The workflow run's view: status, version, steps."""
    result: AgentRunResult[Any] | None
    """pydantic-ai's result when the agent ran (live or replayed) in this call; None when the
    run had already completed, or is suspended."""

    @property
    def usage(self) -> Usage:
        """Tokens and requests of the run, and how many were served from the log on resumes."""
        return self.run.usage

    @property
    def status(self) -> str:
        """The run's status: ``completed``, or ``retrying``/``sleeping`` when it is suspended."""
        return self.run.status


class DurableAgent:
    """Run a pydantic-ai agent durably as a one-phase workflow named ``agent:<agent name>``.

    Args:
        agent: An agent with the :class:`PhaseledgerDurability` capability.
        engine: An :class:`~phaseledger.Engine`, or a store URL for an engine of its own
            (default ``$PHASELEDGER_STORE``, then ``sqlite:///phaseledger.db``).
        checkpoint_every_n_steps: Commit every N journaled units (1: each unit).
        retry: Retry policy of the agent's model requests and tool calls (unless the
            capability sets its own).
        on_checkpoint: Called with ``(run_id, label)`` after each commit of journaled
            units (the label is the unit's name) and with ``"completed"`` at the end.
        on_resume: Called with ``(run_id, reason)`` when ``run`` resumes an existing run.
        version: The workflow version (bump it when the agent changes under running runs).
    """

    def __init__(
        self,
        agent: AbstractAgent[Any, Any],
        *,
        engine: Engine | str | None = None,
        checkpoint_every_n_steps: int = 1,
        retry: RetryPolicy | None = None,
        on_checkpoint: Callback | None = None,
        on_resume: Callback | None = None,
        version: int = 1,
    ) -> None:
        capability = PhaseledgerDurability.from_agent(agent)
        if capability is None:
            raise AgentNotDurable(
                f"DurableAgent needs an agent with the PhaseledgerDurability capability; agent {agent.name!r} has "
                "none: build it with Agent(..., name='...', capabilities=[PhaseledgerDurability()])"
            )
        self.agent = agent
        self.name = capability.name
        self._owns_engine = not isinstance(engine, Engine)
        self.engine = engine if isinstance(engine, Engine) else Engine(engine)
        self.on_checkpoint = on_checkpoint
        self.on_resume = on_resume
        self._kwargs: dict[str, dict[str, Any]] = {}
        self._results: dict[str, AgentRunResult[Any]] = {}
        self.workflow: Workflow[DurableAgentInput] = Workflow(
            f"agent:{self.name}", state=DurableAgentInput, version=version, retry=retry,
            checkpoint_every_n_steps=checkpoint_every_n_steps,
            description=f"one durable run of pydantic-ai agent {self.name!r}",
        )
        self.workflow.phase("run", initial=True, final=True)(self._run_phase)
        self.engine.register(self.workflow)

    async def _run_phase(self, ctx: Context[DurableAgentInput]) -> Any:
        kwargs = self._kwargs.get(ctx.run_id, {})
        token = ON_UNIT_COMMIT.set(self.on_checkpoint)
        try:
            result = await ctx.run_agent(self.agent, ctx.state.prompt, **kwargs)
        finally:
            ON_UNIT_COMMIT.reset(token)
        self._results[ctx.run_id] = result
        return result.output

    async def run(self, user_prompt: str | None = None, *, run_id: str | None = None, **kwargs: Any) -> DurableAgentResult:
        """Run the agent on ``user_prompt`` as run ``run_id``, or resume that run if it exists.

        ``kwargs`` go to ``agent.run`` (``deps``, ``model_settings``, ...); they are not
        recorded, so pass the same ones when resuming. Raises :class:`AgentRunFailed` when
        the run fails and :class:`~phaseledger.InvalidInput` when an existing run was started
        with another prompt.
        """
        run_id = run_id or str(uuid.uuid4())
        self._kwargs[run_id] = kwargs
        try:
            try:
                view = await self.engine.run(self.workflow, DurableAgentInput(prompt=user_prompt), run_id=run_id)
            except RunExists:
                view = await self._continue(run_id, user_prompt)
            result = self._results.pop(run_id, None)
        finally:
            self._kwargs.pop(run_id, None)
            self._results.pop(run_id, None)
        if view.status == FAILED:
            raise AgentRunFailed(view)
        if view.status == COMPLETED and self.on_checkpoint is not None and result is not None:
            self.on_checkpoint(run_id, "completed")
        output = view.output if view.status == COMPLETED else None
        return DurableAgentResult(run_id=run_id, output=output, run=view, result=result)

    async def _continue(self, run_id: str, user_prompt: str | None) -> Run:
        existing = await self.engine.store.call(self.engine.get, run_id)
        if (existing.workflow, existing.workflow_version) != self.workflow.key:
            raise RunExists(run_id)
        recorded = existing.state.prompt if isinstance(existing.state, DurableAgentInput) else None
        if existing.status != COMPLETED and recorded != user_prompt:
            raise InvalidInput(
                f"run {run_id!r} was started with the prompt {recorded!r}, not {user_prompt!r}: "
                "resume it with the same prompt, or start a run with another run_id"
            )
        if existing.status == COMPLETED:
            return existing
        reason = "retry" if existing.status == FAILED else "recover"
        if self.on_resume is not None:
            self.on_resume(run_id, reason)
        if existing.status == FAILED:
            return await self.engine.retry(run_id)
        return await self.engine.resume(run_id)

    def close(self) -> None:
        """Close the engine if this ``DurableAgent`` created it."""
        if self._owns_engine:
            self.engine.close()
