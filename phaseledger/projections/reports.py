"""The reports API: query the read models, and run the projection that fills them.

``engine.reports`` is a :class:`Reports` on the engine's store; ``Reports(url)`` opens one
on any store URL. Queries return pydantic models and read the tables as they stand:
call :meth:`Reports.catch_up` (or keep :meth:`Reports.follow` running) to bring them up to
date with the log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, Self

from phaseledger.projections.errors import AlreadyApplied, ProjectionError, ProjectionOutdated, ProjectionReset
from phaseledger.projections.follow import Follower, PollingFollower, RunnerFollower, memory_runner, subscribed_runner
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
from phaseledger.projections.projection import count_after, read_log
from phaseledger.projections.schema import FAILURES, PHASES, READ_MODELS, RUNS, SCHEMA_VERSION, USAGE
from phaseledger.projections.view import open_view
from phaseledger.store.eventstore import Store
from phaseledger.store.faults import guarded, store_errors
from phaseledger.store.sql import reports as sql

Progress = Callable[[int, int], Any]
"""Called as ``progress(done, total)`` while events are applied (``total`` may grow)."""

DEFAULT_PAGE_SIZE = 500


class Reports:
    """Report read models of one store: run summaries, phase timelines, token usage, failures.

    ``store`` is a :class:`~phaseledger.Store` to share (``engine.reports`` does) or a store
    URL. The tables live in the store's own database; for ``memory://`` they live in an
    in-memory database of this object.
    """

    def __init__(self, store: Store | str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1:
            raise ProjectionError("page_size must be >= 1")
        self._owns_store = not isinstance(store, Store)
        self.store = store if isinstance(store, Store) else Store(store, snapshot_every=None)
        self.page_size = page_size
        self.application_name = self.store.name
        with store_errors(self.store.url, "open the report tables"):
            self.view = open_view(self.store)
        self._follower: Follower | None = None
        self._lock = threading.Lock()

    # -- running the projection ---------------------------------------------------------

    @guarded("bring the report tables up to date")
    def catch_up(self, progress: Progress | None = None, *, page_size: int | None = None,
                 max_events: int | None = None) -> int:
        """Apply the run events the tables do not include yet; return how many were applied.

        Pages of ``page_size`` events are read from the log and each is applied in one
        transaction together with its position, so memory stays constant and a crash loses
        nothing and applies nothing twice. ``max_events`` stops early (after whole pages).
        Safe to run from several processes at once: each event is applied by one of them.
        A row that cannot be read (of a damaged run) is logged and passed over.
        """
        size = page_size or self.page_size
        total = self.lag() if progress is not None else 0
        if progress is not None:
            progress(0, total)
        applied = 0
        while max_events is None or applied < max_events:
            state = self.view.state(self.application_name)
            if state.schema_version != SCHEMA_VERSION:
                raise ProjectionOutdated(state.schema_version, SCHEMA_VERSION)
            limit = size if max_events is None else min(size, max_events - applied)
            page = read_log(self.store, state.position, limit)
            if not page:
                break
            # An unreadable row becomes a placeholder the fold ignores: its position still counts.
            items = [(self.store.read_notification(n), n.id) for n in page]
            try:
                self.view.apply(items, application_name=self.application_name, generation=state.generation)
            except (AlreadyApplied, ProjectionReset):
                continue  # another processor moved the position: read it again
            applied += len(items)
            if progress is not None:
                total = max(total, applied)
                progress(applied, total)
        return applied

    def follow(self, interval: float = 0.2) -> Follower:
        """Keep the tables up to date in a background thread until :meth:`stop` (or :meth:`close`).

        PostgreSQL and memory stores are followed by eventsourcing's projection runners on a
        subscription to the log; SQLite files are polled every ``interval`` seconds.
        Returns the running :class:`~phaseledger.projections.follow.Follower` (the same one
        when already following).
        """
        with self._lock:
            if self._follower is not None and self._follower.running:
                return self._follower
            follower: Follower
            env = self.store.subscriber_env()
            if self.store.in_process:
                follower = RunnerFollower(self, interval, lambda: memory_runner(self))
            elif env is not None:
                follower = RunnerFollower(self, interval, lambda: subscribed_runner(self, env))
            else:
                follower = PollingFollower(self, interval)
            self._follower = follower.start()
            return follower

    @property
    def following(self) -> bool:
        """Whether a background follower of this object is running."""
        return self._follower is not None and self._follower.running

    def stop(self) -> None:
        """Stop the background follower, if any (it finishes its current transaction)."""
        with self._lock:
            follower, self._follower = self._follower, None
        if follower is not None:
            follower.stop()

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the tables include every run event in the log (for tests and scripts).

        Raises :class:`TimeoutError` when they do not within ``timeout`` seconds (is a
        follower running? :meth:`catch_up` applies events without one).
        """
        deadline = time.monotonic() + timeout
        while self.lag() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the report tables are still {self.lag()} event(s) behind after {timeout}s: "
                    "start reports.follow() or call reports.catch_up()"
                )
            time.sleep(0.01)

    @guarded("rebuild the report tables")
    def rebuild(self, progress: Progress | None = None, *, page_size: int | None = None) -> int:
        """Drop the tables, create them anew and fill them from position 0; return the events applied.

        The drop and the reset of the position happen in one transaction; the log is then
        read in pages (constant memory), each applied in its own transaction, so readers
        see the tables fill up and a crash midway resumes with :meth:`catch_up`. A follower
        of this object pauses meanwhile; processors in other processes notice the rebuild
        and start again from its position.
        """
        with self._lock:
            follower = self._follower
        interval = follower.interval if follower is not None else None
        self.stop()
        try:
            self.view.reset(self.application_name)
            return self.catch_up(progress, page_size=page_size)
        finally:
            if interval is not None:
                self.follow(interval)

    # -- where it stands ----------------------------------------------------------------

    @guarded("read the report tables' position")
    def position(self) -> int | None:
        """The last notification id the tables include (None before the first)."""
        return self.view.state(self.application_name).position

    @guarded("count the events the report tables lack")
    def lag(self) -> int:
        """How many run events the log holds that the tables do not include yet."""
        return count_after(self.store, self.position())

    @guarded("read the report tables' status")
    def status(self) -> ProjectionStatus:
        """Position, lag, generation, layout and row counts."""
        state = self.view.state(self.application_name)
        outdated = state.schema_version != SCHEMA_VERSION
        rows: dict[str, int] = {}
        if not outdated:
            for table in READ_MODELS:
                rows[table.name] = int(self.view.fetch(sql.COUNT_ROWS, table=table)[0]["n"])
        return ProjectionStatus(
            store=self.store.url.redacted, position=state.position, lag=count_after(self.store, state.position),
            generation=state.generation, schema_version=state.schema_version,
            expected_schema_version=SCHEMA_VERSION, outdated=outdated, following=self.following, rows=rows,
        )

    # -- queries ------------------------------------------------------------------------

    @guarded("query the report tables")
    def _query(self, template: str, params: dict[str, Any] | None = None, table: Any = None) -> list[dict[str, Any]]:
        state = self.view.state(self.application_name)
        if state.schema_version != SCHEMA_VERSION:
            raise ProjectionOutdated(state.schema_version, SCHEMA_VERSION)
        return self.view.fetch(template, params, table)

    def runs(self, *, status: str | None = None, workflow: str | None = None, parent_run_id: str | None = None,
             limit: int | None = None) -> list[RunSummary]:
        """Run summaries in the order the runs started, optionally filtered."""
        where, params = _where(status=status, workflow=workflow, parent_run_id=parent_run_id)
        sql = _limited(f"SELECT * FROM {{runs}}{where} ORDER BY started_at, run_id", params, limit)
        return [RunSummary(**row) for row in self._query(sql, params, RUNS)]

    def runs_page(self, *, status: str | None = None, workflow: str | None = None, phase: str | None = None,
                  since: datetime | None = None, until: datetime | None = None, run_id_contains: str | None = None,
                  limit: int = 50, offset: int = 0) -> RunPage:
        """A page of run summaries, newest first, and how many runs match in all.

        ``since`` and ``until`` bound when the runs started (inclusive; naive times are
        UTC); ``run_id_contains`` keeps the runs whose id contains that text (any case).
        Served by the report tables alone, so a page costs the same with millions of runs.
        """
        if limit < 1 or offset < 0:
            raise ProjectionError("limit must be >= 1 and offset >= 0")
        where, params = _where(status=status, workflow=workflow, phase=phase)
        clauses = [where[len(" WHERE "):]] if where else []
        for name, value, op in (("since", since, ">="), ("until", until, "<=")):
            if value is not None:
                value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
                clauses.append(f"started_at {op} %({name})s")
                params[name] = self.view.dialect.to_db(RUNS, {"started_at": value})["started_at"]
        if run_id_contains:
            escaped = run_id_contains.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("LOWER(run_id) LIKE %(run_id_like)s ESCAPE '\\'")
            params["run_id_like"] = f"%{escaped}%"
        filtered = " WHERE " + " AND ".join(clauses) if clauses else ""
        total = int(self._query(f"SELECT COUNT(*) AS n FROM {{runs}}{filtered}", dict(params))[0]["n"])
        params.update(limit=int(limit), offset=int(offset))
        rows = self._query(
            f"SELECT * FROM {{runs}}{filtered} ORDER BY started_at DESC, run_id DESC "
            "LIMIT %(limit)s OFFSET %(offset)s", params, RUNS,
        )
        return RunPage(runs=[RunSummary(**row) for row in rows], total=total, offset=offset, limit=limit)

    def workflows(self) -> list[str]:
        """The workflows that have runs, by name."""
        return [row["workflow"] for row in self._query("SELECT DISTINCT workflow FROM {runs} ORDER BY workflow")]

    def failure_counts(self, *, workflow: str | None = None) -> list[FailureCount]:
        """Failures counted by workflow, phase, kind and error type, the most frequent first."""
        where, params = _where(workflow=workflow)
        rows = self._query(
            "SELECT workflow, phase, kind, error_type, COUNT(*) AS n FROM {failures}" + where
            + " GROUP BY workflow, phase, kind, error_type ORDER BY n DESC, workflow, phase, error_type", params,
        )
        return [FailureCount(workflow=r["workflow"], phase=r["phase"], kind=r["kind"], error_type=r["error_type"],
                             count=int(r["n"])) for r in rows]

    def run(self, run_id: str) -> RunSummary | None:
        """The summary of one run (None when the tables do not include it yet)."""
        rows = self._query("SELECT * FROM {runs} WHERE run_id = %(run_id)s", {"run_id": run_id}, RUNS)
        return RunSummary(**rows[0]) if rows else None

    def timeline(self, run_id: str) -> list[PhaseVisit]:
        """The phase visits of a run, in order."""
        rows = self._query("SELECT * FROM {phases} WHERE run_id = %(run_id)s ORDER BY visit", {"run_id": run_id}, PHASES)
        return [PhaseVisit(**row) for row in rows]

    def token_usage(self, *, workflow: str | None = None, model: str | None = None,
                    since: date | None = None, until: date | None = None) -> list[TokenUsage]:
        """Token usage by workflow, model and day (``since``/``until`` inclusive, UTC days)."""
        where, params = _where(workflow=workflow, model=model)
        clauses = [where[len(" WHERE "):]] if where else []
        if since is not None:
            clauses.append("day >= %(since)s")
            params["since"] = self.view.dialect.to_db_date(since)
        if until is not None:
            clauses.append("day <= %(until)s")
            params["until"] = self.view.dialect.to_db_date(until)
        sql = "SELECT * FROM {usage}" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        rows = self._query(sql + " ORDER BY day, workflow, model", params, USAGE)
        return [TokenUsage(**row) for row in rows]

    def failures(self, *, run_id: str | None = None, workflow: str | None = None, kind: str | None = None,
                 limit: int | None = None) -> list[Failure]:
        """Failed attempts (``kind='attempt'``) and failed runs (``kind='run'``), oldest first."""
        where, params = _where(run_id=run_id, workflow=workflow, kind=kind)
        sql = _limited(f"SELECT * FROM {{failures}}{where} ORDER BY failed_at, run_id, version", params, limit)
        return [Failure(**row) for row in self._query(sql, params, FAILURES)]

    @guarded("query the report tables")
    def summary(self) -> SummaryReport:
        """Runs by status, phase durations, and runs, tokens and cost by workflow."""
        by_status = {
            row["status"]: int(row["n"])
            for row in self._query("SELECT status, COUNT(*) AS n FROM {runs} GROUP BY status ORDER BY status")
        }
        phases = [
            PhaseDurations(
                workflow=row["workflow"], phase=row["phase"], visits=int(row["visits"]),
                finished_visits=int(row["finished"]), total_seconds=float(row["total"] or 0.0),
                mean_seconds=float(row["total"]) / int(row["finished"]) if row["finished"] else None,
                max_seconds=None if row["longest"] is None else float(row["longest"]),
            )
            for row in self._query(
                "SELECT workflow, phase, COUNT(*) AS visits, COUNT(duration_seconds) AS finished, "
                "SUM(duration_seconds) AS total, MAX(duration_seconds) AS longest "
                "FROM {phases} GROUP BY workflow, phase ORDER BY workflow, phase"
            )
        ]
        workflows = [
            WorkflowTotals(
                workflow=row["workflow"], runs=int(row["runs"]), model_requests=int(row["requests"] or 0),
                input_tokens=int(row["tokens_in"] or 0), output_tokens=int(row["tokens_out"] or 0),
                cost=None if row["cost"] is None else float(row["cost"]),
            )
            for row in self._query(
                "SELECT workflow, COUNT(*) AS runs, SUM(model_requests) AS requests, SUM(input_tokens) AS tokens_in, "
                "SUM(output_tokens) AS tokens_out, SUM(cost) AS cost FROM {runs} GROUP BY workflow ORDER BY workflow"
            )
        ]
        state = self.view.state(self.application_name)
        return SummaryReport(
            runs_by_status=by_status, phases=phases, workflows=workflows, position=state.position,
            lag=count_after(self.store, state.position),
        )

    def dump(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every report table, in primary-key order (for comparisons and exports)."""
        return {
            table.name: self._query(f"SELECT * FROM {{table}} ORDER BY {', '.join(table.primary_key)}", table=table)
            for table in READ_MODELS
        }

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop following and release the view's connections (and the store, if opened here)."""
        self.stop()
        self.view.datastore.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _where(**filters: Any) -> tuple[str, dict[str, Any]]:
    params = {k: v for k, v in filters.items() if v is not None}
    if not params:
        return "", {}
    return " WHERE " + " AND ".join(f"{k} = %({k})s" for k in params), params


def _limited(sql: str, params: dict[str, Any], limit: int | None) -> str:
    """``sql`` returning at most ``limit`` rows (all when None); the limit is bound in ``params``."""
    if limit is None:
        return sql
    params["limit"] = int(limit)
    return sql + " LIMIT %(limit)s"
