"""The compact form in which the store writes run events: no default fields, an integer timestamp.

As eventsourcing writes an event, its stored state holds every field, those at None too,
and its timestamp as ``{"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00.000000+00:00"}``:
together about two thirds of a trivial step's state. The compact form leaves out each field
at its default (:func:`defaults`): None for a field whose type admits None (``X | None`` or
``Any``), ``"step"`` for a ``StepRecorded``'s ``kind``, and a ``key`` that is its ``seq``
written as text (the key of a handler's calls in order). It writes a UTC timestamp as an
integer: microseconds since the epoch. Nothing is lost: reading puts the timestamp back as
the same ``datetime`` (in ``timezone.utc``, as the ISO form reads) and every left-out field
back at its default.

A stored state is compact when its timestamp is an integer. Rows written by earlier
releases, and events whose timestamp is not in UTC (written in full, to keep their offset),
have a tagged datetime there and are read exactly as before. A compact row that lacks a
field without a default is still reported as lacking it (see
:class:`~phaseledger.store.mapper.RunMapper`). Upcasters (``upcast_vN_vN+1``) see a compact
state as stored: a field at its default may be absent from it.

Only run events are written so (:data:`COMPACT`); snapshots are written as eventsourcing
writes them, with their journal entries in the form :func:`~phaseledger.domain.journal.plain_entries`
gives them.
"""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

from phaseledger.domain.journal import Kind
from phaseledger.domain.run import WorkflowRun

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_ZERO = timedelta(0)
_BASE_FIELDS = frozenset({"originator_id", "originator_version", "timestamp"})
_MISSING = object()

_OTHER_DEFAULTS: dict[type, dict[str, Any]] = {WorkflowRun.StepRecorded: {"kind": Kind.STEP}}
"""Defaults besides None: the kind most calls are."""


def _admits_none(hint: Any) -> bool:
    if hint is Any or hint is type(None):
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_admits_none(arg) for arg in typing.get_args(hint))
    return False


def defaults(cls: type) -> dict[str, Any]:
    """The fields of event class ``cls`` that the compact form leaves out at their default, with it."""
    hints = typing.get_type_hints(cls)
    found: dict[str, Any] = {name: None for name, hint in hints.items()
                             if name not in _BASE_FIELDS and _admits_none(hint)}
    found.update(_OTHER_DEFAULTS.get(cls, {}))
    return found


def _keyed(cls: type) -> bool:
    hints = typing.get_type_hints(cls)
    return "key" in hints and "seq" in hints


COMPACT: dict[type, tuple[tuple[tuple[str, Any], ...], bool]] = {
    cls: (tuple(defaults(cls).items()), _keyed(cls)) for cls in vars(WorkflowRun).values()
    if isinstance(cls, type) and issubclass(cls, WorkflowRun.Event) and cls is not WorkflowRun.Event
}
"""The run event classes written compact: the fields left out at their default (with it), and
whether a ``key`` that is the ``seq`` as text is left out."""


def compact_state(event: Any) -> dict[str, Any] | None:
    """The compact state of ``event`` (without its id and version), or None: write it in full.

    None for an event that is not a run event, or whose timestamp is not in UTC.
    """
    compact = COMPACT.get(type(event))
    if compact is None:
        return None
    fields = event.__dict__
    timestamp = fields["timestamp"]
    if timestamp.utcoffset() != _ZERO:  # naive, or another offset: the ISO form keeps it
        return None
    state = fields.copy()
    del state["originator_id"], state["originator_version"]
    left_out, keyed = compact
    for name, default in left_out:
        value = state.get(name, _MISSING)
        if value is default or (default is not None and value == default):
            del state[name]
    state["timestamp"] = (timestamp - _EPOCH) // _MICROSECOND
    if keyed and type(state.get("key")) is str and type(state.get("seq")) is int and state["key"] == str(state["seq"]):
        del state["key"]
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version  # as eventsourcing's mapper stores it
    return state


def expand(event: Any) -> None:
    """Give a run event read from a compact state (its timestamp an integer) its timestamp and left-out fields back."""
    fields = event.__dict__
    fields["timestamp"] = _EPOCH + timedelta(microseconds=fields["timestamp"])
    left_out, keyed = COMPACT[type(event)]
    for name, default in left_out:
        if name not in fields:
            fields[name] = default
    if keyed and "key" not in fields and type(fields.get("seq")) is int:
        fields["key"] = str(fields["seq"])
