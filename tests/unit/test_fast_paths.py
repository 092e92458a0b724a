"""The fast paths of the journal keep the stored format and the behaviour they replace.

- the orjson transcoder writes and reads eventsourcing's JSON format: a log written by
  either transcoder reads the same with the other;
- ``encode_value`` returns a checked copy, with the same error messages as before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from phaseledger import SerializationError
from phaseledger.domain.values import encode_value
from phaseledger.store.codec import FastJSONTranscoder


def _transcoder(cls: type[JSONTranscoder]) -> JSONTranscoder:
    transcoder = cls()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


STANDARD = _transcoder(JSONTranscoder)
FAST = _transcoder(FastJSONTranscoder)

datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1))
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False) | datetimes
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["a", "b", "_type_", "_data_", "é", "x y"]) | st.text(max_size=5), children,
                      max_size=4),
    max_leaves=25,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=8), documents, max_size=6))
def test_fast_and_standard_transcoders_read_each_other(state: dict[str, Any]) -> None:
    standard = STANDARD.encode(state)
    try:
        expected = STANDARD.decode(standard)
    except TypeError as exc:  # a {"_type_": ..., "_data_": ...} dict of no registered type
        with pytest.raises(type(exc)):
            FAST.decode(standard)
        with pytest.raises(type(exc)):
            FAST.decode(FAST.encode(state))
        return
    assert FAST.decode(standard) == expected
    assert STANDARD.decode(FAST.encode(state)) == expected
    assert FAST.decode(FAST.encode(state)) == expected


def test_registered_types_are_tagged_like_the_standard_transcoder() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    state = {"timestamp": when, "nested": [{"at": when, "amount": Decimal("1.50")}], "n": 1}
    assert FAST.encode(state) == STANDARD.encode(state)
    assert FAST.decode(FAST.encode(state)) == state


def test_what_orjson_cannot_write_falls_back_to_the_standard_encoder() -> None:
    for state in ({"big": 2**70}, {"keys": {1: "one"}}):
        assert FAST.encode(state) == STANDARD.encode(state)
    with pytest.raises(TranscodingNotRegisteredError):
        FAST.encode({"unknown": {1, 2}})


def test_encode_value_returns_a_copy() -> None:
    value = {"items": [1, {"x": "y"}], "n": 2}
    data, topic = encode_value(value)
    assert data == value and topic is None
    assert data is not value and data["items"] is not value["items"] and data["items"][1] is not value["items"][1]
    value["items"].append(3)
    assert data["items"] == [1, {"x": "y"}]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, {"b": float("nan")}]}, "the result['a'][1]['b'] is nan: NaN and infinity cannot be recorded"),
        ({"a": {1: 2}}, "the result['a'] has the key 1 of type int: only str keys can be recorded"),
        ([1, (2, 3)], "the result[1] is a builtins.tuple, which cannot be recorded"),
    ],
)
def test_encode_value_names_the_part_that_cannot_be_recorded(value: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        encode_value(value, "the result")
    assert str(info.value).startswith(message)
