"""One factory per kind of store, behind :class:`Backend`: everything a store is made of.

A :class:`~phaseledger.store.eventstore.Store` asks its backend for each part it needs:
the persistence of its eventsourcing application, how a blocking call leaves the event
loop, the run index, the lease book, the deleter used by retention, the infrastructure
of the report view, the listener that wakes workers on new events, and the count of the
log's rows. Nothing outside this package asks which kind of store it is talking to.

:func:`open_backend` picks the factory of a store URL. A third backend subclasses
:class:`Backend`, and proves itself with the contract test cases of
:mod:`phaseledger.testing.store_contract`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from phaseledger.store.backends.base import Backend
from phaseledger.store.backends.memory import MemoryBackend
from phaseledger.store.backends.postgres import PostgresBackend
from phaseledger.store.backends.sqlite import SQLiteBackend

if TYPE_CHECKING:
    from phaseledger.store.eventstore import StoreURL

BACKENDS: dict[str, type[Backend]] = {b.kind: b for b in (MemoryBackend, SQLiteBackend, PostgresBackend)}
"""The backend of each kind of store URL."""


def open_backend(url: StoreURL) -> Backend:
    """The backend of a store URL."""
    return BACKENDS[url.backend](url)
