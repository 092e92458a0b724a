"""Errors recorded in the log as plain data, and rebuilt from it on replay.

A failure kept in the log (a handled failure of an agent's model request or tool call, a
run's ``RunFailed``) is plain JSON: :func:`describe_error` writes it, :func:`rebuild_error`
raises it again on replay from that data alone. A row of the store must never be able to
run code in the process that replays it, so nothing here deserialises objects or imports anything a
record names.
"""

from __future__ import annotations

import copy
import math
import re
import traceback
from collections.abc import Mapping
from typing import Any

from phaseledger.domain.errors import PhaseledgerError, SignalTimeout

CAUSE_DEPTH = 4
"""How many links of an error's cause chain (``raise X from Y``, or an error raised while
handling another) are recorded, and rebuilt on replay."""

TRACEBACK_LINES = 12
"""How many of the last lines of a traceback are recorded."""

_DETAIL_FIELDS = (
    "message", "status_code", "model_name", "body", "headers", "retry_after", "provider_error_code",
    "provider_error_type", "in_stream", "suggested_model_id", "hint", "phase", "metadata", "kind",
)
"""Attributes kept in an error's record when the exception has them: pydantic-ai's provider
details and what the known types are rebuilt from."""

_PLAIN_DEPTH = 16
"""How deep a recorded detail (a provider's response body) is kept as JSON; deeper parts become text."""


class RecordedError(PhaseledgerError):
    """A failure recorded in a run's log, raised again on replay when its type is not rebuilt.

    The log keeps errors as plain data: type name, module, message, traceback text, the cause
    chain and provider details. On replay a known type (Python's built-in errors, pydantic-ai's
    model and tool errors) is rebuilt from that data; anything else comes back as a
    ``RecordedError``: route on :attr:`type_name` (and :attr:`module`), since replay never
    imports the original class. So that code describing errors by name and message (such as
    pydantic-ai's record of a failed model attempt) sees what it saw live, replay raises it
    as a subclass named like the original class, and ``str()`` is the original message.
    """

    def __init__(self, record: Mapping[str, Any], *, depth: int = CAUSE_DEPTH) -> None:
        """``record`` is the error's entry in the log; ``depth`` bounds how many causes are rebuilt."""
        self.data: dict[str, Any] = dict(record)
        """The record as the log holds it."""
        self.type_name = _text_field(record, "type") or "Error"
        """The name of the original exception's class (``ConnectionResetError``)."""
        self.module: str | None = _text_field(record, "module")
        """The module of the original class; None in records written before modules were kept."""
        self.message = _text_field(record, "message") or ""
        """``str()`` of the original exception."""
        self.traceback = _text_field(record, "traceback") or ""
        """The last lines of the original traceback, as text."""
        details = record.get("details")
        self.details: dict[str, Any] = dict(details) if isinstance(details, Mapping) else {}
        """The exception's provider details (``status_code``, ``body``, ...) when it had any."""
        cause = record.get("cause")
        self.cause: RecordedError | None = (
            _recorded_error(cause, depth - 1) if isinstance(cause, Mapping) and depth > 0 else None
        )
        """The recorded error the original was raised from (or while handling), if any."""
        super().__init__(self.message)
        self.add_note(
            f"replayed from the run's log as a phaseledger RecordedError: only known exception types are "
            f"rebuilt on replay, so match this one on its .type_name ({self.type_name!r})"
        )
        _link(self, self.cause, record.get("chain"))

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies (and copies of copies) are rebuilt from the record, as on replay.
        return _recorded_error, (self.data,)


def describe_error(exc: BaseException, *, traceback_lines: int = TRACEBACK_LINES) -> dict[str, Any]:
    """The JSON record of an error kept in the log (the one place errors are turned into data).

    ``type``, ``module``, ``message`` and the last lines of the ``traceback``; ``args`` when
    they are plain values; ``details``: the provider details pydantic-ai's errors carry
    (status code, body, retry-after, ...); and ``cause``, the record of the error it was raised
    from (``chain`` says ``"cause"`` or ``"context"``), up to :data:`CAUSE_DEPTH` links.
    :func:`rebuild_error` turns it back into an exception.
    """
    return _describe(exc, traceback_lines, CAUSE_DEPTH, chained=True, seen=set())


