"""Workers: drive every runnable run of a store, many at once on one asyncio loop.

A run is *runnable* when it is new, was interrupted by a crash, was woken by a signal or a
due timer, or is due for a retry after backoff. A :class:`Worker` finds them in the run
index (:mod:`.runindex`, which follows the notification log, so none is ever missed),
claims them (:mod:`.leases`), drives up to ``concurrency`` of them at once with
``engine.resume`` and releases each when its drive ends (completed, failed, suspended
again, cancelled, or taken over). An idle worker looks again every ``poll_interval``
seconds, or as soon as new events are committed (:mod:`.wakeups`: ``LISTEN`` on
PostgreSQL, appends by the worker's own engine elsewhere).

On PostgreSQL any number of worker processes on any number of machines share a store;
the run of a worker that died is claimed again when its lease expires. SQLite and
``memory://`` stores take one worker process (a second one raises
:class:`~phaseledger.WorkerAlreadyRunning`).

A worker outlives its database: while the store is unavailable (dropped connections, a
server restarting or down for a while) it backs off (exponentially, capped, jittered)
and carries on once the store answers again, logging one warning when the outage starts
and one line when it ends. A drive stopped by the outage leaves its run to be claimed
again; releases that could not be written are written once the store is back.

Shutdown is graceful: on ``stop()`` or the first SIGTERM/SIGINT the worker claims nothing
more, lets every run it drives reach its next journal boundary (the step in flight
finishes and is recorded), commits, and releases the run for another worker. A second
signal, or ``stop(now=True)``, cancels the runs at once (the steps in flight will run
again elsewhere, as after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phaseledger.domain.errors import (
    ConcurrencyConflict,
    CorruptEvent,
    LeaseLost,
    PhaseledgerError,
    RunBusy,
    RunFinished,
    StoreUnavailable,
    UnknownWorkflow,
)
from phaseledger.domain.status import CANCELLED, COMPLETED, FAILED, RUNNING
from phaseledger.engine.stops import Cancelled, Released, Superseded
from phaseledger.store.faults import Backoff
from phaseledger.store.leasebook import DriverId
from phaseledger.store.listener import AppendListener
from phaseledger.store.runindex import RunIndex, open_run_index, workflow_key
from phaseledger.workers.claims import Claim, Leases, open_leases, worker_identity

if TYPE_CHECKING:
    from phaseledger.engine.engine import Engine

log = logging.getLogger("phaseledger.worker")


@dataclass
class WorkerStats:
    """What a worker did, returned by :meth:`Worker.run`."""

    claimed: int = 0
    """Runs claimed (a run claimed again after a suspension counts again)."""
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    suspended: int = 0
    """Drives that ended with the run waiting, sleeping or retrying later."""
    released: int = 0
    """Drives stopped by shutdown and left to another worker."""
    lost: int = 0
    """Claims another writer got to first (lease taken over, or a race on the log): nothing appended."""
    errors: int = 0
    """Drives that raised (logged); the run is held back for ``error_backoff`` seconds."""
    damaged: int = 0
    """Claimed runs found damaged (a stored row cannot be read): indexed as such and skipped
    until the row reads again (see :meth:`RunIndex.recheck_damaged`)."""
    store_errors: int = 0
    """Drives stopped because the store was unavailable; their runs are claimed again once it is back."""
    indexed: int = 0
    """Notifications of the log this worker indexed."""
    notified: int = 0
    """Wake-ups asked for by new events: PostgreSQL notifications, or appends by this worker's engine."""


