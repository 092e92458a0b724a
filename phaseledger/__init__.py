"""phaseledger: an event-sourced state machine engine for durable, multi-phase AI-agent workflows.

Define a workflow as phases over a pydantic state, run it on an event store, and a run
that stops anywhere resumes from its log: recorded steps and model calls never run again.
"""

from typing import TYPE_CHECKING, Any

from phaseledger.domain.errors import (
    CheckpointNotFound,
    CircuitOpen,
    ConcurrencyConflict,
    CorruptEvent,
    DeadlineExceeded,
    DecryptionFailed,
    EffectInDoubt,
    EncryptionSetupError,
    HistoryCompacted,
    InvalidInput,
    InvalidToken,
    InvalidTransition,
    LeaseLost,
    NonDeterminismError,
    PhaseledgerError,
    RunBusy,
    RunExists,
    RunFinished,
    RunNotFinished,
    RunNotFound,
    SerializationError,
    SignalTimeout,
    StepFailed,
    StepTimeout,
    StoreUnavailable,
    TokenKeyMissing,
    TransactionsUnsupported,
    UnknownWorkflow,
    WorkerAlreadyRunning,
    WorkflowDefinitionError,
)
from phaseledger.domain.effects import NOT_HAPPENED, Effect, InDoubtPolicy
from phaseledger.domain.recorded_errors import RecordedError
from phaseledger.domain.retry import NO_RETRY, RetryPolicy
from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.workflow import Phase, Workflow
from phaseledger.deploys import CallInfo, CheckReport, RunCompatibility, VersionUse, check_deploy, check_deploy_sync
from phaseledger.engine.advance import RunWait
from phaseledger.engine.breaker import CircuitBreaker
from phaseledger.engine.context import Context
from phaseledger.engine.engine import Engine
from phaseledger.engine.journal import idempotency_key
from phaseledger.engine.views import InDoubt, RecordedEvent, Run, Usage
from phaseledger.history.compare import Difference, Divergence, RunComparison, RunSide, TrailItem
from phaseledger.history.retention import CompactionReport, RetentionPolicy, RetentionReport
from phaseledger.history.timetravel import Checkpoint, ForkInfo, ForkPoint, JournalEntry, Lineage, RunAt
from phaseledger.store.cipher import generate_cipher_key
from phaseledger.store.eventstore import Store
from phaseledger.store.leasebook import Driving
from phaseledger.workers.service import run_worker
from phaseledger.workers.worker import Worker, WorkerStats

if TYPE_CHECKING:
    from phaseledger.agents import (
        SUPPORTED_PYDANTIC_AI,
        AgentNotDurable,
        AgentRunFailed,
        DurableAgent,
        DurableAgentResult,
        PhaseledgerDurability,
        UnsupportedPydanticAI,
    )

_AGENT_NAMES = frozenset({
    "SUPPORTED_PYDANTIC_AI", "AgentNotDurable", "AgentRunFailed", "DurableAgent", "DurableAgentResult",
    "PhaseledgerDurability", "UnsupportedPydanticAI",
})


def __getattr__(name: str) -> Any:
    """Import the durable-agent names on first use: pydantic-ai loads only when agents are used."""
    if name in _AGENT_NAMES:
        from phaseledger import agents

        return getattr(agents, name)
    raise AttributeError(f"module 'phaseledger' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "NOT_HAPPENED",
    "NO_RETRY",
    "SUPPORTED_PYDANTIC_AI",
    "AgentNotDurable",
    "AgentRunFailed",
    "CallInfo",
    "CheckReport",
    "Checkpoint",
    "CheckpointNotFound",
    "CircuitBreaker",
    "CircuitOpen",
    "CompactionReport",
    "ConcurrencyConflict",
    "Context",
    "CorruptEvent",
    "DeadlineExceeded",
    "DecryptionFailed",
    "Difference",
    "Divergence",
    "Driving",
    "DurableAgent",
    "DurableAgentResult",
    "Effect",
    "EffectInDoubt",
    "EncryptionSetupError",
    "Engine",
    "ForkInfo",
    "ForkPoint",
    "HistoryCompacted",
    "InDoubt",
    "InDoubtPolicy",
    "InvalidInput",
    "InvalidToken",
    "InvalidTransition",
    "JournalEntry",
    "LeaseLost",
    "Lineage",
    "NonDeterminismError",
    "Phase",
    "PhaseledgerDurability",
    "PhaseledgerError",
    "RecordedError",
    "RecordedEvent",
    "RetentionPolicy",
    "RetentionReport",
    "RetryPolicy",
    "Run",
    "RunAt",
    "RunBusy",
    "RunComparison",
    "RunCompatibility",
    "RunExists",
    "RunFinished",
    "RunNotFinished",
    "RunNotFound",
    "RunSide",
    "RunWait",
    "SerializationError",
    "SignalTimeout",
    "StepFailed",
    "StepTimeout",
    "Store",
    "StoreUnavailable",
    "TokenKeyMissing",
    "TrailItem",
    "TransactionsUnsupported",
    "UnknownWorkflow",
    "UnsupportedPydanticAI",
    "Usage",
    "VersionUse",
    "Worker",
    "WorkerAlreadyRunning",
    "WorkerStats",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowRun",
    "check_deploy",
    "check_deploy_sync",
    "generate_cipher_key",
    "idempotency_key",
    "run_worker",
]