def rebuild_error(record: Mapping[str, Any]) -> BaseException:
    """The exception to raise again, on replay, for an error recorded by :func:`describe_error`.

    A known type is rebuilt by calling its class with recorded values; the class comes from a
    fixed table, chosen by the recorded module and type name: Python's built-in errors that
    take a message, phaseledger's ``SignalTimeout``, and pydantic-ai's model and tool errors
    (``ModelHTTPError`` with its status code and body, ``UnexpectedModelBehavior``,
    ``ModelRetry``, ``UserError``, ...), so that a fallback, a retry or an ``except`` in user
    code acts on a replayed failure as it did on the live one. Anything else, and a record
    whose values its class rejects, is a :class:`RecordedError`. Nothing named in a record is
    imported. Records written by earlier releases may also hold a ``pickle`` field: it is
    ignored, never loaded, and the error is rebuilt from its type and message like any other.
    """
    try:
        rebuilt = _rebuild_known(record)
    except Exception:  # recorded values that the class rejects: keep them as data
        rebuilt = None
    if rebuilt is None:
        return _recorded_error(record)
    cause = record.get("cause")
    if isinstance(cause, Mapping):
        _link(rebuilt, _recorded_error(cause, CAUSE_DEPTH - 1), record.get("chain"))
    return rebuilt


# -- describing ---------------------------------------------------------------------------


def _describe(
    exc: BaseException, traceback_lines: int, depth: int, *, chained: bool, seen: set[int]
) -> dict[str, Any]:
    if isinstance(exc, RecordedError):
        return _trimmed(exc.data, depth)  # recorded again as it was first recorded
    seen.add(id(exc))
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, chain=chained)
    record: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": _str_of(exc),
        "traceback": "\n".join("".join(lines).splitlines()[-traceback_lines:]),
        "module": type(exc).__module__,
    }
    args = exc.args
    if all(arg is None or isinstance(arg, (bool, int, float, str)) for arg in args):
        record["args"] = [_plain(arg) for arg in args]
    attributes = getattr(exc, "__dict__", None) or {}
    details = {name: _plain(attributes[name]) for name in _DETAIL_FIELDS if name in attributes}
    if details:
        record["details"] = details
    link = _chained_from(exc)
    if link is not None and depth > 0 and id(link[0]) not in seen:
        record["cause"] = _describe(link[0], traceback_lines, depth - 1, chained=False, seen=seen)
        record["chain"] = link[1]
    return record


def _trimmed(record: Mapping[str, Any], depth: int) -> dict[str, Any]:
    """A copy of a record with at most ``depth`` causes."""
    trimmed = {key: copy.deepcopy(value) for key, value in record.items() if key not in ("cause", "chain")}
    cause = record.get("cause")
    if isinstance(cause, Mapping) and depth > 0:
        trimmed["cause"] = _trimmed(cause, depth - 1)
        if "chain" in record:
            trimmed["chain"] = record["chain"]
    return trimmed


def _chained_from(exc: BaseException) -> tuple[BaseException, str] | None:
    if exc.__cause__ is not None:
        return exc.__cause__, "cause"
    if exc.__context__ is not None and not exc.__suppress_context__:
        return exc.__context__, "context"
    return None


def _str_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not cost the failure its record
        return f"<{type(exc).__name__} whose str() failed>"


