"""The transcoder of the event store: eventsourcing's JSON format, written and read by orjson.

Events and snapshots are stored as eventsourcing's ``JSONTranscoder`` stores them: compact
UTF-8 JSON, with values of registered types (datetimes, UUIDs, decimals) written as
``{"_type_": name, "_data_": value}``. :class:`FastJSONTranscoder` produces and reads the
same documents several times faster, so a log written by either one reads with the other.

Where orjson cannot produce the same document (integers beyond 64 bits, non-string dict
keys) it falls back to the standard encoder. Two differences remain, for values that
phaseledger never puts in an event (results, payloads, states and outputs are checked to
be plain JSON first): a float NaN or infinity is written as ``null``, and a ``uuid.UUID``
or an ``enum.Enum`` member as its plain value.
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_CONTAINERS = (dict, list)


class FastJSONTranscoder(JSONTranscoder):
    """eventsourcing's JSON transcoder (same format, same registered transcodings), on orjson."""

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as UTF-8 JSON bytes."""
        try:
            return orjson.dumps(obj, default=self._encode_obj, option=_OPTIONS)
        except orjson.JSONEncodeError:
            # Big integers, non-string keys, unregistered types: the standard encoder writes
            # them as before, or raises the same error as before.
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        """Decode UTF-8 JSON bytes, reviving values of registered types."""
        obj = orjson.loads(data)
        tagged = data.count(b'"_type_"')  # dicts to look at; the walk stops when all are found
        if tagged and type(obj) in _CONTAINERS:
            obj = self._revive(obj, [tagged])
        return obj

    def _revive(self, obj: Any, left: list[int]) -> Any:
        # What json's object_hook does, innermost first: every two-key {"_type_", "_data_"}
        # dict becomes the value its transcoding decodes.
        if type(obj) is dict:
            for key, value in obj.items():
                if left[0] and type(value) in _CONTAINERS:
                    obj[key] = self._revive(value, left)
            if "_type_" in obj:
                left[0] -= 1
                if len(obj) == 2 and "_data_" in obj:
                    return self._decode_obj(obj)
            return obj
        for i, value in enumerate(obj):
            if not left[0]:
                break
            if type(value) in _CONTAINERS:
                obj[i] = self._revive(value, left)
        return obj
