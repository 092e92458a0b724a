"""Agent units retry as ``ctx.step`` does: a provider's Retry-After is honoured, open-breaker refusals are free.

Model requests and tool calls go through the same journal primitive as steps, so the
semantics pinned for steps in ``test_retry_policies.py``, ``test_breaker.py`` and
``tests/integration/test_timeouts.py`` hold for them too.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.exceptions import ModelHTTPError
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from phaseledger import CircuitBreaker, Context, DeadlineExceeded, Engine, RetryPolicy, Workflow
from phaseledger.agents import PhaseledgerDurability
from tests.test_agent_kit import ScriptState
from tests.unit.test_agents_features import one_phase

NO_BACKOFF = RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False)


class RateLimited(ConnectionError):
    """A retryable provider error asking to wait ``retry_after`` seconds (as pydantic-ai's carry it)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"slow down for {retry_after}s")
        self.retry_after = retry_after


def failed_attempts(engine: Engine, run_id: str) -> list[tuple[dict[str, Any], datetime]]:
    return [(e.data, e.timestamp) for e in engine.history(run_id) if e.type == "StepAttemptFailed"]


def waited(attempt: dict[str, Any], at: datetime) -> float:
    return (datetime.fromisoformat(attempt["retry_at"]) - at).total_seconds()


def model_then_answer(failure: Exception) -> FunctionModel:
    """A model whose first request fails with ``failure``; the next one answers."""
    failures = [failure]

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if failures:
            raise failures.pop()
        return ModelResponse(parts=[TextPart("answered")])

    return FunctionModel(respond, model_name="limited")


def tool_caller() -> FunctionModel:
    """A model that calls tool ``fetch`` once, then answers with its result."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if len(messages) == 1:
            return ModelResponse(parts=[ToolCallPart("fetch", {"url": "u"}, tool_call_id="c1")])
        return ModelResponse(parts=[TextPart(str(messages[-1].parts[0].content))])

    return FunctionModel(respond)


def fetching_agent(name: str, failures: list[Exception], calls: list[str], config: dict[str, Any]) -> Agent[Any, str]:
    """An agent whose tool ``fetch`` fails with ``failures`` (in order), then returns a page."""
    agent = Agent(tool_caller(), name=name, capabilities=[PhaseledgerDurability()])

    @agent.tool_plain(metadata={"phaseledger": config})
    def fetch(url: str) -> str:
        calls.append(url)
        if failures:
            raise failures.pop(0)
        return f"page {url}"

    return agent


@pytest.mark.parametrize(("retry_after", "max_delay", "low", "high"), [(30.0, 60.0, 25, 30), (3600.0, 10.0, 5, 10)])
async def test_a_model_request_honours_the_providers_retry_after_within_max_delay(
    retry_after: float, max_delay: float, low: float, high: float
) -> None:
    limited = ModelHTTPError(429, "limited", body="rate limited", retry_after=retry_after)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.0, max_delay=max_delay, jitter=False)
    agent = Agent(model_then_answer(limited), name="polite", capabilities=[PhaseledgerDurability(model_retry=policy)])
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow], max_inline_wait=0.0) as engine:
        run = await engine.run(workflow, {}, run_id="p")
        ((attempt, at),) = failed_attempts(engine, "p")
    assert run.status == "retrying"  # suspended until the provider's time, not retried at once
    assert attempt["error_type"] == "ModelHTTPError" and attempt["attempt"] == 1
    assert low < waited(attempt, at) <= high


async def test_a_tool_call_honours_the_providers_retry_after() -> None:
    calls: list[str] = []
    agent = fetching_agent("polite-tools", [RateLimited(30.0)], calls, {"retry": NO_BACKOFF})
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow], max_inline_wait=0.0) as engine:
        run = await engine.run(workflow, {}, run_id="t")
        ((attempt, at),) = failed_attempts(engine, "t")
    assert run.status == "retrying" and calls == ["u"]
    assert attempt["error_type"] == "RateLimited" and 25 < waited(attempt, at) <= 30


async def test_an_open_breaker_refusing_a_model_request_uses_up_no_attempt() -> None:
    # The first request fails and opens the breaker; the second attempt is refused while it
    # is open, then runs as the probe once it half-opens: with two attempts allowed, the
    # request still succeeds, because the refusal never reached the provider.
    breaker = CircuitBreaker("provider", failure_threshold=1, reset_timeout=0.2)
    agent = Agent(
        model_then_answer(ModelHTTPError(503, "limited", body="overloaded")), name="guarded",
        capabilities=[PhaseledgerDurability(model_retry=NO_BACKOFF, model_breaker="provider")],
    )
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow], breakers={"provider": breaker}) as engine:
        run = await engine.run(workflow, {}, run_id="b")
        attempts = [a for a, _ in failed_attempts(engine, "b")]
    assert run.status == "completed" and run.output == "answered"
    assert [(a["error_type"], a["attempt"], a["retryable"]) for a in attempts] == [
        ("ModelHTTPError", 1, True), ("CircuitOpen", 2, True),
    ]
    assert breaker.state == "closed"


async def test_an_open_breaker_refusing_a_tool_call_uses_up_no_attempt() -> None:
    calls: list[str] = []
    breaker = CircuitBreaker("pages", failure_threshold=1, reset_timeout=0.2)
    agent = fetching_agent("guarded-tools", [ConnectionError("reset by peer")], calls,
                           {"retry": NO_BACKOFF, "breaker": "pages"})
    workflow = one_phase(agent)
    async with Engine("memory://", workflows=[workflow], breakers={"pages": breaker}) as engine:
        run = await engine.run(workflow, {}, run_id="b")
        attempts = [a for a, _ in failed_attempts(engine, "b")]
    assert run.status == "completed" and run.output == "page u"
    assert calls == ["u", "u"]  # the failure and the probe: the refusal reached nothing
    assert [(a["error_type"], a["attempt"]) for a in attempts] == [("ConnectionError", 1), ("CircuitOpen", 2)]
    assert breaker.state == "closed"


async def test_a_phase_deadline_bounds_a_model_request_in_flight() -> None:
    async def hang(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        await asyncio.sleep(30)
        return ModelResponse(parts=[TextPart("too late")])

    agent = Agent(FunctionModel(hang), name="slow", capabilities=[PhaseledgerDurability(model_retry=NO_BACKOFF)])
    workflow = Workflow("bounded", state=ScriptState, timeout=0.3)

    @workflow.phase(initial=True, final=True)
    async def run(ctx: Context[ScriptState]) -> Any:
        try:
            return (await ctx.run_agent(agent, "go")).output
        except DeadlineExceeded as exc:
            return f"gave up: {exc.scope} deadline"

    async with Engine("memory://", workflows=[workflow]) as engine:
        started = time.monotonic()
        view = await engine.run(workflow, {}, run_id="d")
        assert time.monotonic() - started < 10
        assert failed_attempts(engine, "d") == []  # the deadline is not an attempt's failure: nothing to retry
    assert view.status == "completed" and view.output == "gave up: run deadline"
