"""How events become stored rows and stored rows events, and what a row that cannot be read becomes.

Every event and snapshot written to or read from the store passes through :class:`RunMapper`,
eventsourcing's mapper with two additions. Run events are written in the compact form of
:mod:`phaseledger.store.compact` (and read back from it), and a row whose data does not decode, whose type
this release does not know, or that lacks a field its type needs raises
:class:`~phaseledger.CorruptEvent` naming the stream and the version. Loading a run thus
fails for that run alone, with an error that says what to do.

Followers of the whole log (the report projection) must get past such a row rather than
stop at it: :class:`SkippingMapper` hands them an :class:`Unreadable` placeholder instead,
and logs a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import TopicError, get_topic

from phaseledger.domain.errors import CorruptEvent, DecryptionFailed
from phaseledger.domain.journal import Kind, RecordedCall
from phaseledger.domain.run import WorkflowRun
from phaseledger.store.cipher import CipherMapper
from phaseledger.store.compact import COMPACT, compact_state, expand

_decode = Mapper.to_domain_event  # called directly: cheaper than super() on every read
_encode = Mapper.to_stored_event

log = logging.getLogger("phaseledger.store")


_REQUIRED: dict[type, frozenset[str]] = {}
"""The fields each event class needs, by class (read once per class)."""


def _required_fields(cls: type) -> frozenset[str]:
    if not dataclasses.is_dataclass(cls):
        return frozenset()
    missing = dataclasses.MISSING
    return frozenset(f.name for f in dataclasses.fields(cls)
                     if f.init and f.default is missing and f.default_factory is missing)


def _reason(stored: StoredEvent, exc: Exception) -> str:
    if isinstance(exc, TopicError):
        return f"its type {stored.topic!r} is not one this release of phaseledger knows"
    if isinstance(exc, MapperDeserialisationError) and exc.__cause__ is not None:
        return f"its stored data does not decode ({type(exc.__cause__).__name__}: {exc.__cause__})"
    return f"{type(exc).__name__}: {exc}"


_STEP = get_topic(WorkflowRun.StepRecorded)
_CHECKPOINT = get_topic(WorkflowRun.CheckpointSaved)
_JOURNALED = frozenset({_STEP, _CHECKPOINT})
# Read straight from a compact state only while no upcaster applies to either class.
_DIRECT = all(getattr(cls, "class_version", 1) == 1 for cls in (WorkflowRun.StepRecorded, WorkflowRun.CheckpointSaved))
_new_tuple = tuple.__new__
_NO_KEY = object()


def _direct_entry(topic: str, state: Any) -> tuple[str, RecordedCall] | None:
    """The key and entry of a compact ``StepRecorded`` or ``CheckpointSaved`` state, or None
    when the state is not one this reads without building the event (then the event is built).

    It repeats what the events' ``entry()`` and :func:`~phaseledger.store.compact.expand`
    do, field by field: deriving it from them (a dict of defaults merged in, the required
    fields checked as sets, ``entry()`` on the fields) cost a third of the gain and a call
    more on every recorded step. ``tests/unit/test_compact_events.py`` checks that both
    paths give the same key and entry for every journaled event.
    """
    if type(state) is not dict or type(state.get("timestamp")) is not int or "class_version" in state:
        return None
    seq = state.get("seq")
    if type(seq) is not int:
        return None
    key = state.get("key", _NO_KEY)
    if key is _NO_KEY:
        key = str(seq)  # the compact form leaves out a key that is the seq as text
    elif type(key) is not str:
        return None
    get = state.get
    if topic == _STEP:
        name = get("name")
        if name is None or "duration" not in state:  # fields without a default: the event reports them missing
            return None
        return key, _new_tuple(RecordedCall, (seq, name, get("kind", Kind.STEP), get("result"), get("result_type"),
                                              get("fingerprint"), get("error"), get("usage"), get("detail")))
    label, saved = get("label"), get("state")
    if label is None or saved is None:
        return None
    return key, _new_tuple(RecordedCall, (seq, label, Kind.CHECKPOINT, saved, None, None, None, None, None))


class RunMapper(CipherMapper):
    """The store's mapper: run events written compact, :class:`~phaseledger.CorruptEvent` for a row it cannot read.

    A row that no configured key opens is not corrupt: :class:`~phaseledger.DecryptionFailed`
    (a store-wide matter of configuration) passes through.
    """

    def to_stored_event(self, domain_event: DomainEventProtocol[str]) -> StoredEvent:
        """The row of an event: a run event's state compact, then compressed and encrypted as configured."""
        state = compact_state(domain_event)
        if state is None:
            return _encode(self, domain_event)
        data = self.transcoder.encode(state)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(originator_id=domain_event.originator_id, originator_version=domain_event.originator_version,
                           topic=get_topic(type(domain_event)), state=data)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event (or snapshot) a stored row holds."""
        try:
            try:
                event = _decode(self, stored_event)  # eventsourcing's own path: the hot one, called directly
            except MapperDeserialisationError as exc:
                event = self._recover(stored_event, exc)  # keys, compression (see CipherMapper)
        except DecryptionFailed:
            raise
        except Exception as exc:  # eventsourcing raises several types; any of them means this row
            raise CorruptEvent(str(stored_event.originator_id), stored_event.originator_version,
                               _reason(stored_event, exc)) from exc
        timestamp = event.__dict__.get("timestamp")
        if type(timestamp) is int and type(event) in COMPACT:  # a compact state (see phaseledger.store.compact)
            try:
                expand(event)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CorruptEvent(str(stored_event.originator_id), stored_event.originator_version,
                                   f"its timestamp {timestamp} is not a time ({type(exc).__name__}: {exc})") from exc
        required = _REQUIRED.get(type(event))
        if required is None:
            required = _REQUIRED[type(event)] = _required_fields(type(event))
        if len(event.__dict__) < len(required) and not required.issubset(event.__dict__):  # fields dropped
            missing = required - event.__dict__.keys()
            raise CorruptEvent(
                str(stored_event.originator_id), stored_event.originator_version,
                f"it lacks the field(s) {', '.join(sorted(missing))} of {type(event).__name__}",
            )
        return event

    def journal_entry(self, run_id: str, version: int, topic: str, state: bytes) -> tuple[str, RecordedCall] | None:
        """The key and journal entry of the run's event row (``version``, ``topic``, stored
        ``state``) when it is a ``StepRecorded`` or ``CheckpointSaved``, else None. Raises
        :class:`~phaseledger.CorruptEvent` as :meth:`to_domain_event` does.

        A compact, unencrypted, uncompressed row is read straight into its entry: a resume
        reads back every call of the phase visit in progress, and building each event first
        costs several times more.
        """
        if topic not in _JOURNALED:
            return None
        if _DIRECT and self.cipher is None and self.compressor is None:
            try:
                decoded = self.transcoder.decode(state)
            except Exception:  # not JSON: the event path below says why
                decoded = None
            found = _direct_entry(topic, decoded)
            if found is not None:
                return found
        event = self.to_domain_event(StoredEvent(originator_id=run_id, originator_version=version, topic=topic,
                                                 state=state))
        return event.key, event.entry()


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """Stands in for a row of the log that cannot be read, so a follower of the log passes it."""

    originator_id: str
    originator_version: int
    error: CorruptEvent


class SkippingMapper(Mapper[str]):
    """A mapper for followers of the whole log: an unreadable row becomes :class:`Unreadable` (and a warning)."""

    def __init__(self, mapper: Mapper[str]) -> None:
        super().__init__(mapper.transcoder, mapper.compressor, mapper.cipher)
        self.mapper = mapper

    def to_stored_event(self, domain_event: DomainEventProtocol[str]) -> StoredEvent:
        """The row of an event, as the wrapped mapper writes it."""
        return self.mapper.to_stored_event(domain_event)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event a row holds, or an :class:`Unreadable` placeholder when it cannot be read."""
        try:
            return self.mapper.to_domain_event(stored_event)
        except CorruptEvent as exc:
            log.warning("skipped an unreadable row of the log: %s", exc)
            return Unreadable(exc.run_id, exc.version, exc)
