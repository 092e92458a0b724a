"""pydantic-ai's errors are classified by default: transient ones retry, permanent ones fail fast."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from pydantic_ai.exceptions import (
    ContentFilterError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelContextWindowExceededError,
    ModelHTTPError,
    ModelQuotaExceededError,
    ModelRateLimitError,
    ModelRequestTimeout,
    ModelServerError,
    ModelTimeoutError,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)

from phaseledger import Context, Engine, RetryPolicy, Workflow
from phaseledger.domain.retry import is_permanent_error

POLICY = RetryPolicy(max_attempts=4, initial_delay=0.0, jitter=False)

RETRIED = [
    pytest.param(ModelHTTPError(429, "gpt-x", {"error": "rate limited"}), id="http-429"),
    pytest.param(ModelHTTPError(408, "gpt-x"), id="http-408"),
    *[pytest.param(ModelHTTPError(s, "gpt-x", "upstream"), id=f"http-{s}") for s in (500, 502, 503, 504, 529)],
    pytest.param(ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="gpt-x"), id="categorized-429"),
    pytest.param(ModelHTTPError.for_category(ModelServerError, status_code=500, model_name="gpt-x"), id="categorized-500"),
    pytest.param(ModelRequestTimeout("gpt-x", 30.0), id="request-timeout"),
    pytest.param(ModelConnectionError("gpt-x", "connection refused"), id="model-connection"),
    pytest.param(ModelTimeoutError("gpt-x", "read timed out"), id="model-timeout"),
    pytest.param(TimeoutError("timed out"), id="TimeoutError"),
    pytest.param(ConnectionResetError("reset by peer"), id="ConnectionResetError"),
    pytest.param(ConnectionError("refused"), id="ConnectionError"),
    pytest.param(UnexpectedModelBehavior("invalid JSON from the model"), id="unexpected-behaviour"),
]

NOT_RETRIED = [
    *[pytest.param(ModelHTTPError(s, "gpt-x", {"error": "bad"}), id=f"http-{s}") for s in (400, 401, 403, 404, 409, 422)],
    pytest.param(ModelHTTPError.for_category(ModelQuotaExceededError, status_code=429, model_name="gpt-x"), id="quota-on-429"),
    pytest.param(ModelHTTPError.for_category(ModelAuthenticationError, status_code=401, model_name="gpt-x"), id="categorized-401"),
    pytest.param(ModelContextWindowExceededError("gpt-x", "prompt too long"), id="context-window"),
    pytest.param(ContentFilterError("filtered"), id="content-filter"),
    pytest.param(UsageLimitExceeded("request_limit of 3 exceeded"), id="usage-limit"),
    pytest.param(UserError("tool misconfigured"), id="user-error"),
]


@pytest.mark.parametrize("error", RETRIED)
def test_transient_provider_errors_are_retryable(error: BaseException) -> None:
    assert not is_permanent_error(error)
    assert POLICY.is_retryable(error)


@pytest.mark.parametrize("error", NOT_RETRIED)
def test_permanent_provider_errors_fail_fast(error: BaseException) -> None:
    assert is_permanent_error(error)
    assert not POLICY.is_retryable(error)


def test_an_explicit_retryable_flag_and_give_up_on_win() -> None:
    assert not RetryPolicy(give_up_on=(ModelAPIError,)).is_retryable(ModelHTTPError(503, "gpt-x"))
    assert not RetryPolicy(retry_on=(ConnectionError,)).is_retryable(ModelHTTPError(503, "gpt-x"))


class S(BaseModel):
    pass


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        pytest.param(ModelHTTPError(503, "gpt-x", "overloaded"), 4, id="503-retried"),
        pytest.param(ModelHTTPError(401, "gpt-x", "bad key"), 1, id="401-fails-fast"),
        pytest.param(UsageLimitExceeded("total_tokens_limit exceeded"), 1, id="usage-limit-fails-fast"),
    ],
)
async def test_steps_raising_pydantic_ai_errors_are_retried_as_classified(error: Exception, attempts: int) -> None:
    calls: list[int] = []

    def call_model() -> None:
        calls.append(1)
        raise error

    wf = Workflow("model", state=S)

    @wf.phase(initial=True, final=True)
    async def only(ctx: Context[S]) -> None:
        await ctx.step("model", call_model, retry=POLICY)

    engine = Engine("memory://")
    run = await engine.run(wf, run_id="m")
    assert run.status == "failed" and run.error is not None
    assert type(error).__name__ in run.error["message"] and "StepFailed" == run.error["type"]
    assert len(calls) == attempts
    failures = [e.data for e in engine.history("m") if e.type == "StepAttemptFailed"]
    assert [f["attempt"] for f in failures] == list(range(1, attempts + 1))
    assert failures[0]["retryable"] is (attempts > 1)
    assert failures[0]["error_type"] == type(error).__name__
