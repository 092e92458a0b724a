"""The report tables: their columns, once, and the SQL that creates them on each backend.

The tables live next to the events (same SQLite file, same PostgreSQL schema) so users can
query them with plain SQL. Every table is a projection of the notification log and can be
dropped and rebuilt at any time (:meth:`phaseledger.projections.Reports.rebuild`).

Column types are portable: ``ts`` is ``TIMESTAMPTZ`` on PostgreSQL and ISO-8601 text (UTC)
on SQLite, ``date`` is ``DATE`` / ``YYYY-MM-DD`` text, ``bool`` is ``BOOLEAN`` / 0-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from phaseledger.store.sql import quote

SCHEMA_VERSION = 1
"""Bumped whenever a table's layout changes; older tables must then be rebuilt."""

PROJECTION_NAME = "report"
"""Prefix of the projection's tables, including its tracking table ``report_tracking``."""

TRACKING_TABLE = f"{PROJECTION_NAME}_tracking"

_TYPES = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "real": "REAL", "ts": "TEXT", "date": "TEXT", "bool": "INTEGER"},
    "postgresql": {
        "text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION", "ts": "TIMESTAMPTZ", "date": "DATE",
        "bool": "BOOLEAN",
    },
}


@dataclass(frozen=True)
class Table:
    """One report table: its name, columns ``(name, type, meaning)`` and primary key."""

    key: str
    """How the code refers to the table (``runs``, ``phases``, ``usage``, ``failures``, ``meta``)."""
    name: str
    columns: tuple[tuple[str, str, str], ...]
    primary_key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """The column names in table order."""
        return tuple(c[0] for c in self.columns)

    def types(self) -> dict[str, str]:
        """Column name to portable type."""
        return {c[0]: c[1] for c in self.columns}


RUNS = Table(
    "runs", f"{PROJECTION_NAME}_runs",
    (
        ("run_id", "text", "the run's id"),
        ("workflow", "text", "the workflow's name"),
        ("workflow_version", "int", "the workflow version the run started with"),
        ("status", "text", "running, waiting, sleeping, retrying, completed, failed or cancelled"),
        ("phase", "text", "the current (or last) phase"),
        ("phase_attempt", "int", "how many times the current phase has been entered"),
        ("phase_entered_at", "ts", "when the current phase was entered"),
        ("phase_visits", "int", "phase entries in total (rows in report_phases)"),
        ("version", "int", "events in the run's log"),
        ("steps", "int", "journaled calls recorded"),
        ("step_failures", "int", "failed attempts of journaled calls"),
        ("signals", "int", "signals received"),
        ("checkpoints", "int", "explicit checkpoints"),
        ("model_requests", "int", "model requests (from the usage of recorded calls)"),
        ("input_tokens", "int", "input tokens"),
        ("output_tokens", "int", "output tokens"),
        ("cost", "real", "estimated cost, NULL while no recorded call reported one"),
        ("started_at", "ts", "when the run started"),
        ("updated_at", "ts", "time of the run's last event"),
        ("finished_at", "ts", "when it completed, failed or was cancelled (NULL otherwise)"),
        ("duration_seconds", "real", "started_at to finished_at, or to updated_at while not finished"),
        ("last_error_type", "text", "type of the last failed attempt or run failure"),
        ("last_error_message", "text", "its message"),
        ("waiting_for", "text", "the signal a waiting run waits for"),
        ("wake_at", "ts", "when a suspended run is due again"),
        ("parent_run_id", "text", "the run a fork branched from (NULL for other runs)"),
        ("parent_version", "int", "the version of the parent run it branched at"),
    ),
    ("run_id",),
    (("status",), ("workflow", "started_at")),
)

