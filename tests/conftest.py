"""Shared fixtures: one store URL per backend, so the same tests run on every store.

PostgreSQL tests use ``$PHASELEDGER_TEST_POSTGRES_URL`` (default: a local server). Outside
CI they skip with a reason when no server answers; under ``CI=true`` they fail instead.
Which server they use, or why they skipped, is printed in pytest's header and, after
skips, once at the end of the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("PHASELEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_reachable() -> str | None:
    try:
        import psycopg

        from phaseledger.store.eventstore import StoreURL

        with psycopg.connect(StoreURL.parse(POSTGRES_URL).postgres_conninfo or "", connect_timeout=3):
            return None
    except Exception as exc:  # any failure means "not reachable" here
        return str(exc)


_PG_ERROR: list[str | None] = []
_PG_SKIPPED: list[str] = []
"""Set when a test skipped for want of the server: the end of the run says why, once."""


def _postgres_error() -> str | None:
    """Why the PostgreSQL test server cannot be used (None when it answers); probed once."""
    if not _PG_ERROR:
        _PG_ERROR.append(_postgres_reachable())
    return _PG_ERROR[0]


def _redacted(url: str) -> str:
    from phaseledger.store.eventstore import StoreURL

    return StoreURL.parse(url).redacted


def postgres_note() -> str:
    """One line: which PostgreSQL server the tests use, or why they skip and how to point them elsewhere."""
    error = _postgres_error()
    where = _redacted(POSTGRES_URL)
    if error is None:
        return f"PostgreSQL tests: {where} (set PHASELEDGER_TEST_POSTGRES_URL to use another server)"
    effect = "fail (CI=true)" if IN_CI else "are skipped"
    return (f"PostgreSQL tests {effect}: {where} is not reachable ({error.strip().splitlines()[0]}); "
            "set PHASELEDGER_TEST_POSTGRES_URL=postgresql://USER@HOST:PORT/DB to use another server")


def require_postgres() -> None:
    """Skip (or fail under CI) when the PostgreSQL test server is not reachable."""
    error = _postgres_error()
    if error is not None:
        message = f"PostgreSQL at {_redacted(POSTGRES_URL)} is not reachable: {error}"
        if IN_CI:
            pytest.fail(message)
        _PG_SKIPPED.append(message)
        pytest.skip(message)


def pytest_report_header(config: pytest.Config) -> str:
    """The PostgreSQL server the tests use, at the top of a (non-quiet) run."""
    return postgres_note()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """After PostgreSQL tests skipped, say why once at the end (also under ``-q``)."""
    if _PG_SKIPPED:
        terminalreporter.write_line(postgres_note(), yellow=True)


def fresh_postgres_url() -> Iterator[str]:
    """A PostgreSQL store URL in a new schema of its own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    from phaseledger.store.eventstore import StoreURL

    require_postgres()
    schema = f"pl_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}schema={schema}"
    with psycopg.connect(StoreURL.parse(POSTGRES_URL).postgres_conninfo or "", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh store URL on each backend."""
    if request.param == "memory":
        yield "memory://"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/runs.db"
    else:
        yield from fresh_postgres_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh store URL on each backend that outlives a process (SQLite file, PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/runs.db"
    else:
        yield from fresh_postgres_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL store URL (its own schema)."""
    yield from fresh_postgres_url()
