"""The public API is pinned: a name added or removed here is a deliberate change."""

from __future__ import annotations

import importlib
import inspect

import pytest

import phaseledger
import phaseledger.deploys
import phaseledger.projections
import phaseledger.testing

PUBLIC = {
    "AgentNotDurable", "AgentRunFailed", "Checkpoint", "CheckpointNotFound", "CircuitBreaker", "CircuitOpen",
    "CompactionReport", "ConcurrencyConflict", "Context", "CorruptEvent", "DeadlineExceeded", "DecryptionFailed", "Difference",
    "Divergence", "Driving", "DurableAgent", "DurableAgentResult", "EncryptionSetupError", "Engine", "ForkInfo",
    "ForkPoint", "HistoryCompacted", "InvalidInput", "InvalidToken", "InvalidTransition", "JournalEntry", "LeaseLost",
    "Lineage", "NO_RETRY", "NonDeterminismError", "Phase", "PhaseledgerDurability", "PhaseledgerError",
    "RecordedError", "RecordedEvent", "RetentionPolicy", "RetentionReport", "RetryPolicy", "Run", "RunAt", "RunBusy",
    "RunComparison", "RunExists", "RunWait", "RunFinished", "RunNotFinished", "RunNotFound", "RunSide", "SUPPORTED_PYDANTIC_AI",
    "SerializationError", "SignalTimeout", "StepFailed", "StepTimeout", "Store", "StoreUnavailable",
    "TokenKeyMissing", "TrailItem", "TransactionsUnsupported", "UnknownWorkflow", "UnsupportedPydanticAI", "Usage", "Worker",
    "WorkerAlreadyRunning", "WorkerStats", "Workflow", "WorkflowDefinitionError", "WorkflowRun",
    "generate_cipher_key", "idempotency_key", "run_worker",
    "CallInfo", "CheckReport", "RunCompatibility", "VersionUse", "check_deploy", "check_deploy_sync",
    "Effect", "EffectInDoubt", "InDoubt", "InDoubtPolicy", "NOT_HAPPENED",
}


SUBPACKAGES = {
    "phaseledger.agents": [
        "PYDANTIC_AI_VERSION", "SUPPORTED_PYDANTIC_AI", "TOOL_CONFIG_KEY", "AgentNotDurable", "AgentRunFailed",
        "DurableAgent", "DurableAgentResult", "PhaseledgerBackend", "PhaseledgerDurability", "UnitConfig",
        "UnsupportedPydanticAI", "check_pydantic_ai_version", "run_agent",
    ],
    "phaseledger.projections": [
        "SCHEMA_VERSION", "Failure", "FailureCount", "Follower", "PhaseDurations", "PhaseVisit", "ProjectionError",
        "ProjectionOutdated", "ProjectionReset", "ProjectionStatus", "ReportProjection", "Reports", "RunPage", "RunSummary",
        "SummaryReport", "TokenUsage", "WorkflowTotals", "ddl",
    ],
    "phaseledger.testing": [
        "CrashCheckFailed", "CrashHarness", "CrashHarnessError", "CrashReport", "KillPoint", "ReplayMismatch",
        "ReplayReport", "RunReport", "StepCalls", "check_replay", "check_replay_sync",
    ],
    "phaseledger.testing.crash": [
        "KILL_ENV", "KILL_KINDS", "LEDGER_ENV", "ChildOutcome", "CrashCheckFailed", "CrashHarness",
        "CrashHarnessError", "CrashReport", "KillPoint", "RunReport", "check_log", "child_main",
        "committed_step_keys", "fork_server_main", "load_workflows",
    ],
    "phaseledger.deploys": [
        "CallInfo", "CheckReport", "RunCompatibility", "Verdict", "VersionUse", "check_deploy", "check_deploy_sync",
    ],
    "phaseledger.testing.store_contract": ["StoreContract", "add_signals", "new_run"],
    "phaseledger.web": ["ACTIONS_SECRET_ENV_VAR", "WebUnavailable", "create_app", "require_web"],
    "phaseledger.cli": [
        "app", "call_name", "draw_diagram", "event_summary", "graphviz_missing", "main", "make_console",
        "print_error", "print_history", "token_counts",
    ],
}
"""Each public subpackage's names, in order."""


def _isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions (ruff's RUF022 order for ``__all__``)."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def test_the_public_names_are_pinned() -> None:
    assert set(phaseledger.__all__) == PUBLIC
    assert len(phaseledger.__all__) == len(PUBLIC), "a name is listed twice in __all__"


@pytest.mark.parametrize("package", ["phaseledger", *SUBPACKAGES])
def test_each_public_package_lists_its_names_sorted(package: str) -> None:
    names = importlib.import_module(package).__all__
    assert names == sorted(names, key=_isort_order), f"{package}.__all__ is not sorted (ruff --select RUF022 --fix)"
    if package in SUBPACKAGES:
        assert names == SUBPACKAGES[package]
    for name in names:
        getattr(importlib.import_module(package), name)


def test_every_public_name_resolves_and_says_what_it_is_for() -> None:
    for module in (phaseledger, phaseledger.deploys, phaseledger.projections, phaseledger.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert (value.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


def test_every_exception_a_user_can_hit_derives_from_the_root_error() -> None:
    # The testing kit's verdicts (ReplayMismatch, CrashCheckFailed) are AssertionErrors on
    # purpose: test runners report them as failed checks, not as errors.
    for module in (phaseledger, phaseledger.deploys, phaseledger.projections, phaseledger.testing):
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and issubclass(value, BaseException) and not issubclass(value, AssertionError):
                assert issubclass(value, phaseledger.PhaseledgerError), f"{module.__name__}.{name}"