PHASES = Table(
    "phases", f"{PROJECTION_NAME}_phases",
    (
        ("run_id", "text", "the run's id"),
        ("visit", "int", "1 for the first phase entered, 2 for the next, ..."),
        ("workflow", "text", "the workflow's name"),
        ("phase", "text", "the phase entered"),
        ("attempt", "int", "how many times this phase had been entered in the run, this visit included"),
        ("from_phase", "text", "the phase it came from (NULL for the first)"),
        ("reason", "text", "why it was entered (start, transition, ...)"),
        ("entered_at", "ts", "when it was entered"),
        ("left_at", "ts", "when it was left (NULL while the run is in it)"),
        ("duration_seconds", "real", "left_at - entered_at"),
        ("outcome", "text", "transition, completed, failed or cancelled (NULL while current)"),
        ("next_phase", "text", "the phase entered next, for a transition"),
        ("steps", "int", "journaled calls recorded during the visit"),
        ("failed_attempts", "int", "failed attempts during the visit"),
    ),
    ("run_id", "visit"),
    (("workflow", "phase"),),
)

USAGE = Table(
    "usage", f"{PROJECTION_NAME}_token_usage",
    (
        ("workflow", "text", "the workflow's name"),
        ("model", "text", "usage['model'] of the recorded call ('unknown' when absent)"),
        ("day", "date", "UTC day of the recorded call"),
        ("calls", "int", "recorded calls that reported usage (a fork's copies of its parent's calls count once)"),
        ("requests", "int", "model requests"),
        ("input_tokens", "int", "input tokens"),
        ("output_tokens", "int", "output tokens"),
        ("cost", "real", "estimated cost, NULL while no call reported one"),
    ),
    ("workflow", "model", "day"),
)

FAILURES = Table(
    "failures", f"{PROJECTION_NAME}_failures",
    (
        ("run_id", "text", "the run's id"),
        ("version", "int", "the version of the failure event in the run's log"),
        ("workflow", "text", "the workflow's name"),
        ("phase", "text", "the phase it failed in"),
        ("kind", "text", "'attempt' (a failed attempt of a call) or 'run' (the run failed)"),
        ("step_name", "text", "the call's name (attempts only)"),
        ("seq", "int", "the call's sequence number in the phase visit (attempts only)"),
        ("attempt", "int", "the attempt number (attempts only)"),
        ("retryable", "bool", "whether it was to be retried (attempts only)"),
        ("error_type", "text", "the exception type"),
        ("message", "text", "the exception message"),
        ("failed_at", "ts", "when it failed"),
    ),
    ("run_id", "version"),
    (("workflow", "failed_at"),),
)

META = Table(
    "meta", f"{PROJECTION_NAME}_meta",
    (
        ("name", "text", "the projection's name"),
        ("schema_version", "int", "layout of the tables"),
        ("generation", "int", "bumped by every rebuild; stops processors started before it"),
        ("rebuilt_at", "ts", "when the tables were last rebuilt (NULL if never)"),
    ),
    ("name",),
)

READ_MODELS: tuple[Table, ...] = (RUNS, PHASES, USAGE, FAILURES)
"""The tables users query, dropped and re-filled by a rebuild."""

TABLES: dict[str, Table] = {t.key: t for t in (*READ_MODELS, META)}


def create_statements(table: Table, dialect: str, schema: str | None = None) -> list[str]:
    """``CREATE TABLE IF NOT EXISTS`` (and its indexes) for ``dialect`` (sqlite, postgresql).

    ``schema`` qualifies the table's name (a PostgreSQL schema).
    """
    types = _TYPES[dialect]
    cols = ", ".join(f"{name} {types[kind]}" for name, kind, _ in table.columns)
    name = quote((schema, table.name)) if schema else table.name
    statements = [
        f"CREATE TABLE IF NOT EXISTS {name} ({cols}, PRIMARY KEY ({', '.join(table.primary_key)}))"
    ]
    for columns in table.indexes:
        index = f"{table.name}_{'_'.join(columns)}_idx"
        statements.append(f"CREATE INDEX IF NOT EXISTS {index} ON {name} ({', '.join(columns)})")
    return statements


def ddl(dialect: str = "sqlite") -> str:
    """The SQL that creates every report table, as text (for docs and for users' tooling)."""
    return ";\n".join(s for t in (*READ_MODELS, META) for s in create_statements(t, dialect)) + ";"
