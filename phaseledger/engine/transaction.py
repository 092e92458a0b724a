"""One attempt of a transactional step (``ctx.transaction``): its writes and its record, committed together.

The step's function gets a connection to the store's own database, inside a transaction
that also appends the step's ``StepRecorded`` event (see :mod:`phaseledger.store.transactions`).
The run's aggregate is changed only once that transaction committed, so every way an
attempt can end leaves the run in memory as the log has it:

- committed: the event is applied to the run (the run is read back instead when other
  calls of the handler recorded events meanwhile: theirs follow the step's);
- the function raised, or its result cannot be recorded: nothing was written; the
  journal records a failed attempt, as for any step;
- another writer appended first: a signal is read in and the attempt runs again (it
  wrote nothing); anything else means another driver owns the run, and this one stops
  (:class:`~phaseledger.LeaseLost`), as it does when the run's lease names another owner;
- the store failed: it is waited for (``engine.append_retry_seconds``), then the log
  tells whether the commit landed (a reply lost with the connection) or the attempt must
  run again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from phaseledger.domain.errors import ConcurrencyConflict, LeaseLost, StoreUnavailable
from phaseledger.domain.journal import Kind
from phaseledger.domain.run import WorkflowRun, event_fields
from phaseledger.domain.status import CANCELLED
from phaseledger.domain.values import decode_value, encode_value
from phaseledger.engine.stops import Cancelled, Superseded
from phaseledger.store.faults import Backoff

if TYPE_CHECKING:
    from phaseledger.engine.driver import RunDriver

TRANSACTION_DETAIL = {"transaction": True}
"""The ``detail`` of a transactional step's record: its writes committed with it."""


class _Again(Exception):  # not an error: the attempt runs again, using up no attempt
    """The attempt wrote nothing and may run again at once (a signal came in; the store came back)."""

    def __init__(self, outage: StoreUnavailable | None = None) -> None:
        super().__init__()
        self.outage = outage
        """The store's failure that ended the attempt, if that was it."""


async def run_transaction(driver: RunDriver, key: str, name: str, fn: Callable[[Any], Any], what: str) -> Any:
    """Run one attempt of transactional step ``name`` under ``key``; the value code sees.

    ``fn(connection)`` is the user's function (called in the store's thread); ``what`` names
    the result in a :class:`~phaseledger.SerializationError`. Raises what ``fn`` raised
    (nothing was written), :class:`~phaseledger.StoreUnavailable` once the store failed for
    longer than ``engine.append_retry_seconds``, or stops the handler when another driver
    owns the run.
    """
    outage_since: float | None = None
    while True:
        await driver.commit()  # the events recorded before the step are appended before it
        async with driver.lock:
            if driver.run.pending_events:
                continue  # recorded meanwhile: commit them first
            try:
                return await _attempt(driver, key, name, fn, what)
            except _Again as again:
                if again.outage is None:
                    continue
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since >= driver.engine.append_retry_seconds:
                    raise again.outage from None  # the store answers, but not this transaction


async def _attempt(driver: RunDriver, key: str, name: str, fn: Callable[[Any], Any], what: str) -> Any:
    store = driver.engine.store
    run = driver.run
    base, seq = run.version, run.next_seq
    owner = driver.engine.control.holder(run.id)
    started = time.perf_counter()

    def events(result: Any) -> list[WorkflowRun.Event]:
        data, result_type = encode_value(result, what)
        recorded: Any = WorkflowRun.StepRecorded  # eventsourcing makes its fields the constructor's
        return [recorded(
            originator_id=run.id, originator_version=base + 1, timestamp=WorkflowRun.StepRecorded.create_timestamp(),
            seq=seq, key=key, name=name, kind=Kind.STEP, result=data, result_type=result_type, fingerprint=None,
            usage=None, duration=round(time.perf_counter() - started, 6), error=None, detail=dict(TRANSACTION_DETAIL),
        )]

    try:
        _, appended, _ = await store.transact_async(run.id, owner, fn, events)
    except LeaseLost:
        raise Superseded() from None
    except ConcurrencyConflict as exc:
        if not await _read_in(driver, base, key):
            # Nothing was appended in between: the database refused the commit for the
            # function's own writes (a deferred constraint). That is the attempt's failure.
            raise RuntimeError(f"the database refused to commit transactional step {name!r}: {exc}") from exc
        raise _Again() from None
    except StoreUnavailable as exc:
        await _wait_for_store(driver, exc)
        later = await _read_in(driver, base, key)
        if later and _is_record(later[0], key):
            return _value(driver.run.journal[key])
        raise _Again(exc) from None
    recorded: Any = appended[-1]
    if driver.run is run and run.version == base and not run.pending_events:
        recorded.mutate(run)  # the common case: nothing else happened to the run meanwhile
        if driver.engine.event_observer is not None:
            driver.engine.event_observer(run)
    else:
        await _read_in(driver, base, key)
    return _value(driver.run.journal[key])


def _value(entry: Any) -> Any:
    return decode_value(entry.result, entry.result_type)


def _is_record(event: WorkflowRun.Event, key: str) -> bool:
    return isinstance(event, WorkflowRun.StepRecorded) and event.key == key


async def _read_in(driver: RunDriver, base: int, key: str) -> list[WorkflowRun.Event]:
    """Take the run as the log has it after version ``base``, with the events recorded here and not
    committed yet (other calls of the handler) after them; the events appended after ``base``.

    Stops the handler when another driver appended (anything but signals) or the run was cancelled.
    """
    store = driver.engine.store
    fresh = await store.call(store.load, driver.run.id)
    later = await store.call(store.events, driver.run.id, gt=base)
    others = later[1:] if later and _is_record(later[0], key) else later
    if fresh.status == CANCELLED:
        driver.run.collect_events()
        driver.run = fresh
        raise Cancelled()
    if not all(isinstance(event, WorkflowRun.SignalReceived) for event in others):
        raise Superseded()
    for event in cast("list[WorkflowRun.Event]", driver.run.collect_events()):
        if event.originator_version <= base:
            continue
        fields = event_fields(event)
        if "seq" in fields:
            fields["seq"] = fresh.next_seq
        fresh.trigger_event(type(event), timestamp=event.timestamp, **fields)
    driver.run = fresh
    return later


async def _wait_for_store(driver: RunDriver, failure: StoreUnavailable) -> None:
    """Wait until the store answers again (up to ``engine.append_retry_seconds``), else raise ``failure``."""
    store, engine = driver.engine.store, driver.engine
    deadline = time.monotonic() + engine.append_retry_seconds
    backoff = Backoff(initial=0.1, cap=2.0)
    while True:
        if not failure.transient or time.monotonic() >= deadline:
            raise failure
        engine.outage.failed(failure, then=f"retrying for up to {engine.append_retry_seconds:g}s")
        await asyncio.sleep(min(backoff.next(), max(deadline - time.monotonic(), 0.0)))
        try:
            await store.call(store.max_notification_id)
        except StoreUnavailable as exc:
            failure = exc
            continue
        engine.outage.ok()
        return
