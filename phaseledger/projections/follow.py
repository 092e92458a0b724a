"""Keeping the report tables up to date in the background.

Stores with subscriptions have eventsourcing's projection runners drive the
:class:`~phaseledger.projections.projection.ReportProjection`: a
:class:`~eventsourcing.projection.ProjectionRunner` with its own application and view
(PostgreSQL), or, for a store that exists only in this process (memory), a runner over the
store's own log and the reports' view. Either hands the projection every event its
subscription has already pulled from the log, up to ``batch_size``, applied in one
transaction with the position of the last: a follower behind the log catches up in
batches (one commit for many events) and one that keeps up applies each event as it comes.
Stores without subscriptions (SQLite) are followed by catching up in a loop, polling the log.

A follower survives errors: it keeps the last one in :attr:`Follower.error`, waits (with
exponential backoff, capped and jittered) and starts again from the position recorded in
the view (also after a rebuild made by another process). An outage of the store is
logged once when it starts and once when the follower is back, not at each attempt;
other errors are logged each time. A row of the log that cannot be read is not an error:
it reaches the projection as a placeholder (logged) and its position is recorded, so the
follower goes on past a damaged run.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Mapper
from eventsourcing.projection import BaseProjectionRunner, ProjectionRunner

from phaseledger.domain.errors import StoreUnavailable
from phaseledger.projections.errors import ProjectionReset
from phaseledger.projections.projection import TOPICS, ReportProjection
from phaseledger.projections.view import REPORT_VIEWS
from phaseledger.store import _internals
from phaseledger.store.eventstore import RunApplication
from phaseledger.store.faults import Backoff, Outage, store_errors
from phaseledger.store.mapper import SkippingMapper

if TYPE_CHECKING:
    from phaseledger.projections.reports import Reports

log = logging.getLogger(__name__)


class Follower(ABC):
    """A background thread applying new run events to the report tables until stopped."""

    def __init__(self, reports: Reports, interval: float) -> None:
        self.reports = reports
        self.interval = interval
        """Seconds between polls (SQLite) or between checks of a runner's health."""
        self.error: BaseException | None = None
        """The last error met (the follower retries after errors)."""
        self.outage = Outage(log, "report follower")
        """Whether the store is out, as this follower sees it (logs each outage once)."""
        self._backoff = Backoff(initial=interval, cap=max(interval, 10.0))
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="phaseledger-report-follower", daemon=True)

    def start(self) -> Follower:
        """Start the thread (done by :meth:`Reports.follow`)."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following and wait for the thread to finish its current transaction."""
        self._stopping.set()
        self._interrupt()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _interrupt(self) -> None:
        """Wake the thread up so it notices it is stopping."""

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run()
            except ProjectionReset:
                continue  # the tables were rebuilt: start again from their position
            except StoreUnavailable as exc:
                self.error = exc
                self.outage.failed(exc)
                self._stopping.wait(self._backoff.next())
            except Exception as exc:  # noqa: BLE001 - keep following; the error is logged and kept
                self.error = exc
                delay = self._backoff.next()
                log.warning("report follower failed, retrying in %.1fs: %s", delay, exc)
                self._stopping.wait(delay)

    def _progressed(self) -> None:
        """Note that the store answered: the backoff starts again from the interval."""
        self.outage.ok()
        self._backoff.reset()

    @abstractmethod
    def _run(self) -> None:
        """Apply events until stopped (returns, or raises to be retried after a backoff)."""


class PollingFollower(Follower):
    """Catches up, then waits ``interval`` seconds, until stopped (SQLite)."""

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.reports.catch_up()
            self._progressed()
            self._stopping.wait(self.interval)


_STALL_CHECK = 2.0
"""Seconds between checks that a subscribed follower is not standing still behind the log."""


class RunnerFollower(Follower):
    """Supervises an eventsourcing projection runner subscribed to the log (PostgreSQL, memory)."""

    def __init__(self, reports: Reports, interval: float, make_runner: Callable[[], BaseProjectionRunner[Any]]) -> None:
        super().__init__(reports, interval)
        self._make_runner = make_runner
        self._runner: BaseProjectionRunner[Any] | None = None
        self._lock = threading.Lock()

    def _interrupt(self) -> None:
        with self._lock:
            if self._runner is not None:
                self._runner.stop()

    def _run(self) -> None:
        url = self.reports.store.url
        with self._lock:
            if self._stopping.is_set():
                return
            with store_errors(url, "start following the log"):
                runner = self._runner = self._make_runner()
        try:
            with store_errors(url, "follow the log"), runner:
                self._progressed()  # subscribed: the store answers
                stalled_at, checked = None, time.monotonic()
                while not runner.is_interrupted.is_set():
                    runner.run_forever(timeout=self.interval)
                    if time.monotonic() - checked >= _STALL_CHECK:
                        # A subscription that missed a notification waits for the next one;
                        # one that stands still behind the log is made again.
                        checked, position = time.monotonic(), self.reports.position()
                        if self.reports.lag() == 0:
                            stalled_at = None
                        elif stalled_at == position:
                            log.info("report follower: stalled at position %d behind the log; subscribing again",
                                     position)
                            return
                        else:
                            stalled_at = position
        finally:
            with self._lock:
                self._runner = None
            view = getattr(runner, "view", None)
            if view is not None and view is not self.reports.view:  # a runner's own view: release its connections
                view.datastore.close()


class _SkippingRunApplication(RunApplication):
    """The runner's own application: a row it cannot read reaches the projection as a
    placeholder (logged and passed over) instead of stopping the runner at that row."""

    name = RunApplication.name  # eventsourcing names a subclass after itself otherwise

    def construct_mapper(self) -> Mapper[str]:
        return SkippingMapper(super().construct_mapper())


class BatchingProjectionRunner(_internals.BatchingLoop, ProjectionRunner[Any, Any]):
    """eventsourcing's ProjectionRunner (its own application and view, built from an
    environment), handing the projection its events in batches."""


class BatchingBaseRunner(_internals.BatchingLoop, BaseProjectionRunner[Any]):
    """eventsourcing's BaseProjectionRunner (a given projection and view), handing the
    projection its events in batches."""


def subscribed_runner(reports: Reports, env: dict[str, str]) -> ProjectionRunner[Any, Any]:
    """A projection runner with its own application and view on the store's database
    (``env``: the store's :meth:`~phaseledger.Store.subscriber_env`)."""
    return BatchingProjectionRunner(
        application_class=_SkippingRunApplication, projection_class=ReportProjection,
        view_class=REPORT_VIEWS[reports.store.report_dialect], env=env,
    )


def memory_runner(reports: Reports) -> BaseProjectionRunner[Any]:
    """A projection runner over the engine's in-process application and the reports' own view.

    A memory store exists only in its application object, so the runner must subscribe to
    that object rather than build a new (empty) application from a class: it reads that
    object's log through :meth:`Store.skipping_log <phaseledger.Store.skipping_log>`.
    """
    source = reports.store.skipping_log()

    class _EngineApplication(RunApplication):
        def __new__(cls, env: Any = None) -> Any:  # the runner "constructs" the existing app
            return source

    return BatchingBaseRunner(
        projection=ReportProjection(reports.view), application_class=_EngineApplication,
        tracking_recorder=reports.view, topics=TOPICS,
    )
