"""The store contract (phaseledger.testing.store_contract) on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from phaseledger.store.eventstore import Store
from phaseledger.testing import store_contract
from tests.conftest import fresh_postgres_url


class TestMemoryStore(store_contract.StoreContract):
    unavailable_when_closed = False

    def create_store(self, *, snapshot_every: int | None = 100) -> Store:
        return Store("memory://", snapshot_every=snapshot_every)


class TestSQLiteStore(store_contract.StoreContract):
    def create_store(self, *, snapshot_every: int | None = 100) -> Store:
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        return Store(f"sqlite:///{Path(directory.name) / 'runs.db'}", snapshot_every=snapshot_every)


@pytest.mark.postgres
class TestPostgresStore(store_contract.StoreContract):
    """Each case in a schema of its own, dropped afterwards."""

    def create_store(self, *, snapshot_every: int | None = 100) -> Store:
        urls: Iterator[str] = fresh_postgres_url()
        url = next(urls)
        self.addCleanup(next, urls, None)  # drops the schema (after the store is closed: cleanups run last-first)
        return Store(url, snapshot_every=snapshot_every)
