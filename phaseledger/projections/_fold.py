"""Folding run events into report rows, inside the view's transaction.

A :class:`Fold` loads the rows an event touches (run summary, current phase visit,
token-usage bucket), changes them in Python in log order and writes them back when the
batch is flushed. Rows are loaded before they change and changed one event at a time, so
the result does not depend on how the log was cut into batches: an incrementally built
projection and a rebuilt one hold the same values, floats included.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from phaseledger.domain.run import WorkflowRun
from phaseledger.domain.status import CANCELLED, COMPLETED, FAILED, FINISHED, RUNNING, WAITING, suspended_status
from phaseledger.domain.usage import add_cost, add_usage, count
from phaseledger.projections._dialect import Dialect
from phaseledger.projections.schema import FAILURES, PHASES, RUNS, USAGE, Table

log = logging.getLogger(__name__)

W = WorkflowRun


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)


def _upsert(table: Table) -> str:
    cols = table.column_names
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in table.primary_key)
    values = ", ".join(f"%({c})s" for c in cols)
    return (
        f"INSERT INTO {{{table.key}}} ({', '.join(cols)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(table.primary_key)}) DO UPDATE SET {updates}"
    )


_UPSERT = {t.key: _upsert(t) for t in (RUNS, PHASES, USAGE)}
_INSERT_FAILURE = (
    f"INSERT INTO {{failures}} ({', '.join(FAILURES.column_names)}) "
    f"VALUES ({', '.join(f'%({c})s' for c in FAILURES.column_names)})"
)


class Fold:
    """Applies run events to the report tables through one open cursor (one transaction)."""

    def __init__(self, dialect: Dialect, cursor: Any) -> None:
        self.dialect = dialect
        self.cursor = cursor
        self.runs: dict[str, dict[str, Any] | None] = {}
        self.visits: dict[tuple[str, int], dict[str, Any] | None] = {}
        self.usage: dict[tuple[str, str, Any], dict[str, Any]] = {}
        self.failures: list[dict[str, Any]] = []
        self.applied = 0

    # -- loading -------------------------------------------------------------------------

    def _select(self, table: Table, where: str, params: dict[str, Any]) -> dict[str, Any] | None:
        self.cursor.execute(self.dialect.sql(f"SELECT * FROM {{{table.key}}} WHERE {where}"), params)
        row = self.cursor.fetchone()
        return None if row is None else self.dialect.from_db(table, row)

    def _run(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self.runs:
            self.runs[run_id] = self._select(RUNS, "run_id = %(run_id)s", {"run_id": run_id})
        return self.runs[run_id]

    def _visit(self, run: dict[str, Any]) -> dict[str, Any] | None:
        key = (run["run_id"], run["phase_visits"])
        if key not in self.visits:
            self.visits[key] = self._select(
                PHASES, "run_id = %(run_id)s AND visit = %(visit)s", {"run_id": key[0], "visit": key[1]}
            )
        return self.visits[key]

    def _usage(self, workflow: str, model: str, day: Any) -> dict[str, Any]:
        key = (workflow, model, day)
        if key not in self.usage:
            row = self._select(
                USAGE, "workflow = %(workflow)s AND model = %(model)s AND day = %(day)s",
                self.dialect.to_db(USAGE, {"workflow": workflow, "model": model, "day": day}),
            )
            self.usage[key] = row or {
                "workflow": workflow, "model": model, "day": day, "calls": 0, "requests": 0,
                "input_tokens": 0, "output_tokens": 0, "cost": None,
            }
        return self.usage[key]

    # -- applying ------------------------------------------------------------------------

    def apply(self, event: Any) -> None:
        """Apply one event of the log (events of other aggregates are ignored)."""
        if not isinstance(event, W.Event):
            return
        self.applied += 1
        if isinstance(event, W.RunStarted):
            self._started(event)
            return
        run = self._run(event.originator_id)
        if run is None:
            log.warning("report projection: %s of unknown run %r skipped", type(event).__name__,
                        event.originator_id)
            return
        run["version"] = event.originator_version
        run["updated_at"] = event.timestamp
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, run, event)
        end = run["finished_at"] or run["updated_at"]
        run["duration_seconds"] = _seconds(run["started_at"], end)

    def _started(self, e: W.RunStarted) -> None:
        parent = e.parent or {}
        parent_version = parent.get("version")
        self.runs[e.originator_id] = {
            "run_id": e.originator_id, "workflow": e.workflow, "workflow_version": e.workflow_version,
            "status": RUNNING, "phase": None, "phase_attempt": 0, "phase_entered_at": None, "phase_visits": 0,
            "version": e.originator_version, "steps": 0, "step_failures": 0, "signals": 0, "checkpoints": 0,
            "model_requests": 0, "input_tokens": 0, "output_tokens": 0, "cost": None,
            "started_at": e.timestamp, "updated_at": e.timestamp, "finished_at": None, "duration_seconds": 0.0,
            "last_error_type": None, "last_error_message": None, "waiting_for": None, "wake_at": None,
            "parent_run_id": parent.get("run_id") if e.parent else None,
            "parent_version": count(parent_version) if parent_version is not None else None,
        }

    def _close_visit(self, run: dict[str, Any], at: datetime, outcome: str, next_phase: str | None = None) -> None:
        visit = self._visit(run) if run["phase_visits"] else None
        if visit is None or visit["left_at"] is not None:
            return
        visit.update(left_at=at, outcome=outcome, next_phase=next_phase,
                     duration_seconds=_seconds(visit["entered_at"], at))

    def _phase_entered(self, run: dict[str, Any], e: W.PhaseEntered) -> None:
        self._close_visit(run, e.timestamp, "transition", e.phase)
        number = run["phase_visits"] + 1
        self.visits[(run["run_id"], number)] = {
            "run_id": run["run_id"], "visit": number, "workflow": run["workflow"], "phase": e.phase,
            "attempt": e.attempt, "from_phase": e.from_phase, "reason": e.reason, "entered_at": e.timestamp,
            "left_at": None, "duration_seconds": None, "outcome": None, "next_phase": None, "steps": 0,
            "failed_attempts": 0,
        }
        run.update(phase=e.phase, phase_attempt=e.attempt, phase_entered_at=e.timestamp, phase_visits=number)

    def _step_recorded(self, run: dict[str, Any], e: W.StepRecorded) -> None:
        run["steps"] += 1
        visit = self._visit(run) if run["phase_visits"] else None
        if visit is not None:
            visit["steps"] += 1
        usage = e.usage
        if not usage:
            return
        run["model_requests"] += count(usage.get("requests"))
        run["input_tokens"] += count(usage.get("input_tokens"))
        run["output_tokens"] += count(usage.get("output_tokens"))
        run["cost"] = add_cost(run["cost"], usage.get("cost"))
        inherited = run["parent_version"] is not None and e.originator_version <= run["parent_version"]
        if inherited:  # a fork's copy of its parent's call: paid once, counted in the parent's usage
            return
        model = str(usage.get("model") or "unknown")
        bucket = self._usage(run["workflow"], model, e.timestamp.astimezone(UTC).date())
        bucket["calls"] += 1
        add_usage(bucket, usage)

    def _attempt_failed(self, run: dict[str, Any], e: W.StepAttemptFailed) -> None:
        run["step_failures"] += 1
        run["last_error_type"], run["last_error_message"] = e.error_type, e.message
        visit = self._visit(run) if run["phase_visits"] else None
        if visit is not None:
            visit["failed_attempts"] += 1
        self.failures.append({
            "run_id": run["run_id"], "version": e.originator_version, "workflow": run["workflow"],
            "phase": run["phase"], "kind": "attempt", "step_name": e.name, "seq": e.seq, "attempt": e.attempt,
            "retryable": e.retryable, "error_type": e.error_type, "message": e.message, "failed_at": e.timestamp,
        })

    def _signal(self, run: dict[str, Any], e: W.SignalReceived) -> None:
        run["signals"] += 1
        if run["status"] == WAITING and run["waiting_for"] == e.name:
            run.update(status=RUNNING, waiting_for=None, wake_at=None)

    def _checkpoint(self, run: dict[str, Any], e: W.CheckpointSaved) -> None:
        run["checkpoints"] += 1

    def _suspended(self, run: dict[str, Any], e: W.RunSuspended) -> None:
        run.update(status=suspended_status(e.reason), waiting_for=e.signal, wake_at=e.until)

    def _resumed(self, run: dict[str, Any], e: W.RunResumed) -> None:
        reopened = run["status"] in FINISHED
        run.update(status=RUNNING, waiting_for=None, wake_at=None, finished_at=None)
        visit = self._visit(run) if reopened and run["phase_visits"] else None
        if visit is not None:
            visit.update(left_at=None, outcome=None, next_phase=None, duration_seconds=None)

    def _finished(self, run: dict[str, Any], e: Any, status: str) -> None:
        run.update(status=status, finished_at=e.timestamp, waiting_for=None, wake_at=None)
        self._close_visit(run, e.timestamp, status)

    def _completed(self, run: dict[str, Any], e: W.RunCompleted) -> None:
        self._finished(run, e, COMPLETED)

    def _cancelled(self, run: dict[str, Any], e: W.RunCancelled) -> None:
        self._finished(run, e, CANCELLED)

    def _failed(self, run: dict[str, Any], e: W.RunFailed) -> None:
        error = e.error or {}
        error_type, message = str(error.get("type") or "Error"), str(error.get("message") or "")
        run["last_error_type"], run["last_error_message"] = error_type, message
        self.failures.append({
            "run_id": run["run_id"], "version": e.originator_version, "workflow": run["workflow"],
            "phase": error.get("phase") or run["phase"], "kind": "run", "step_name": None, "seq": None,
            "attempt": None, "retryable": None, "error_type": error_type, "message": message,
            "failed_at": e.timestamp,
        })
        self._finished(run, e, FAILED)

    # -- writing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every changed row (in the cursor's transaction)."""
        for table, rows in ((RUNS, self.runs.values()), (PHASES, self.visits.values()),
                            (USAGE, self.usage.values())):
            sql = self.dialect.sql(_UPSERT[table.key])
            params = [self.dialect.to_db(table, row) for row in rows if row is not None]
            if params:
                self.cursor.executemany(sql, params)
        if self.failures:
            self.cursor.executemany(
                self.dialect.sql(_INSERT_FAILURE), [self.dialect.to_db(FAILURES, row) for row in self.failures]
            )


_HANDLERS: dict[type, Any] = {
    W.PhaseEntered: Fold._phase_entered,
    W.StepRecorded: Fold._step_recorded,
    W.StepAttemptFailed: Fold._attempt_failed,
    W.SignalReceived: Fold._signal,
    W.CheckpointSaved: Fold._checkpoint,
    W.RunSuspended: Fold._suspended,
    W.RunResumed: Fold._resumed,
    W.RunCompleted: Fold._completed,
    W.RunFailed: Fold._failed,
    W.RunCancelled: Fold._cancelled,
}
