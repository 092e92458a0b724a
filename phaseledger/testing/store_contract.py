"""The contract of a store backend, as test cases to subclass.

Every kind of store (memory, SQLite, PostgreSQL, and any backend added later) keeps the
same promises: gapless, optimistic appends; snapshots decided inside the append and used
when loading; a run index that follows the log; run leases; a readable notification log;
deletion for retention; and database errors that come out as phaseledger's own. As
eventsourcing ships its recorders' test cases, phaseledger ships these: a backend's
author subclasses :class:`StoreContract`, names the factory, and runs them::

    from phaseledger.testing import store_contract

    class TestMyStore(store_contract.StoreContract):
        def create_store(self, *, snapshot_every=100):
            return Store("mydb://...", snapshot_every=snapshot_every)

Import the module rather than the class, so the test runner does not collect the
abstract class itself. The cases are :mod:`unittest` test cases (pytest runs them too).
"""

from __future__ import annotations

import asyncio
import time
import unittest
from abc import abstractmethod
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from phaseledger.domain.errors import ConcurrencyConflict, RunBusy, RunNotFound, StoreUnavailable
from phaseledger.domain.run import WorkflowRun
from phaseledger.store.eventstore import PendingEvents, Store
from phaseledger.store.leasebook import DriverId

__all__ = ["StoreContract", "add_signals", "new_run"]

_WAIT = 10.0
"""Seconds a case waits for something asynchronous (a listener's notification)."""


def new_run(run_id: str, workflow: str = "contract") -> WorkflowRun:
    """A run that has just started (its ``RunStarted`` event pending)."""
    return WorkflowRun.begin(run_id, workflow=workflow, workflow_version=1,
                               input={}, parent=None)


def add_signals(run: WorkflowRun, n: int) -> PendingEvents:
    """Record ``n`` signals on ``run`` and collect its pending events."""
    for i in range(n):
        run.trigger_event(WorkflowRun.SignalReceived, signal_id=f"{run.version}-{i}", name="go", payload={"i": i})
    return run.collect_events()


