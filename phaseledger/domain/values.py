"""Turning step results and payloads into JSON for the log, and back into the same types.

A recorded value is a JSON document plus, for pydantic models, the topic of the model
class, so replay returns an instance of the same class. The live path returns the decoded
copy too, so code sees exactly the same value live and on replay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from eventsourcing.utils import get_topic, resolve_topic
from pydantic import BaseModel, ValidationError

from phaseledger.domain.errors import InvalidInput, SerializationError

JSONValue = Any
"""A value made only of dict (str keys), list, str, int, float, bool and None."""


class _NotJSON(Exception):
    """A part of a value that cannot be recorded; ``where`` grows as the walk unwinds."""

    def __init__(self, describe: Callable[[str], str]) -> None:
        self.describe = describe
        self.where: list[str] = []


def _copy_json_checked(value: Any) -> Any:
    """A copy of a JSON value, checked on the way (one walk; paths are built only on error)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJSON(lambda path: f"{path} is {value!r}: NaN and infinity cannot be recorded")
        return value
    if isinstance(value, list):
        copied = []
        for i, item in enumerate(value):
            try:
                copied.append(_copy_json_checked(item))
            except _NotJSON as exc:
                exc.where.append(f"[{i}]")
                raise
        return copied
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJSON(
                    lambda path: f"{path} has the key {key!r} of type {type(key).__name__}: "
                    "only str keys can be recorded"
                )
            try:
                result[key] = _copy_json_checked(item)
            except _NotJSON as exc:
                exc.where.append(f"[{key!r}]")
                raise
        return result
    raise _NotJSON(
        lambda path: f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "recorded: return JSON values (dict, list, str, int, float, bool, None) or a "
        "pydantic model"
    )


def encode_value(value: Any, what: str = "the value") -> tuple[JSONValue, str | None]:
    """Encode a value for the log: ``(json_value, model_topic)``.

    The JSON value is a copy, so later changes to ``value`` by the caller cannot change
    what was recorded. Raises :class:`SerializationError` (before anything is appended)
    when the value is neither JSON nor a pydantic model, or a model that does not serialise.
    """
    if isinstance(value, BaseModel):
        cls = type(value)
        if "<locals>" in cls.__qualname__:
            raise SerializationError(
                f"{what} is an instance of {cls.__qualname__}, a class defined inside a "
                "function: define the model at module level so replay can find it"
            )
        try:
            data = value.model_dump(mode="json")
        except Exception as exc:  # pydantic raises several types here
            raise SerializationError(f"{what} ({cls.__qualname__}) cannot be serialised: {exc}") from exc
        return data, get_topic(cls)
    if isinstance(value, tuple):
        raise SerializationError(
            f"{what} is a tuple, which would come back as a list on replay: return a list"
        )
    try:
        return _copy_json_checked(value), None
    except _NotJSON as exc:
        raise SerializationError(exc.describe(what + "".join(reversed(exc.where)))) from None


def decode_value(data: JSONValue, model_topic: str | None) -> Any:
    """Rebuild a recorded value: a model instance when a topic was recorded, else a copy."""
    if model_topic is None:
        return copy_json(data)
    cls = resolve_topic(model_topic)
    return cls.model_validate(data)


def copy_json(data: JSONValue) -> JSONValue:
    """A deep copy of a JSON value (faster than ``copy.deepcopy`` for plain JSON)."""
    if isinstance(data, dict):
        return {k: copy_json(v) for k, v in data.items()}
    if isinstance(data, list):
        return [copy_json(v) for v in data]
    return data


def validate_payload(model: type[BaseModel] | None, payload: Any, what: str) -> Any:
    """Validate a payload against a declared model (:class:`InvalidInput` if it does not fit)."""
    if model is None:
        data, _ = encode_value(payload, what)
        return data
    try:
        if isinstance(payload, model):
            return payload.model_dump(mode="json")
        return model.model_validate(payload).model_dump(mode="json")
    except ValidationError as exc:
        if payload is None:
            fields = ", ".join(model.model_fields) or "no fields"
            raise InvalidInput(f"{what} is missing: it must be a {model.__qualname__} ({fields}); "
                               "pass it as the payload (`--data JSON` on the command line)") from None
        raise InvalidInput(f"{what} does not match {model.__qualname__}: {exc}") from exc


def json_size(data: JSONValue) -> int:
    """Bytes of compact JSON: the size a value takes in the log (before compression)."""
    return len(json.dumps(data, separators=(",", ":")).encode())


# Message fields that change on every attempt of the same call, left out of request
# fingerprints and comparisons; the run and conversation ids embed the phaseledger run id,
# which differs in a fork of the run.
_VOLATILE_KEYS = frozenset({"timestamp", "request_timestamp", "duration", "run_id", "conversation_id"})


def strip_volatile(value: Any) -> Any:
    """A copy of a dumped message structure without the fields that change on every attempt."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value
