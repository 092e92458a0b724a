"""Driving runs in this process, each under its lease in the store.

Every drive of a run goes through :meth:`Drives.drive`: ``engine.run``, ``resume``,
``retry``, forks that drive, durable agents, the CLI and workers. It takes the run's lease
first (unless a worker's claim holds it), keeps it alive with a heartbeat every third of
``engine.lease_seconds``, and gives it back when the drive ends. See
:mod:`phaseledger.store.leasebook` for the leases themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from phaseledger.domain.errors import LeaseLost, PhaseledgerError
from phaseledger.domain.run import WorkflowRun
from phaseledger.engine.control import RunControl
from phaseledger.engine.driver import RunDriver
from phaseledger.engine.stops import Superseded
from phaseledger.engine.views import Run, run_view
from phaseledger.store.leasebook import LeaseBook

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine

T = TypeVar("T")
log = logging.getLogger("phaseledger")


class Drives:
    """The drives of runs in this process by one engine: leases taken, renewed and given back.

    Time travel, durable agents and workers drive runs through it; ``control`` is what the
    drives and the engine's workers share (tasks, lease holders, stop requests).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.control = RunControl()
        self._lease_book: LeaseBook | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def lease_book_now(self) -> LeaseBook:
        """The store's lease book (opened on first use; blocking)."""
        if self._lease_book is None:
            self._lease_book = self.engine.store.lease_book()
        return self._lease_book

    async def stop_all(self) -> None:
        """Cancel the drives still in progress here and wait until they gave back their leases.

        A caller cancelled while awaiting a drive (Ctrl-C in ``asyncio.run``) leaves the
        shielded drive running; it must stop while the store is still open, as after a
        crash: the step in flight is not recorded and runs again on resume.
        """
        drives = [task for task in self.control.active.values() if not task.done()]
        for task in drives:
            task.cancel()
        if drives:
            await asyncio.gather(*drives, return_exceptions=True)

    def close(self) -> None:
        """Stop the heartbeat (the leases it renewed then expire by themselves)."""
        if self._heartbeat is not None and not self._heartbeat.done():
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                self._heartbeat.cancel()

    async def drive(self, run_id: str, run: WorkflowRun | None = None) -> Run:
        """Drive a run under its lease (taken here unless the caller or a worker holds it)."""
        if run_id in self.control.active:
            return await asyncio.shield(self.control.active[run_id])
        if self.control.holder(run_id) is None:
            await self.take(run_id, steal=False)
        task = asyncio.ensure_future(self._drive_held(run_id, run))
        self.control.active[run_id] = task

        def done(_: object) -> None:
            self.control.active.pop(run_id, None)
            self.control.drop(run_id)

        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                done(task)
            else:
                task.add_done_callback(done)

    async def _drive_held(self, run_id: str, run: WorkflowRun | None) -> Run:
        """Drive the run, then give back the lease this engine took (a worker releases its own)."""
        version = 0
        try:
            if run is None:
                run = await self.engine.store.call(self.engine.store.load, run_id)
            workflow = self.engine.registry.get(run.workflow, run.workflow_version)
            driver = RunDriver(self.engine, run, workflow)
            try:
                await driver.drive()
            finally:
                version = driver.run.version
            return run_view(driver.run, workflow.state_model)
        except LeaseLost:
            self.control.drop(run_id)  # not ours any more: nothing to release
            raise
        finally:
            if self.control.holder(run_id) == self.engine.driver_id.owner:
                self.control.drop(run_id)
                await self.release(run_id, version)

    async def lease_book(self) -> LeaseBook:
        """The store's lease book, opened off the loop on first use."""
        if self._lease_book is None:
            return await self.engine.store.call(self.lease_book_now)
        return self._lease_book

    async def take(self, run_id: str, *, steal: bool) -> None:
        """Take the run's lease for this engine (:class:`RunBusy` if another live driver has it)."""
        if self.control.holder(run_id) is not None:
            return  # held here already: a worker's claim, or this engine's own
        asked = time.monotonic()
        if not self._acquire_on_loop(run_id, steal):
            await self.engine.store.call(self._acquire_now, run_id, steal)
        self._held(run_id, asked)

    def _acquire_on_loop(self, run_id: str, steal: bool) -> bool:
        """Take the run's lease on the loop's own thread if the store can without waiting (see
        :meth:`~phaseledger.store.leasebook.LeaseBook.acquire_on_loop`); False: take it in a thread."""
        return self.engine.store.leases_on_loop and self.lease_book_now().acquire_on_loop(
            run_id, self.engine.driver_id, self.engine.lease_seconds, steal=steal)

    def _acquire_now(self, run_id: str, steal: bool) -> None:
        """Take the run's lease in the store (blocking; the lease book is opened on first use)."""
        self.lease_book_now().acquire(run_id, self.engine.driver_id, self.engine.lease_seconds, steal=steal)

    def _held(self, run_id: str, asked: float) -> None:
        """Note the lease taken (asked for at ``asked``, monotonic) and keep it alive."""
        self.control.hold(run_id, self.engine.driver_id.owner, self.engine.lease_seconds, asked)
        if self._heartbeat is None or self._heartbeat.done() or self._heartbeat.get_loop() is not asyncio.get_running_loop():
            self._heartbeat = asyncio.ensure_future(self._beat())

    async def take_and_load(self, run_id: str, steal: bool, check: Callable[[WorkflowRun], None]) -> WorkflowRun:
        """Take the run's lease, then load the run and ``check`` it (the lease is let go if that raises).

        Lease and load are one trip off the loop: a resume waits for the store once, not twice.
        On a SQLite store, with no other run driven in this process, they are made on the
        loop's own thread instead, when the lease needs no wait (see
        :meth:`~phaseledger.Store.load_on_loop`): no thread to wake and wait for.
        """
        store = self.engine.store
        held = self.control.holder(run_id) is not None  # a worker's claim, or this engine's own
        taken = False
        asked = time.monotonic()

        def take_then_load() -> WorkflowRun:
            nonlocal taken
            if not held:
                self._acquire_now(run_id, steal)
                taken = True
            return store.load(run_id)

        store.ready_appends()  # a resume appends next: its connection is made meanwhile
        try:
            try:
                if not held and self._acquire_on_loop(run_id, steal):
                    taken = True
                    run = await store.load_on_loop(run_id)
                else:
                    run = await store.call(take_then_load)
            finally:
                if taken:
                    self._held(run_id, asked)
            check(run)
            self.engine.registry.get(run.workflow, run.workflow_version)
        except BaseException:
            await self.let_go(run_id, 0)
            raise
        return run

    async def let_go(self, run_id: str, version: int) -> None:
        """Release the lease this engine took for a run it did not drive after all."""
        if self.control.holder(run_id) != self.engine.driver_id.owner or run_id in self.control.active:
            return
        self.control.drop(run_id)
        await self.release(run_id, version)

    async def release(self, run_id: str, version: int) -> None:
        """Give back this engine's lease of a run whose drive ended at ``version`` (logged if it fails)."""
        try:
            await self.engine.store.call((await self.lease_book()).release, self.engine.driver_id.owner, run_id, version)
        except PhaseledgerError as exc:  # it expires by itself
            log.warning("could not release the lease of run %s: %s", run_id, exc)

    async def _beat(self) -> None:
        """Renew this engine's leases every third of their length while it holds any."""
        while True:
            await asyncio.sleep(self.engine.lease_seconds / 3)
            held = self.control.held_by(self.engine.driver_id.owner)
            if not held:
                return
            asked = time.monotonic()
            try:
                kept = await self.engine.store.call((await self.lease_book()).renew, self.engine.driver_id.owner, held,
                                              self.engine.lease_seconds)
            except Exception as exc:  # the store is down: runs stop at a boundary once their lease may be gone
                log.warning("could not renew the leases of %d run(s): %s", len(held), exc)
                continue
            for run_id in held:
                if self.control.holder(run_id) != self.engine.driver_id.owner:
                    continue  # that drive ended meanwhile
                if run_id in kept:
                    self.control.hold(run_id, self.engine.driver_id.owner, self.engine.lease_seconds, asked)
                else:
                    log.warning("run %s was taken over by another driver; stopping it here", run_id)
                    self.control.interrupt(run_id, Superseded)