class StoreContract(unittest.TestCase):
    """What every store backend must do. Subclass it and implement :meth:`create_store`."""

    unavailable_when_closed: ClassVar[bool] = True
    """Whether a closed store can fail (False for stores that live in memory: nothing to lose)."""

    @abstractmethod
    def create_store(self, *, snapshot_every: int | None = 100) -> Store:
        """A new, empty store of the backend under test (closed by the case)."""

    def open_store(self, *, snapshot_every: int | None = 100) -> Store:
        """:meth:`create_store`, closed when the case ends."""
        store = self.create_store(snapshot_every=snapshot_every)
        self.addCleanup(store.close)
        return store

    def started(self, store: Store, run_id: str, signals: int = 0, workflow: str = "contract") -> WorkflowRun:
        """A run saved in ``store`` with ``signals`` signals after its start."""
        run = new_run(run_id, workflow)
        store.save(run)
        if signals:
            store.append(add_signals(run, signals), run=run)
        return run

    # -- appending and reading back --------------------------------------------------------

    def test_appended_events_read_back_in_order_with_gapless_versions(self) -> None:
        store = self.open_store()
        run = self.started(store, "r1", signals=3)
        events = store.events("r1")
        self.assertEqual([e.originator_version for e in events], [1, 2, 3, 4])
        self.assertIsInstance(events[0], WorkflowRun.RunStarted)
        self.assertEqual(store.events("r1", gt=2), events[2:])
        self.assertEqual(store.events("r1", gt=1, limit=1), events[1:2])
        loaded = store.load("r1")
        self.assertEqual((loaded.version, loaded.inbox), (run.version, run.inbox))
        self.assertEqual(store.load("r1", version=2).version, 2)
        self.assertTrue(store.exists("r1"))
        self.assertFalse(store.exists("r2"))
        self.assertEqual(list(store.run_ids()), ["r1"])

    def test_an_unknown_run_is_not_found(self) -> None:
        store = self.open_store()
        with self.assertRaises(RunNotFound):
            store.load("missing")
        with self.assertRaises(RunNotFound):
            store.events("missing")

    def test_a_stale_append_conflicts_and_writes_nothing(self) -> None:
        store = self.open_store()
        self.started(store, "r1")
        mine, theirs = store.load("r1"), store.load("r1")
        store.append(add_signals(theirs, 1), run=theirs)
        with self.assertRaises(ConcurrencyConflict):
            store.append(add_signals(mine, 2), run=mine)
        self.assertEqual([e.originator_version for e in store.events("r1")], [1, 2])

    def test_appends_from_an_event_loop_keep_their_order_and_conflicts(self) -> None:
        store = self.open_store()

        async def appends() -> list[int]:
            run = new_run("r1")
            ids = [await store.append_async(run.collect_events(), run=run)]
            for n in (1, 3, 1):
                ids.append(await store.append_async(add_signals(run, n), run=run))
            stale = store.load("r1")
            await store.append_async(add_signals(run, 1), run=run)
            with self.assertRaises(ConcurrencyConflict):
                await store.append_async(add_signals(stale, 1), run=stale)
            return ids

        ids = asyncio.run(appends())
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(store.load("r1").version, 7)

    # -- snapshots -------------------------------------------------------------------------

    def test_snapshots_are_taken_inside_the_append_and_used_on_load(self) -> None:
        store = self.open_store(snapshot_every=2)
        run = self.started(store, "r1", signals=4)  # versions 1..5: snapshots due at 2 and 4
        self.assertTrue(store.snapshotting)
        self.assertTrue(store.has_snapshot("r1", 4))
        self.assertEqual(store.load("r1").inbox, run.inbox)
        removed_events, _ = store.delete_events("r1", below=4)  # only the snapshot stands for 2 and 3
        self.assertEqual(removed_events, 2)
        self.assertEqual(store.load("r1").inbox, run.inbox)
        self.assertEqual(store.load("r1", version=4).version, 4)

    def test_without_snapshots_none_are_stored(self) -> None:
        store = self.open_store(snapshot_every=None)
        self.started(store, "r1", signals=4)
        self.assertFalse(store.snapshotting)
        self.assertFalse(store.has_snapshot("r1", 4))
        self.assertEqual(store.load("r1").version, 5)

    # -- the notification log --------------------------------------------------------------

    def test_the_log_lists_rows_in_order_after_a_position(self) -> None:
        store = self.open_store()
        self.assertEqual(store.max_notification_id(), 0)
        self.started(store, "r1", signals=2)
        self.started(store, "r2")
        rows = store.notifications(None, 10)
        self.assertEqual([(str(r.originator_id), r.originator_version) for r in rows],
                         [("r1", 1), ("r1", 2), ("r1", 3), ("r2", 1)])
        ids = [r.id for r in rows]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(store.max_notification_id(), ids[-1])
        self.assertEqual([r.id for r in store.notifications(ids[1], 2)], ids[2:4])
        started = [store.started_topic]
        self.assertEqual([r.id for r in store.notifications(None, 10, started)], [ids[0], ids[3]])
        self.assertEqual(store.count_notifications(ids[0], started), 1)
        self.assertEqual(store.runs_in(rows), {"r1": 3, "r2": 1})
        self.assertEqual([e.originator_id for e in store.started_events()], ["r1", "r2"])

    def test_a_listener_hears_of_new_events_or_the_store_says_to_poll(self) -> None:
        store = self.open_store()

        async def listen() -> None:
            heard = asyncio.Event()
            listener = store.listener(heard.set)
            if listener is None:
                return  # this backend cannot tell: workers poll
            listener.start()
            try:
                await asyncio.wait_for(listener.listening.wait(), _WAIT)
                heard.clear()
                run = new_run("r1")
                await store.append_async(run.collect_events(), run=run)
                await asyncio.wait_for(heard.wait(), _WAIT)
            finally:
                await listener.close()

        asyncio.run(listen())

    # -- the run index ---------------------------------------------------------------------

    def test_the_run_index_lists_runs_and_finds_the_due_ones(self) -> None:
        store = self.open_store()
        self.started(store, "running")
        self.started(store, "other", workflow="elsewhere")
        later = datetime.now(UTC) + timedelta(hours=1)
        sleeping = self.started(store, "sleeping")
        sleeping.trigger_event(WorkflowRun.RunSuspended, reason="sleep", until=later, signal=None)
        store.save(sleeping)
        cancelled = self.started(store, "cancelled")
        cancelled.trigger_event(WorkflowRun.RunCancelled, reason="test")
        store.save(cancelled)

        index = store.run_index()
        self.assertEqual(index.catch_up_fully(), store.max_notification_id())
        self.assertTrue(index.caught_up())
        self.assertEqual([row.run_id for row in index.rows()], ["cancelled", "other", "running", "sleeping"])
        cancelled_row = index.get("cancelled")
        assert cancelled_row is not None
        self.assertEqual(cancelled_row.status, "cancelled")
        self.assertIsNone(index.get("missing"))
        now, keys = datetime.now(UTC), ["contract@1"]
        self.assertEqual([run_id for run_id, _ in index.runnable(now, keys, 10)], ["running"])
        self.assertEqual([run_id for run_id, _ in index.runnable(later, keys, 10)], ["running", "sleeping"])
        self.assertEqual(len(index.runnable(later, keys, 1)), 1)
        self.assertEqual(index.runnable(now, ["elsewhere@1"], 10), [("other", 1)])
        self.assertIsNotNone(index.next_wake(keys))
        self.assertIsNone(index.next_wake(["nothing@1"]))
        self.assertEqual(index.rebuild(), store.max_notification_id())

    # -- leases ----------------------------------------------------------------------------

    def test_a_lease_is_held_renewed_released_and_taken_over_once_expired(self) -> None:
        store = self.open_store()
        self.started(store, "r1")
        book = store.lease_book()
        me, other = DriverId.here(), DriverId(owner="elsewhere:1:x", host="elsewhere", pid=1, proc_start=None)
        book.acquire("r1", me, 30)
        lease = book.get("r1")
        assert lease is not None
        self.assertEqual(lease.owner, me.owner)
        with self.assertRaises(RunBusy):
            book.acquire("r1", other, 30)
        self.assertEqual(book.renew(me.owner, ["r1", "r2"], 30), frozenset({"r1"}))
        self.assertEqual(book.renew(other.owner, ["r1"], 30), frozenset())
        book.release(me.owner, "r1", fence=1)
        self.assertIsNone(book.get("r1"))
        book.acquire("r1", other, 0.05)  # free again: anyone takes it
        with self.assertRaises(RunBusy):
            book.acquire("r1", me, 30)
        time.sleep(0.2)  # the other driver stopped renewing
        book.acquire("r1", me, 30)
        self.assertEqual(set(book.held()), {"r1"})
        self.assertEqual(book.held(["r1"])["r1"].owner, me.owner)

    def test_a_lease_is_taken_from_its_holder_only_when_asked(self) -> None:
        store = self.open_store()
        book = store.lease_book()
        me, other = DriverId.here(), DriverId(owner="elsewhere:1:x", host="elsewhere", pid=1, proc_start=None)
        book.acquire("r1", other, 30)
        book.acquire("r1", me, 30, steal=True)
        lease = book.get("r1")
        assert lease is not None
        self.assertEqual(lease.owner, me.owner)
        self.assertEqual(book.renew(other.owner, ["r1"], 30), frozenset())

    # -- deletion --------------------------------------------------------------------------

    def test_deleting_removes_a_run_or_the_middle_of_its_history(self) -> None:
        store = self.open_store(snapshot_every=None)
        self.started(store, "r1", signals=4)
        self.started(store, "r2", signals=1)
        self.assertEqual(store.delete_events("r1", below=4), (2, 0))
        self.assertEqual([e.originator_version for e in store.events("r1")], [1, 4, 5])
        self.assertEqual(store.delete_events("r2"), (2, 0))
        with self.assertRaises(RunNotFound):
            store.load("r2")
        self.assertEqual(list(store.run_ids()), ["r1"])

    # -- errors ----------------------------------------------------------------------------

    def test_a_closed_store_raises_store_unavailable(self) -> None:
        if not self.unavailable_when_closed:
            self.skipTest("this store cannot be unavailable")
        store = self.create_store()
        self.started(store, "r1")
        store.close()
        with self.assertRaises(StoreUnavailable) as caught:
            store.load("r1")
        self.assertIn(store.url.redacted, str(caught.exception))
        with self.assertRaises(StoreUnavailable):
            store.save(new_run("r2"))

