"""Opening a SQLite store: its tables are created when the file lacks them, and only then."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from phaseledger.store.eventstore import Store
from phaseledger.store.sqlite_factory import EVENTS_TABLE, SNAPSHOTS_TABLE
from tests.integration.test_postgres_store import started


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement sent on a SQLite connection made from here on."""
    sent: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(sent.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    yield sent


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def creates(sent: list[str]) -> list[str]:
    return [s for s in sent if s.lstrip().upper().startswith("CREATE")]


def saves_and_loads(store: Store) -> None:
    """Save a run in ``store`` and load it back, then close the store."""
    try:
        store.save(started("r"))
        assert store.load("r").version == 1
    finally:
        store.close()


def test_a_new_file_gets_the_store_tables(tmp_path: Path, statements: list[str]) -> None:
    saves_and_loads(Store(f"sqlite:///{tmp_path}/runs.db"))
    assert {EVENTS_TABLE, SNAPSHOTS_TABLE} <= tables(tmp_path / "runs.db")
    assert len(creates(statements)) == 2  # one per recorder


def test_opening_a_store_that_exists_creates_nothing(tmp_path: Path, statements: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    Store(url).close()
    statements.clear()
    store = Store(url)
    opening = list(statements)
    saves_and_loads(store)
    assert creates(statements) == []
    # eventsourcing's journal-mode check, then the tables' (one statement, no transaction)
    assert len(opening) == 2 and "sqlite_master" in opening[1], opening


@pytest.mark.parametrize("missing", [EVENTS_TABLE, SNAPSHOTS_TABLE])
def test_a_file_that_lacks_a_table_gets_it(tmp_path: Path, missing: str) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    Store(url).close()
    with sqlite3.connect(tmp_path / "runs.db") as conn:
        conn.execute(f"DROP TABLE {missing}")
    saves_and_loads(Store(url))
    assert missing in tables(tmp_path / "runs.db")


def test_a_store_opened_without_snapshots_gets_their_table_when_they_are_turned_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/runs.db"
    Store(url, snapshot_every=None).close()
    assert SNAPSHOTS_TABLE not in tables(tmp_path / "runs.db")
    Store(url, snapshot_every=None).close()  # events only, as before: nothing to create
    saves_and_loads(Store(url))
    assert SNAPSHOTS_TABLE in tables(tmp_path / "runs.db")
