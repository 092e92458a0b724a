"""Circuit breakers: named, shared by every run of an engine, refusing calls while open."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from phaseledger import CircuitBreaker, CircuitOpen, Context, Engine, RetryPolicy, Workflow


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_at_the_threshold_probes_once_and_closes_on_success() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("llm", failure_threshold=3, reset_timeout=10.0, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 4.0
    with pytest.raises(CircuitOpen) as refused:
        breaker.before_call()
    assert refused.value.breaker == "llm" and refused.value.retry_in == pytest.approx(6.0)
    assert "'llm' is open" in str(refused.value)

    clock.now += 6.0
    assert breaker.state == "half_open"
    breaker.before_call()  # the probe goes through
    with pytest.raises(CircuitOpen) as during_probe:
        breaker.before_call()  # everyone else waits for the probe
    assert during_probe.value.retry_in == pytest.approx(1.0)
    breaker.record_success()
    assert breaker.state == "closed"
    breaker.before_call()


def test_a_failed_probe_reopens_and_an_abandoned_probe_is_given_up() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("llm", failure_threshold=1, reset_timeout=10.0, clock=clock)
    breaker.before_call()
    breaker.record_failure()
    clock.now += 10.0
    breaker.before_call()
    breaker.record_failure()  # the probe failed: open for another reset_timeout
    assert breaker.state == "open"
    clock.now += 10.0
    breaker.before_call()  # a probe whose task is then cancelled never reports back
    clock.now += 5.0
    with pytest.raises(CircuitOpen):
        breaker.before_call()
    clock.now += 5.0
    breaker.before_call()  # after reset_timeout another call may probe
    assert breaker.probing


def test_breakers_are_named_and_shared_per_engine() -> None:
    one, other = Engine("memory://"), Engine("memory://")
    assert one.breaker("openai") is one.breaker("openai")
    assert one.breaker("openai") is not one.breaker("anthropic")
    assert one.breaker("openai") is not other.breaker("openai")
    configured = CircuitBreaker("openai", failure_threshold=2)
    assert Engine("memory://", breakers={"openai": configured}).breaker("openai") is configured


class S(BaseModel):
    answer: str = ""


class Provider:
    """A provider that fails its first ``failures`` calls; notes the breaker state of each call."""

    def __init__(self, breaker: CircuitBreaker, failures: int) -> None:
        self.breaker = breaker
        self.failures = failures
        self.calls: list[str] = []

    async def complete(self, prompt: str) -> str:
        self.calls.append("probe" if self.breaker.probing else self.breaker.state)
        if len(self.calls) <= self.failures:
            raise ConnectionError("provider unavailable")
        await asyncio.sleep(0.01)  # other runs hit the breaker while this call is in flight
        return f"answer to {prompt}"


async def test_concurrent_runs_share_one_breaker_and_wait_for_the_probe() -> None:
    breaker = CircuitBreaker("provider", failure_threshold=2, reset_timeout=0.5)
    provider = Provider(breaker, failures=2)
    wf = Workflow("ask", state=S)

    @wf.phase(initial=True, final=True)
    async def ask(ctx: Context[S]) -> str:
        return await ctx.step(
            "complete", provider.complete, ctx.run_id, breaker="provider",
            retry=RetryPolicy(max_attempts=2, initial_delay=0.02, backoff=1.0, jitter=False),
        )

    engine = Engine("memory://", breakers={"provider": breaker})
    runs = await asyncio.gather(*(engine.run(wf, run_id=f"run-{i}") for i in range(6)))

    assert [r.status for r in runs] == ["completed"] * 6
    assert [r.output for r in runs] == [f"answer to run-{i}" for i in range(6)]
    # Two real failures opened the breaker; nothing reached the provider while it was open:
    # one probe went through when it half-opened, then every run got its answer.
    assert provider.calls.count("open") == 0
    assert provider.calls.count("probe") == 1
    assert len(provider.calls) == 2 + 6
    refusals = [
        e.data for r in runs for e in engine.history(r.run_id)
        if e.type == "StepAttemptFailed" and e.data["error_type"] == "CircuitOpen"
    ]
    assert refusals and all(f["retryable"] and f["retry_at"] for f in refusals)
    # The two runs whose calls failed were refused on their second attempt and still
    # completed with max_attempts=2: a refusal uses up no attempt.
    for run in runs[:2]:
        failed = [e.data for e in engine.history(run.run_id) if e.type == "StepAttemptFailed"]
        assert failed[0]["error_type"] == "ConnectionError" and failed[0]["attempt"] == 1
        assert [f["error_type"] for f in failed[1:]] and {f["error_type"] for f in failed[1:]} == {"CircuitOpen"}
        assert {f["attempt"] for f in failed[1:]} == {2}
    assert breaker.state == "closed"
