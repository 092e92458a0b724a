"""The naive eventsourcing baseline of the comparison: what the library under phaseledger
costs when used directly, one aggregate per run, one event per step, ``save()`` after each.

No engine, no journal, no snapshots, no notifications to workers: a step is the
aggregate's event and the application's ``save``, so a step is made durable before the
next starts, as in the other systems. Recovery reads the aggregate back (all its events)
and goes on from the first step it has not recorded.
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks._harness import postgres_conninfo


class NaiveRun(Aggregate):
    """A run: how many steps it takes, how many are recorded, and the last result."""

    @staticmethod
    def create_id(run_id: str) -> UUID:
        """The same aggregate id for the same run id, so a new process finds the run."""
        return uuid5(NAMESPACE_URL, f"naive-run/{run_id}")

    @event("Started")
    def __init__(self, run_id: str, n: int) -> None:
        self.run_id = run_id
        self.n = n
        self.done = 0
        self.last = 0

    @event("StepRecorded")
    def record(self, i: int, result: int) -> None:
        """Record step ``i``'s result."""
        self.done = i + 1
        self.last = result


def application(backend: str, store: str) -> Application:
    """An eventsourcing application on the SQLite file or the PostgreSQL schema ``store``."""
    env: dict[str, Any]
    if backend == "sqlite":
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": store}
    else:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(postgres_conninfo(store))
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": info.get("dbname", "postgres"),
            "POSTGRES_HOST": info.get("host", "127.0.0.1"),
            "POSTGRES_PORT": str(info.get("port", 5432)),
            "POSTGRES_USER": info.get("user", "postgres"),
            "POSTGRES_PASSWORD": info.get("password", ""),
            "POSTGRES_SCHEMA": store.rsplit("schema=", 1)[1],
        }
    return Application(env={k: str(v) for k, v in env.items()})
