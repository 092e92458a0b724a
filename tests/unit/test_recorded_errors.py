"""Errors in the log are plain data: described by ``describe_error``, rebuilt by ``rebuild_error``.

Known types come back as themselves, built by calling their class with recorded values; any
other type comes back as a ``RecordedError``; nothing named in a record is imported, and the
``pickle`` field of records written by earlier releases is never loaded.
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai.exceptions import (
    ApprovalRequired,
    CallDeferred,
    ContentFilterError,
    ModelAPIError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRateLimitError,
    ModelRetry,
    ModelUnavailableError,
    ToolFailed,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)

import phaseledger
from phaseledger import PhaseledgerError, RecordedError, SignalTimeout
from phaseledger.domain.recorded_errors import CAUSE_DEPTH, describe_error, rebuild_error

PACKAGE = Path(phaseledger.__file__).parent


def recorded(exc: BaseException) -> dict[str, Any]:
    """The record of ``exc`` raised for real, as the log gives it back (through JSON)."""
    try:
        raise exc
    except BaseException as raised:
        record = describe_error(raised)
    assert json.loads(json.dumps(record, allow_nan=False)) == record, "the record is plain JSON"
    return json.loads(json.dumps(record))


def state_of(exc: BaseException) -> dict[str, Any]:
    return {k: v for k, v in vars(exc).items() if k != "__notes__"}


KNOWN = [
    pytest.param(ModelHTTPError(503, "gpt-x", body={"error": {"type": "overloaded"}}), id="http-503-json-body"),
    pytest.param(ModelHTTPError(429, "gpt-x", "slow down", headers={"Retry-After": "7"}), id="http-429-retry-after"),
    pytest.param(ModelHTTPError.for_category(ModelUnavailableError, status_code=503, model_name="m", body="busy"),
                 id="categorized-503"),
    pytest.param(ModelHTTPError.for_category(ModelRateLimitError, status_code=429, model_name="m", retry_after=2.5),
                 id="categorized-429"),
    pytest.param(ModelConnectionError("m", "connection reset", phase="read"), id="connection"),
    pytest.param(ModelAPIError("m", "provider said no", provider_error_code="bad"), id="api"),
    pytest.param(UnexpectedModelBehavior("invalid JSON", '{"partial": true}'), id="unexpected-behaviour"),
    pytest.param(ContentFilterError("refused"), id="content-filter"),
    pytest.param(ModelRetry("try again with a city"), id="model-retry"),
    pytest.param(ToolFailed("no such file"), id="tool-failed"),
    pytest.param(UserError("tool misconfigured"), id="user-error"),
    pytest.param(UsageLimitExceeded("request limit of 3 reached"), id="usage-limit"),
    pytest.param(CallDeferred({"ticket": 7}, kind="question"), id="call-deferred"),
    pytest.param(ApprovalRequired({"amount": 12}), id="approval-required"),
    pytest.param(ValueError("bad value"), id="value-error"),
    pytest.param(KeyError("missing"), id="key-error"),
    pytest.param(TimeoutError("timed out"), id="timeout"),
    pytest.param(ConnectionResetError("reset by peer"), id="connection-reset"),
    pytest.param(FileNotFoundError(2, "No such file or directory"), id="file-not-found"),
    pytest.param(RuntimeError(), id="runtime-error-no-message"),
]


@pytest.mark.parametrize("original", KNOWN)
def test_known_types_are_rebuilt_with_their_type_message_and_provider_details(original: BaseException) -> None:
    record = recorded(original)
    assert (record["type"], record["module"]) == (type(original).__name__, type(original).__module__)
    rebuilt = rebuild_error(record)
    assert type(rebuilt) is type(original)
    assert str(rebuilt) == str(original) and rebuilt.args == original.args
    assert state_of(rebuilt) == state_of(original)


def test_a_model_http_error_keeps_its_status_body_and_retry_after() -> None:
    original = ModelHTTPError(503, "gpt-x", body={"error": "overloaded"}, headers={"retry-after": "4"})
    record = recorded(original)
    assert record["details"]["status_code"] == 503 and record["details"]["body"] == {"error": "overloaded"}
    rebuilt = rebuild_error(record)
    assert isinstance(rebuilt, ModelHTTPError)
    assert (rebuilt.status_code, rebuilt.body, rebuilt.retry_after) == (503, {"error": "overloaded"}, 4.0)


def test_a_cause_chain_survives() -> None:
    try:
        try:
            try:
                raise ConnectionResetError("peer hung up")
            except ConnectionResetError as reset:
                raise KeyError("session") from reset
        except KeyError:
            raise ModelHTTPError(502, "m", body="bad gateway")  # noqa: B904 - chained as context on purpose
    except ModelHTTPError as exc:
        record = describe_error(exc)

    rebuilt = rebuild_error(json.loads(json.dumps(record)))
    assert isinstance(rebuilt, ModelHTTPError) and rebuilt.status_code == 502
    assert rebuilt.__cause__ is None
    context = rebuilt.__context__  # raised while handling the KeyError
    assert isinstance(context, RecordedError)
    assert (context.type_name, context.module, context.message) == ("KeyError", "builtins", "'session'")
    assert isinstance(context.cause, RecordedError) and context.__cause__ is context.cause
    assert (context.cause.type_name, context.cause.message) == ("ConnectionResetError", "peer hung up")
    assert "ConnectionResetError: peer hung up" in context.cause.traceback
    assert context.cause.cause is None


def test_raise_from_none_records_no_cause() -> None:
    try:
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("clean") from None
    except ValueError as exc:
        record = describe_error(exc)
    assert "cause" not in record
    assert rebuild_error(record).__context__ is None


def test_the_cause_chain_is_bounded_and_cycles_end() -> None:
    errors = [RuntimeError(f"level {n}") for n in range(10)]
    for outer, inner in zip(errors, errors[1:], strict=False):
        outer.__cause__ = inner
    errors[-1].__cause__ = errors[0]  # a cycle
    record = describe_error(errors[0])
    depth, link = 0, record
    while "cause" in link:
        depth, link = depth + 1, link["cause"]
    assert depth == CAUSE_DEPTH

    def nested(level: int) -> dict[str, Any]:
        inner = {"type": "Deep", "module": "pkg", "message": str(level)}
        return {**inner, "cause": nested(level - 1)} if level else inner

    replayed = rebuild_error(nested(500))  # a planted record nested deeper than any real one
    chain = 0
    while replayed.cause is not None:
        chain, replayed = chain + 1, replayed.cause
    assert chain == CAUSE_DEPTH


class QuotaSpent(Exception):
    def __init__(self, account: str) -> None:
        super().__init__(f"quota of {account} spent")
        self.account = account


def test_other_types_come_back_as_recorded_errors_that_can_be_routed_on() -> None:
    record = recorded(QuotaSpent("acme"))
    replayed = rebuild_error(record)
    assert isinstance(replayed, RecordedError) and isinstance(replayed, PhaseledgerError)
    assert (replayed.type_name, replayed.module, replayed.message) == ("QuotaSpent", __name__, "quota of acme spent")
    assert "QuotaSpent: quota of acme spent" in replayed.traceback
    assert replayed.data == record and replayed.cause is None
    # Read as the live error was: pydantic-ai describes a failed attempt as "QuotaSpent: quota of acme spent".
    assert type(replayed).__name__ == "QuotaSpent" and str(replayed) == "quota of acme spent"
    assert "RecordedError" in "".join(replayed.__notes__)  # a traceback says what it is and how to match it
    assert copy.deepcopy(replayed).data == record
    assert describe_error(replayed) == record  # recorded again (a run failing with it) as first recorded
    with pytest.raises(RecordedError):
        raise replayed


@pytest.mark.parametrize("record", [
    pytest.param({"type": "system", "module": "os", "message": "touch planted", "args": ["touch planted"]}, id="os"),
    pytest.param({"type": "Planted", "module": "phaseledger_planted_module", "message": "m"}, id="unknown-module"),
    pytest.param({"type": "ValueError", "module": "phaseledger_planted_module", "message": "m"}, id="known-name"),
    pytest.param({"type": "ModelHTTPError", "module": "builtins", "message": "m"}, id="wrong-module"),
    pytest.param({"type": "a\nb", "module": "x y", "message": "m"}, id="not-names"),
])
def test_nothing_named_in_a_record_is_imported_or_called(record: dict[str, Any]) -> None:
    replayed = rebuild_error(record)
    assert isinstance(replayed, RecordedError)
    assert "phaseledger_planted_module" not in sys.modules
    assert replayed.type_name == record["type"]


@pytest.mark.parametrize("record", [
    pytest.param({"type": "ModelHTTPError", "module": "pydantic_ai.exceptions", "message": "m",
                  "details": {"status_code": "five hundred", "model_name": "m"}}, id="http-status-not-a-number"),
    pytest.param({"type": "ModelServerError", "module": "pydantic_ai.exceptions", "message": "m",
                  "details": {"model_name": "m", "phase": "read"}}, id="api-error-with-a-field-it-lacks"),
    pytest.param({"type": "ModelAPIError", "module": "pydantic_ai.exceptions", "message": "m"},
                 id="api-error-without-model"),
    pytest.param({"type": "UnicodeError", "module": "builtins", "message": "m", "args": "not a list"},
                 id="builtin-args-not-a-list"),
])
def test_values_a_class_does_not_take_come_back_as_recorded_errors(record: dict[str, Any]) -> None:
    replayed = rebuild_error(record)
    if record["type"] == "UnicodeError":  # args unusable: rebuilt from the message
        assert type(replayed) is UnicodeError and str(replayed) == "m"
    else:
        assert isinstance(replayed, RecordedError) and replayed.type_name == record["type"]


class _Planted:
    """Pickles as a call of ``open(path, "w")``: loading the pickle creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (self.path, "w")


