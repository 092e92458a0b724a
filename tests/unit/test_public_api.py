"""The public API is pinned: a name added or removed here is a deliberate change."""

from __future__ import annotations

import inspect

import phaseledger
import phaseledger.projections
import phaseledger.testing

PUBLIC = {
    "AgentNotDurable", "AgentRunFailed", "Checkpoint", "CheckpointNotFound", "CircuitBreaker", "CircuitOpen",
    "CompactionReport", "ConcurrencyConflict", "Context", "CorruptEvent", "DeadlineExceeded", "DecryptionFailed", "Difference",
    "Divergence", "Driving", "DurableAgent", "DurableAgentResult", "EncryptionSetupError", "Engine", "ForkInfo",
    "ForkPoint", "HistoryCompacted", "InvalidInput", "InvalidToken", "InvalidTransition", "JournalEntry", "LeaseLost",
    "Lineage", "NO_RETRY", "NonDeterminismError", "Phase", "PhaseledgerDurability", "PhaseledgerError",
    "RecordedError", "RecordedEvent", "RetentionPolicy", "RetentionReport", "RetryPolicy", "Run", "RunAt", "RunBusy",
    "RunComparison", "RunExists", "RunFinished", "RunNotFinished", "RunNotFound", "RunSide", "SUPPORTED_PYDANTIC_AI",
    "SerializationError", "SignalTimeout", "StepFailed", "StepTimeout", "Store", "StoreUnavailable",
    "TokenKeyMissing", "TrailItem", "UnknownWorkflow", "UnsupportedPydanticAI", "Usage", "Worker",
    "WorkerAlreadyRunning", "WorkerStats", "Workflow", "WorkflowDefinitionError", "WorkflowRun",
    "generate_cipher_key", "idempotency_key", "run_worker"
}


def test_the_public_names_are_pinned() -> None:
    assert set(phaseledger.__all__) == PUBLIC
    assert len(phaseledger.__all__) == len(PUBLIC), "a name is listed twice in __all__"


def test_every_public_name_resolves_and_says_what_it_is_for() -> None:
    for module in (phaseledger, phaseledger.projections, phaseledger.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert (value.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


def test_every_exception_a_user_can_hit_derives_from_the_root_error() -> None:
    # The testing kit's verdicts (ReplayMismatch, CrashCheckFailed) are AssertionErrors on
    # purpose: test runners report them as failed checks, not as errors.
    for module in (phaseledger, phaseledger.projections, phaseledger.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException) and not issubclass(value, AssertionError):
                assert issubclass(value, phaseledger.PhaseledgerError), f"{module.__name__}.{name}"
