"""The WorkflowRun aggregate folds events without I/O or user code."""

from __future__ import annotations

from datetime import UTC, datetime

from phaseledger.domain.run import WorkflowRun, project_run
from phaseledger.domain.status import DAMAGED, FINISHED, STATUSES, suspended_status


def started(run_id: str = "r") -> WorkflowRun:
    run = WorkflowRun._create(
        WorkflowRun.RunStarted, id=run_id, workflow="wf", workflow_version=2, input={"n": 1}, parent=None
    )
    run.trigger_event(WorkflowRun.PhaseEntered, phase="a", from_phase=None, reason="start", attempt=1, state={"n": 1})
    return run


def step(run: WorkflowRun, key: str, usage: dict | None = None, kind: str = "step", detail: dict | None = None) -> None:
    run.trigger_event(
        WorkflowRun.StepRecorded, seq=run.next_seq, key=key, name=f"s{key}", kind=kind, result={"k": key},
        result_type=None, fingerprint=None, usage=usage, duration=0.01, error=None, detail=detail,
    )


def test_start_and_phase_entry() -> None:
    run = started()
    assert (run.id, run.workflow, run.workflow_version, run.status, run.phase) == ("r", "wf", 2, "running", "a")
    assert run.attempts == {"a": 1} and run.journal == {} and run.version == 2


def test_steps_form_the_journal_of_the_current_phase_visit() -> None:
    run = started()
    step(run, "0", usage={"requests": 1, "input_tokens": 10, "output_tokens": 3})
    step(run, "1")
    assert list(run.journal) == ["0", "1"]
    assert run.journal["0"].result == {"k": "0"} and run.next_seq == 2
    assert run.usage == {"requests": 1, "input_tokens": 10, "output_tokens": 3}
    run.trigger_event(WorkflowRun.PhaseEntered, phase="a", from_phase="a", reason="transition", attempt=2, state={})
    assert run.journal == {} and run.attempts == {"a": 2} and run.steps == 2


def test_failed_attempts_are_kept_until_the_step_is_recorded() -> None:
    run = started()
    when = datetime(2030, 1, 1, tzinfo=UTC)
    run.trigger_event(
        WorkflowRun.StepAttemptFailed, seq=0, key="0", name="s0", error_type="E", message="m",
        retryable=True, attempt=1, retry_at=when, started_at=None,
    )
    assert run.failures["0"][0].retry_at == when and run.failures["0"][0].name == "s0"
    step(run, "0")
    assert "0" not in run.failures


def test_signals_wait_in_the_inbox_and_wake_a_waiting_run() -> None:
    run = started()
    run.trigger_event(WorkflowRun.RunSuspended, reason="signal", until=None, signal="go")
    assert run.status == "waiting"
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="x", name="other", payload=1)
    assert run.status == "waiting"
    run.trigger_event(WorkflowRun.SignalReceived, signal_id="y", name="go", payload=2)
    assert run.status == "running" and [s.name for s in run.inbox] == ["other", "go"]
    step(run, "0", kind="signal", detail={"signal_id": "y"})
    assert [s.signal_id for s in run.inbox] == ["x"]


def test_resume_counts_what_is_served_from_the_log() -> None:
    run = started()
    step(run, "0", usage={"requests": 1, "input_tokens": 100, "output_tokens": 20})
    run.trigger_event(WorkflowRun.RunResumed, reason="recover")
    assert run.replayed_steps == 1
    assert run.saved_usage == {"requests": 1, "input_tokens": 100, "output_tokens": 20}


def test_terminal_events() -> None:
    run = started()
    run.trigger_event(WorkflowRun.RunFailed, error={"type": "E", "message": "boom", "traceback": ""})
    assert run.status == "failed" and run.finished and run.finished_on is not None
    run.trigger_event(WorkflowRun.RunResumed, reason="retry")
    assert run.status == "running" and run.error is None
    run.trigger_event(WorkflowRun.RunCompleted, output={"ok": True}, output_type=None, state={"n": 9})
    assert (run.status, run.output, run.phase_state) == ("completed", {"ok": True}, {"n": 9})


def test_the_fast_projector_equals_eventsourcing_replay() -> None:
    run = started()
    step(run, "0")
    events = run.collect_events()
    rebuilt = project_run(None, events)
    assert rebuilt is not None and rebuilt.__dict__ == run.__dict__


def test_statuses_keep_their_stored_spelling() -> None:
    # Snapshots, the run index and the report tables store these strings: they are part of the log's contract.
    assert STATUSES == ("running", "waiting", "sleeping", "retrying", "completed", "failed", "cancelled")
    assert FINISHED == {"completed", "failed", "cancelled"} and DAMAGED == "damaged"
    assert [suspended_status(reason) for reason in ("signal", "sleep", "retry")] == ["waiting", "sleeping", "retrying"]
