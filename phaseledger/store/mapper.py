"""How stored rows become events, and what a row that cannot be read becomes.

Every event and snapshot read from the store passes through :class:`RunMapper`,
eventsourcing's mapper with one addition: a row whose data does not decode, whose type
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

from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
from eventsourcing.utils import TopicError

from phaseledger.domain.errors import CorruptEvent, DecryptionFailed
from phaseledger.store.cipher import CipherMapper

_decode = Mapper.to_domain_event  # called directly: cheaper than super() on every read

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


class RunMapper(CipherMapper):
    """The store's mapper, raising :class:`~phaseledger.CorruptEvent` for a row it cannot read.

    A row that no configured key opens is not corrupt: :class:`~phaseledger.DecryptionFailed`
    (a store-wide matter of configuration) passes through.
    """

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

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The event a row holds, or an :class:`Unreadable` placeholder when it cannot be read."""
        try:
            return self.mapper.to_domain_event(stored_event)
        except CorruptEvent as exc:
            log.warning("skipped an unreadable row of the log: %s", exc)
            return Unreadable(exc.run_id, exc.version, exc)