def _plain(value: Any, depth: int = _PLAIN_DEPTH) -> Any:
    """``value`` as JSON: containers and scalars kept, anything else as its text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return str(value)
    if depth > 0 and isinstance(value, Mapping):
        return {str(key): _plain(item, depth - 1) for key, item in value.items()}
    if depth > 0 and isinstance(value, (list, tuple)):
        return [_plain(item, depth - 1) for item in value]
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


# -- rebuilding ---------------------------------------------------------------------------


def _text_field(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) else None


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,19}")
_RECORDED_CLASSES: dict[tuple[str, str], type[RecordedError]] = {}
_MAX_RECORDED_CLASSES = 512


def _recorded_error(record: Mapping[str, Any], depth: int = CAUSE_DEPTH) -> RecordedError:
    """A :class:`RecordedError` for ``record``, of a subclass named like the original class."""
    return _recorded_class(_text_field(record, "type"), _text_field(record, "module"))(record, depth=depth)


def _recorded_class(name: str | None, module: str | None) -> type[RecordedError]:
    # Only the class's name and module text come from the record; nothing is imported.
    if name is None or not _NAME.fullmatch(name):
        return RecordedError
    key = (module if module and _MODULE.fullmatch(module) else __name__, name)
    cls = _RECORDED_CLASSES.get(key)
    if cls is None:
        namespace = {"__module__": key[0], "__qualname__": name, "__doc__": RecordedError.__doc__}
        cls = type(name, (RecordedError,), namespace)
        if len(_RECORDED_CLASSES) < _MAX_RECORDED_CLASSES:
            _RECORDED_CLASSES[key] = cls
    return cls


def _link(exc: BaseException, cause: BaseException | None, chain: object) -> None:
    """Chain a rebuilt error to its rebuilt cause the way the original was chained."""
    if cause is None:
        return
    if chain == "context":
        exc.__context__ = cause
    else:
        exc.__cause__ = cause


def _rebuild_known(record: Mapping[str, Any]) -> BaseException | None:
    name = _text_field(record, "type")
    if name is None:
        return None
    module = record.get("module")
    legacy = "module" not in record  # written before modules were recorded: the type name decides
    if name in _BUILTIN_ERRORS and (module == "builtins" or legacy):
        return _rebuild_builtin(_BUILTIN_ERRORS[name], record)
    if name == SignalTimeout.__name__ and (module == __name__ or legacy):
        return _rebuild_signal_timeout(record)
    if name in _PYDANTIC_AI_ERRORS and (module == _PYDANTIC_AI_MODULE or legacy):
        return _rebuild_pydantic_ai(name, record)
    return None


_BUILTIN_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        Exception, ArithmeticError, AssertionError, AttributeError, BrokenPipeError, ConnectionAbortedError,
        ConnectionError, ConnectionRefusedError, ConnectionResetError, EOFError, FileExistsError,
        FileNotFoundError, IndexError, IsADirectoryError, KeyError, LookupError, NotADirectoryError,
        NotImplementedError, OSError, OverflowError, PermissionError, RecursionError, RuntimeError,
        TimeoutError, TypeError, UnicodeError, ValueError, ZeroDivisionError,
    )
}
"""Python's errors that are rebuilt from their recorded arguments (or their message)."""


def _rebuild_builtin(cls: type[Exception], record: Mapping[str, Any]) -> Exception:
    args = record.get("args")
    if isinstance(args, list) and all(arg is None or isinstance(arg, (bool, int, float, str)) for arg in args):
        return cls(*args)
    message = _text_field(record, "message")
    return cls(message) if message else cls()


def _rebuild_signal_timeout(record: Mapping[str, Any]) -> SignalTimeout:
    # Recorded by ctx.wait_for_signal as {"type", "message": the signal's name, "timeout"}.
    timeout = record.get("timeout")
    seconds = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else 0.0
    return SignalTimeout(_text_field(record, "message") or "", seconds)


_PYDANTIC_AI_MODULE = "pydantic_ai.exceptions"

_MESSAGE_ERRORS = (
    "ModelRetry", "ToolFailed", "UserError", "AgentRunError", "UsageLimitExceeded", "ConcurrencyLimitExceeded",
)
"""pydantic-ai errors built from their message alone."""

_BEHAVIOUR_ERRORS = ("UnexpectedModelBehavior", "ContentFilterError", "OutputTokenLimitExceeded", "IncompleteToolCall")
"""pydantic-ai errors built from ``(message, body)``."""

_API_ERRORS = (
    "ModelAPIError", "ModelRateLimitError", "ModelQuotaExceededError", "ModelUnavailableError",
    "ModelOverloadedError", "ModelServerError", "ModelConnectionError", "ModelTimeoutError",
    "ModelRequestRejectedError", "ModelContextWindowExceededError", "ModelAuthenticationError",
    "ModelNotFoundError", "ModelSchemaTooComplexError",
)
"""pydantic-ai's provider errors built from ``(model_name, message, **provider details)``; with a
recorded status code, the HTTP error of that category (``ModelHTTPError.for_category``)."""

