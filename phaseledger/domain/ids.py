"""The rule for ids and names that come from outside: run ids, signal names, signal ids.

They are keys in every store, so one rule applies everywhere, checked before anything is
written or looked up: a string of 1 to :data:`MAX_ID_LENGTH` characters, with no control
characters (NUL included) and no lone surrogates. Without it the stores disagree: SQLite
keeps a NUL that PostgreSQL refuses, and a lone surrogate (what Python makes of bytes
that are not UTF-8) fails deep inside the driver.

The limit of 200 characters holds a UUID, a prefixed business key or a fork's id (the
source's id plus ``-fork-`` and 8 hex digits) with room to spare, keeps an id readable in
messages, logs and tables, stays far below what a PostgreSQL index entry takes (200
characters are at most 800 bytes) and refuses a document passed as an id by mistake.
"""

from __future__ import annotations

import re

from phaseledger.domain.errors import InvalidInput

MAX_ID_LENGTH = 200
"""The longest run id, signal name or signal id accepted, in characters."""

RESERVED_PREFIX = "$phaseledger:"
"""Run ids starting with this are refused: the store's own streams (its identity) use it."""

_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (C0, DEL, C1) and surrogates."""


def validate_id(kind: str, value: object) -> str:
    """Return ``value`` if it is an acceptable ``kind`` ("signal name", ...); else :class:`InvalidInput`."""
    if not isinstance(value, str):
        raise InvalidInput(f"the {kind} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidInput(f"the {kind} is empty; give at least one character")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(
            f"the {kind} {value[:40]!r}... is {len(value)} characters long; the limit is {MAX_ID_LENGTH} "
            "(ids are keys: keep long text in the run's input or the signal's payload)"
        )
    found = _FORBIDDEN.search(value)
    if found is not None:
        char, at = found.group(), found.start()
        shown = value if len(value) <= 60 else value[:60] + "..."
        why = "ids and names are printable text"
        if char == "\x00":
            problem = "a NUL character"
        elif "\ud800" <= char <= "\udfff":
            problem = f"a lone surrogate (U+{ord(char):04X})"
            why = "that is not valid Unicode text (was it decoded from bytes that are not UTF-8?)"
        else:
            problem = f"the control character U+{ord(char):04X}"
        raise InvalidInput(f"the {kind} {shown!r} contains {problem} at position {at}; {why}")
    return value


def validate_run_id(value: object, kind: str = "run id") -> str:
    """:func:`validate_id` for run ids, which also may not start with :data:`RESERVED_PREFIX`."""
    run_id = validate_id(kind, value)
    if run_id.startswith(RESERVED_PREFIX):
        raise InvalidInput(
            f"the {kind} {run_id!r} starts with {RESERVED_PREFIX!r}, which is reserved for the store's "
            "own streams; choose another id"
        )
    return run_id
