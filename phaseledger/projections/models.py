"""What report queries return: pydantic models of the report rows and of the summary."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class RunSummary(BaseModel):
    """One row of ``report_runs``: a run as the report sees it."""

    run_id: str
    workflow: str
    workflow_version: int
    status: str
    """running, waiting, sleeping, retrying, completed, failed or cancelled."""
    phase: str | None
    """The current (or last) phase."""
    phase_attempt: int
    """How many times the current phase has been entered."""
    phase_entered_at: datetime | None
    phase_visits: int
    """Phase entries in total."""
    version: int
    """Events in the run's log."""
    steps: int
    """Journaled calls recorded."""
    step_failures: int
    """Failed attempts of journaled calls."""
    signals: int
    checkpoints: int
    model_requests: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    """Estimated cost; None while no recorded call reported one."""
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    """From start to finish, or to the last event while the run is not finished."""
    last_error_type: str | None
    last_error_message: str | None
    waiting_for: str | None
    """The signal a waiting run waits for."""
    wake_at: datetime | None
    """When a suspended run is due again."""
    parent_run_id: str | None
    """The run this one was forked from (None for other runs)."""
    parent_version: int | None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class RunPage(BaseModel):
    """One page of run summaries (:meth:`Reports.runs_page <phaseledger.projections.Reports.runs_page>`),
    newest first, with how many runs match the filters in all."""

    runs: list[RunSummary] = Field(default_factory=list)
    total: int = 0
    """Runs matching the filters, on every page."""
    offset: int = 0
    limit: int = 50


class FailureCount(BaseModel):
    """How many failures of one kind and error type a phase of a workflow had."""

    workflow: str
    phase: str | None
    kind: str
    """``attempt`` (a failed attempt of a call) or ``run`` (a failed run)."""
    error_type: str
    count: int


class PhaseVisit(BaseModel):
    """One row of ``report_phases``: one visit of a phase by a run."""

    run_id: str
    visit: int
    """1 for the first phase entered, 2 for the next, ..."""
    workflow: str
    phase: str
    attempt: int
    from_phase: str | None
    reason: str
    entered_at: datetime
    left_at: datetime | None
    """None while the run is in this phase."""
    duration_seconds: float | None
    outcome: str | None
    """transition, completed, failed or cancelled (None while current)."""
    next_phase: str | None
    steps: int
    failed_attempts: int


class TokenUsage(BaseModel):
    """One row of ``report_token_usage``: usage of one model by one workflow on one day (UTC)."""

    workflow: str
    model: str
    """``usage['model']`` of the recorded calls, ``unknown`` when they did not say."""
    day: date
    calls: int
    requests: int
    input_tokens: int
    output_tokens: int
    cost: float | None


class Failure(BaseModel):
    """One row of ``report_failures``: a failed attempt of a call, or a failed run."""

    run_id: str
    version: int
    """Version of the failure event in the run's log."""
    workflow: str
    phase: str | None
    kind: str
    """``attempt`` or ``run``."""
    step_name: str | None
    seq: int | None
    attempt: int | None
    retryable: bool | None
    error_type: str
    message: str
    failed_at: datetime


class PhaseDurations(BaseModel):
    """How long the visits of one phase of one workflow took (finished visits only)."""

    workflow: str
    phase: str
    visits: int
    finished_visits: int
    total_seconds: float
    mean_seconds: float | None
    max_seconds: float | None


class WorkflowTotals(BaseModel):
    """Runs, tokens and cost of one workflow."""

    workflow: str
    runs: int
    model_requests: int
    input_tokens: int
    output_tokens: int
    cost: float | None


class SummaryReport(BaseModel):
    """The summary ``phaseledger report`` prints: runs by status, phase durations, usage by workflow."""

    runs_by_status: dict[str, int] = Field(default_factory=dict)
    phases: list[PhaseDurations] = Field(default_factory=list)
    workflows: list[WorkflowTotals] = Field(default_factory=list)
    position: int | None = None
    """The last notification id the report tables include."""
    lag: int = 0
    """Run events in the log that the tables do not include yet."""


class ProjectionStatus(BaseModel):
    """Where the report projection stands (``phaseledger projections status``)."""

    store: str
    """The store URL (password hidden)."""
    position: int | None
    """The last notification id applied (None before the first)."""
    lag: int
    """Run events in the log not applied yet."""
    generation: int
    """Bumped by every rebuild."""
    schema_version: int
    expected_schema_version: int
    outdated: bool
    """True when the tables have another layout than this version uses: rebuild them."""
    following: bool
    """True while this process follows the log in the background."""
    rows: dict[str, int] = Field(default_factory=dict)
    """Rows per report table."""