_RESPONSE_ERRORS = ("ModelEmptyResponseError", "ModelInvalidResponseError")
"""pydantic-ai's errors about an unusable response, built from ``(model_name, message, body=)``."""

_DEFERRAL_ERRORS = ("CallDeferred", "ApprovalRequired")
"""pydantic-ai's tool-call control flow, built from ``(metadata)``."""

_PYDANTIC_AI_ERRORS = frozenset({
    "ModelHTTPError", *_MESSAGE_ERRORS, *_BEHAVIOUR_ERRORS, *_API_ERRORS, *_RESPONSE_ERRORS, *_DEFERRAL_ERRORS,
})
"""The pydantic-ai error types rebuilt on replay."""

_HTTP_MESSAGE = re.compile(r"status_code: (?P<status>\d+), model_name: (?P<model>.*?), body: (?P<body>.*)", re.S)
"""The message of a pydantic-ai HTTP error: how records without details are read."""


def _rebuild_pydantic_ai(name: str, record: Mapping[str, Any]) -> BaseException | None:
    from pydantic_ai import exceptions  # a fixed module: only agent runs record these errors

    found = getattr(exceptions, name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        return None  # a type this pydantic-ai release does not have
    cls: Any = found  # each type's constructor takes its own arguments
    details = _details_of(name, record)
    message = details.get("message", _text_field(record, "message") or "")
    if "status_code" in details and (name == "ModelHTTPError" or name in _API_ERRORS):
        return _rebuild_http(exceptions, cls, details)
    if name in _MESSAGE_ERRORS:
        return cls(message)
    if name in _BEHAVIOUR_ERRORS:
        return cls(message, details.get("body"))
    if name in _DEFERRAL_ERRORS:
        kind = {"kind": details["kind"]} if details.get("kind") not in (None, "external") else {}
        return cls(details.get("metadata"), **kind)
    if "model_name" not in details:
        return None  # a provider error recorded without its details cannot be rebuilt
    if name in _RESPONSE_ERRORS:
        return cls(details["model_name"], message, body=details.get("body"))
    return cls(details["model_name"], message, **_given(details, _API_KEYWORDS))


_API_KEYWORDS = ("body", "provider_error_code", "provider_error_type", "retry_after", "in_stream", "phase")
_HTTP_KEYWORDS = (
    "headers", "suggested_model_id", "hint", "provider_error_code", "provider_error_type", "retry_after", "in_stream",
)


def _given(details: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The keyword arguments among ``keys`` that were recorded with a value (older releases lack some)."""
    return {key: details[key] for key in keys if details.get(key) is not None and details.get(key) is not False}


def _rebuild_http(exceptions: Any, cls: type[BaseException], details: Mapping[str, Any]) -> BaseException:
    status, model_name, body = int(details["status_code"]), str(details["model_name"]), details.get("body")
    keywords = _given(details, _HTTP_KEYWORDS)
    if cls is exceptions.ModelHTTPError:
        return cls(status, model_name, body, **keywords)
    # An HTTP error that is also of a category (pydantic-ai's providers raise those).
    return exceptions.ModelHTTPError.for_category(cls, status_code=status, model_name=model_name, body=body, **keywords)


def _details_of(name: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded details, or for a record without them what its message says."""
    details = record.get("details")
    if isinstance(details, Mapping):
        return dict(details)
    message = _text_field(record, "message") or ""
    if name == "ModelHTTPError" or name in _API_ERRORS:
        match = _HTTP_MESSAGE.fullmatch(message)
        if match is not None:
            body = match["body"]
            return {"status_code": int(match["status"]), "model_name": match["model"],
                    "body": None if body == "None" else body}
    if name in _BEHAVIOUR_ERRORS and ", body:\n" in message:
        text, body = message.split(", body:\n", 1)
        return {"message": text, "body": body}
    return {}