def old_record(exc: BaseException, marker: Path) -> dict[str, Any]:
    """A record as earlier releases wrote it (type, message, traceback, pickle), its pickle planted."""
    return {"type": type(exc).__name__, "message": str(exc), "traceback": "Traceback ...",
            "pickle": base64.b64encode(pickle.dumps(_Planted(marker))).decode()}


def test_old_records_are_rebuilt_from_type_and_message_and_their_pickle_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "planted"
    http = rebuild_error(old_record(ModelHTTPError(503, "gpt-x", body={"error": "overloaded"}), marker))
    assert type(http) is ModelHTTPError and (http.status_code, http.model_name) == (503, "gpt-x")
    assert str(http) == str(ModelHTTPError(503, "gpt-x", body={"error": "overloaded"}))
    unavailable = ModelHTTPError.for_category(ModelUnavailableError, status_code=503, model_name="m")
    category = rebuild_error(old_record(unavailable, marker))
    assert isinstance(category, ModelUnavailableError) and isinstance(category, ModelHTTPError)
    behaviour = rebuild_error(old_record(UnexpectedModelBehavior("bad", '{"a": 1}'), marker))
    assert type(behaviour) is UnexpectedModelBehavior
    assert (behaviour.message, behaviour.body) == ("bad", '{\n  "a": 1\n}')
    value = rebuild_error(old_record(ValueError("bad value"), marker))
    assert type(value) is ValueError and str(value) == "bad value"
    retry = rebuild_error(old_record(ModelRetry("again"), marker))
    assert type(retry) is ModelRetry and retry.message == "again"
    other = rebuild_error(old_record(QuotaSpent("acme"), marker))
    assert isinstance(other, RecordedError) and other.module is None and str(other) == "quota of acme spent"
    assert not marker.exists()


def test_signal_timeouts_replay_as_before() -> None:
    replayed = rebuild_error({"type": "SignalTimeout", "message": "approve", "timeout": 5})
    assert type(replayed) is SignalTimeout and (replayed.name, replayed.timeout) == ("approve", 5.0)


def test_phaseledger_has_no_pickle() -> None:
    """No module imports a pickle-like loader; only the note on old records mentions pickles."""
    loaders = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
    mentions: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                assert not {alias.name.split(".")[0] for alias in node.names} & loaders, path
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in loaders, path
        if "pickle" in text:
            mentions[str(path.relative_to(PACKAGE))] = text.count("pickle")
    errors = (PACKAGE / "domain" / "recorded_errors.py").read_text()
    rebuild = next(node for node in ast.parse(errors).body
                   if isinstance(node, ast.FunctionDef) and node.name == "rebuild_error")
    assert mentions == {"domain/recorded_errors.py": (ast.get_docstring(rebuild) or "").count("pickle")}