class Worker:
    """Drives the runnable runs of an engine's store; build it with :meth:`Engine.worker`.

    Only runs of workflows registered with the engine are claimed, so workers with
    different workflows can share a PostgreSQL store.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
        error_backoff: float = 30.0,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise PhaseledgerError(f"a worker needs concurrency >= 1, got {concurrency}")
        if lease_seconds <= 0 or poll_interval <= 0 or error_backoff < 0:
            raise PhaseledgerError("lease_seconds and poll_interval must be > 0 and error_backoff >= 0")
        self.engine = engine
        self.concurrency = concurrency
        self.lease_seconds = float(lease_seconds)
        """How long a claim lasts unless renewed; renewed every third of it while driving."""
        self.poll_interval = float(poll_interval)
        """How often an idle worker looks for runnable runs when no wake-up comes first (see :mod:`.wakeups`)."""
        self.error_backoff = float(error_backoff)
        self.id = worker_id or f"{worker_identity()}:{uuid.uuid4().hex[:8]}"
        self.driver = DriverId.here(self.id)
        """How this worker names itself in run leases (its id, host and process)."""
        self.stats = WorkerStats()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._started = asyncio.Event()
        self._ended = asyncio.Event()
        self._stopped_early: BaseException | None = None
        self._stopping = False
        self._running = False
        self._index: RunIndex | None = None
        self._leases: Leases | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listener: AppendListener | None = None
        """On PostgreSQL while running: the connection that wakes this worker when events are committed."""
        self.outage = engine.outage
        """Whether the store is out, as this worker and its engine's drivers see it (logs each outage once)."""
        self._backoff = Backoff(initial=min(self.poll_interval, 0.25), cap=max(self.poll_interval, 5.0))
        self._unreleased: dict[str, tuple[int, float]] = {}
        """Runs whose release failed (store unavailable): run id -> (fence, hold), written once it is back."""

    def __repr__(self) -> str:
        return f"Worker({self.id!r}, store={self.engine.store.url.redacted!r}, concurrency={self.concurrency})"

    @property
    def active_runs(self) -> list[str]:
        """The ids of the runs this worker is driving now."""
        return list(self._tasks)

    @property
    def running(self) -> bool:
        """True between the start and the end of :meth:`run`."""
        return self._running

    async def wait_until_started(self) -> None:
        """Return once :meth:`run` has opened the run index and taken the store (or its leases).

        Raises :class:`~phaseledger.PhaseledgerError` if the worker stopped before that.
        """
        waiters = [asyncio.ensure_future(self._started.wait()), asyncio.ensure_future(self._ended.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self._started.is_set():
            raise PhaseledgerError(f"worker {self.id} stopped before it started") from self._stopped_early

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, until_idle: bool = False, handle_signals: bool = True) -> WorkerStats:
        """Drive runnable runs until :meth:`stop` (or, with ``until_idle``, until none is runnable now).

        ``until_idle`` returns once this worker drives nothing and the index, caught up with
        the log, shows no run it could claim now (runs sleeping until later, waiting for a
        signal, or held by other workers do not count). ``handle_signals`` makes SIGTERM and
        SIGINT stop the worker gracefully (a second one: at once), where the loop allows it.
        Raises :class:`~phaseledger.WorkerAlreadyRunning` when another worker owns a SQLite
        or memory:// store, :class:`~phaseledger.StoreUnavailable` when the store cannot be
        reached at start.
        """
        if self._running:
            raise PhaseledgerError(f"worker {self.id} is already running")
        self._running, self._stopping, self._stopped_early = True, False, None
        self._wakeup.clear()
        self._started.clear()
        self._ended.clear()
        removers = self._install_signal_handlers() if handle_signals else []
        renewer: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        stop_listening = self.engine.hooks.listen_to_appends(self._notified)
        self.outage.who = f"worker {self.id}"
        try:
            self._index = await self._call(open_run_index, self.engine.store)
            self._leases = await self._call(open_leases, self._index, self.driver)
            self.listener = self._listener()
            if self.listener is not None:
                self.listener.start()
            renewer = asyncio.ensure_future(self._renew_forever())
            self._started.set()
            log.info("worker %s started on %s (concurrency %d)", self.id, self.engine.store.url.redacted,
                     self.concurrency)
            while not self._stopping:
                claimed = await self._poll()
                if claimed is None:  # the store is unavailable: back off, then try again
                    await self._sleep(self._backoff.next())
                    continue
                self._backoff.reset()
                if until_idle and not self._tasks and not claimed and await self._caught_up():
                    break
                if claimed and len(self._tasks) < self.concurrency:
                    continue  # there may be more runnable runs than one claim took
                await self._sleep(self.poll_interval)
        except BaseException as exc:
            if not self._started.is_set():
                self._stopped_early = exc
            raise
        finally:
            await self._shutdown()
            stop_listening()
            if self.listener is not None:
                await self.listener.close()
            self.listener = None
            if renewer is not None:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer
            if self._leases is not None:
                with contextlib.suppress(StoreUnavailable):  # else their leases expire by themselves
                    await self._release_pending()
                self._leases.close()
            self._leases = None
            for remove in removers:
                remove()
            self._running = False
            self._ended.set()
            log.info("worker %s stopped: %s", self.id, self.stats)
        return self.stats

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming runs; the runs being driven stop at their next journal boundary.

        With ``now=True`` they are cancelled at once instead (a step in flight will run
        again on the next worker, as after a crash). Safe to call from a signal handler.
        """
        if now:
            for run_id in list(self._tasks):
                active = self.engine.control.active.get(run_id)
                if active is not None:
                    active.cancel()
                self._tasks[run_id].cancel()
        self._stopping = True
        for run_id in list(self._tasks):
            self.engine.control.interrupt(run_id, Released)
        self._wakeup.set()

    def _install_signal_handlers(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        removers = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (ValueError, RuntimeError, NotImplementedError, AttributeError):
                continue  # not the main thread, or a loop without signal support
            removers.append(lambda s=signum: loop.remove_signal_handler(s))
        return removers

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("worker %s: second %s, cancelling %d run(s) now", self.id, name, len(self._tasks))
            self.stop(now=True)
        else:
            log.info("worker %s: %s, finishing the current step of %d run(s) and releasing them",
                     self.id, name, len(self._tasks))
            self.stop()

    async def _shutdown(self) -> None:
        self._stopping = True
        for run_id in list(self._tasks):
            self.engine.control.interrupt(run_id, Released)
        while self._tasks:
            await asyncio.wait(list(self._tasks.values()))

    # -- wake-ups ------------------------------------------------------------------------

    def _listener(self) -> AppendListener | None:
        """A LISTEN connection on the store's notification channel (PostgreSQL only)."""
        listener = self.engine.store.listener(self._notified)
        if listener is None:
            return None
        listener.outage.who = f"worker {self.id}: LISTEN connection"
        return listener

    def _notified(self) -> None:
        """Wake the loop: new events were committed (many calls before it wakes make one catch-up)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            if len(self._tasks) < self.concurrency:  # when full, the end of a drive wakes the loop
                self.stats.notified += 1
                self._wakeup.set()
        else:  # an engine call from another thread or loop
            loop.call_soon_threadsafe(self._notified)

    # -- the loop ------------------------------------------------------------------------

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await self.engine.store.call(fn, *args)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
        self._wakeup.clear()

    def _keys(self) -> list[str]:
        return [workflow_key(name, version) for (name, version) in self.engine.registry.workflows]

    async def _poll(self) -> int | None:
        """Index the log, then claim what fits; return how many runs were claimed.

        None when the store is unavailable (reported to :attr:`outage`). Never raises an
        ``Exception``: the loop must outlive whatever goes wrong in one pass.
        """
        assert self._index is not None and self._leases is not None
        try:
            self.stats.indexed += await self._call(self._index.catch_up_fully)
            await self._release_pending()
            free = self.concurrency - len(self._tasks)
            if free <= 0 or self._stopping:
                self.outage.ok()
                return 0
            claims: list[Claim] = await self._call(
                self._leases.claim, self.id, free, self.lease_seconds, self._keys()
            )
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            return None
        except Exception:
            log.exception("worker %s: looking for runs failed; trying again", self.id)
            return None
        self.outage.ok()
        for claim in claims:
            self._start(claim)
        return len(claims)

    async def _release_pending(self) -> None:
        """Write the releases that failed while the store was unavailable."""
        assert self._leases is not None
        for run_id, (fence, hold) in list(self._unreleased.items()):
            if run_id not in self._tasks:  # not claimed again by this worker since
                await self._call(self._leases.release, self.id, run_id, fence, hold)
            del self._unreleased[run_id]

    async def _caught_up(self) -> bool:
        assert self._index is not None
        try:
            return bool(await self._call(self._index.caught_up))
        except StoreUnavailable as exc:
            self.outage.failed(exc)
            return False

    def _start(self, claim: Claim) -> None:
        self.stats.claimed += 1
        log.info("worker %s claimed run %s (version %d)", self.id, claim.run_id, claim.version)
        if self._leases is not None and self._leases.claims_are_run_leases:
            self.engine.control.hold(claim.run_id, self.id, self.lease_seconds, time.monotonic())
        task = asyncio.ensure_future(self._drive(claim))
        self._tasks[claim.run_id] = task

        def done(_: object) -> None:
            if self._tasks.get(claim.run_id) is task:
                del self._tasks[claim.run_id]
            self._wakeup.set()

        task.add_done_callback(done)

    async def _drive(self, claim: Claim) -> None:
        """Drive one claimed run, then release it with the version it was left at."""
        run_id, fence, hold = claim.run_id, claim.version, 0.0
        try:
            view = await self.engine.resume(run_id)
        except ConcurrencyConflict:  # another writer took the run between claim and resume
            self.stats.lost += 1
            fence += 1
        except LeaseLost:  # taken over (its new owner holds the lease), or the lease ran out unrenewed:
            self.stats.lost += 1  # released at the claimed version, so the run is claimed again
        except RunBusy as exc:  # another process drives it (engine.run, resume): leave it to that one
            self.stats.lost += 1
            hold = min(self.poll_interval, 1.0)
            log.info("worker %s: %s", self.id, exc)
        except RunFinished:  # the index had not seen the end of the run yet
            fence += 1
        except CorruptEvent as exc:  # not runnable until repaired: the index says so from now on
            self.stats.damaged += 1
            hold = self.error_backoff
            log.error("worker %s skips run %s: %s", self.id, run_id, exc)
            try:
                await self._call(self._index.mark_damaged, run_id)  # type: ignore[union-attr]
            except Exception as err:  # noqa: BLE001 - the hold keeps the run back meanwhile
                log.warning("worker %s could not index run %s as damaged: %s", self.id, run_id, err)
        except asyncio.CancelledError:
            self.stats.released += 1
            raise
        except StoreUnavailable as exc:  # logged once per outage; the run is claimed again once it is back
            self.stats.store_errors += 1
            self.outage.failed(exc)
            hold = 0.0 if exc.transient else self.error_backoff
            log.info("worker %s: run %s stopped, the store being unavailable; it will be claimed again",
                     self.id, run_id)
        except Exception as exc:
            self.stats.errors += 1
            hold = self.error_backoff
            if isinstance(exc, UnknownWorkflow):
                log.error("worker %s cannot drive run %s: %s", self.id, run_id, exc)
            else:
                log.exception("worker %s: run %s raised; holding it back for %.0fs", self.id, run_id, hold)
        else:
            fence = max(fence, view.version)
            self._count(view.status)
            log.info("worker %s drove run %s: %s, phase %s, version %d", self.id, run_id, view.status,
                     view.phase, view.version)
            if view.version <= claim.version and not view.finished and view.status != RUNNING:
                hold = min(self.poll_interval, 1.0)  # not due by this worker's clock yet
        finally:
            if self.engine.control.holder(run_id) == self.id:
                self.engine.control.drop(run_id)
            if self._leases is not None:
                try:
                    await self._call(self._leases.release, self.id, run_id, fence, hold)
                except StoreUnavailable as exc:  # written once the store is back (or the lease expires)
                    self.outage.failed(exc)
                    self._unreleased[run_id] = (fence, hold)

    def _count(self, status: str) -> None:
        if status == COMPLETED:
            self.stats.completed += 1
        elif status == FAILED:
            self.stats.failed += 1
        elif status == CANCELLED:
            self.stats.cancelled += 1
        elif status == RUNNING:  # stopped before the end: released at shutdown, or taken over
            if self._stopping:
                self.stats.released += 1
            else:
                self.stats.lost += 1
        else:
            self.stats.suspended += 1

    async def _renew_forever(self) -> None:
        """Renew the leases of the runs being driven; stop those taken over or cancelled."""
        assert self._leases is not None
        every = self.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            driving = dict(self._tasks)
            if not driving:
                continue
            asked = time.monotonic()
            try:
                renewal = await self._call(self._leases.renew, self.id, list(driving), self.lease_seconds)
            except StoreUnavailable as exc:
                self.outage.failed(exc)
                continue  # the runs stop at their next boundary once their deadline passes
            except Exception:  # the renewer must outlive anything one renewal meets
                log.exception("worker %s: renewing its leases failed; trying again", self.id)
                continue
            self.outage.ok()
            for run_id, task in driving.items():
                if self._tasks.get(run_id) is not task:
                    continue  # that drive ended meanwhile
                if run_id in renewal.cancelled:
                    self.engine.control.interrupt(run_id, Cancelled)
                elif run_id in renewal.kept:
                    if self.engine.control.holder(run_id) == self.id:
                        self.engine.control.hold(run_id, self.id, self.lease_seconds, asked)
                else:
                    log.warning("worker %s lost its lease on run %s; stopping it", self.id, run_id)
                    self.engine.control.interrupt(run_id, Superseded)
