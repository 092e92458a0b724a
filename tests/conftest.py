"""Shared fixtures: one store URL per backend, so the same tests run on every store.

PostgreSQL tests use ``$PHASELEDGER_TEST_POSTGRES_URL``. Outside CI they skip with a
reason when no server answers; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_URL = os.environ.get("PHASELEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_reachable() -> str | None:
    try:
        import psycopg

        from phaseledger.engine.store import StoreURL

        with psycopg.connect(StoreURL.parse(POSTGRES_URL).postgres_conninfo or "", connect_timeout=3):
            return None
    except Exception as exc:  # any failure means "not reachable" here
        return str(exc)


_PG_ERROR: list[str | None] = []


def require_postgres() -> None:
    """Skip (or fail under CI) when the PostgreSQL test server is not reachable."""
    if not _PG_ERROR:
        _PG_ERROR.append(_postgres_reachable())
    if _PG_ERROR[0] is not None:
        message = f"PostgreSQL at {POSTGRES_URL} is not reachable: {_PG_ERROR[0]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def fresh_postgres_url() -> Iterator[str]:
    """A PostgreSQL store URL in a new schema of its own, dropped afterwards."""
    import psycopg
    from psycopg import sql

    from phaseledger.engine.store import StoreURL

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
