"""Read models fed by the event log, with tracking, rebuildable at any time.

``engine.reports`` (a :class:`Reports`) queries them and runs the projection that fills
them: ``catch_up()``, ``follow()``, ``rebuild()``, ``lag()``. The tables are plain SQL
tables next to the events (see :mod:`phaseledger.projections.schema`).
"""

from phaseledger.projections.errors import ProjectionError, ProjectionOutdated, ProjectionReset
from phaseledger.projections.follow import Follower
from phaseledger.projections.models import (
    Failure,
    FailureCount,
    PhaseDurations,
    PhaseVisit,
    ProjectionStatus,
    RunPage,
    RunSummary,
    SummaryReport,
    TokenUsage,
    WorkflowTotals,
)
from phaseledger.projections.projection import ReportProjection
from phaseledger.projections.reports import Reports
from phaseledger.projections.schema import SCHEMA_VERSION, ddl

__all__ = [
    "SCHEMA_VERSION",
    "Failure",
    "FailureCount",
    "Follower",
    "PhaseDurations",
    "PhaseVisit",
    "ProjectionError",
    "ProjectionOutdated",
    "ProjectionReset",
    "ProjectionStatus",
    "ReportProjection",
    "Reports",
    "RunPage",
    "RunSummary",
    "SummaryReport",
    "TokenUsage",
    "WorkflowTotals",
    "ddl",
]
