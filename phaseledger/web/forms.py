"""Forms of the web view's actions: a signal's form from its pydantic model, and CSRF tokens.

:func:`signal_fields` turns a declared signal's payload model into form fields (a
checkbox for a bool, a number input for an int or float, a select for a ``Literal`` or an
enum, a text input for a string, a JSON text area for anything else); :func:`parse_signal`
turns the submitted form back into the payload, which the engine then validates against
the model as it validates any signal.

Actions are protected against cross-site requests with signed double-submit tokens
(:class:`Csrf`): the browser holds a random nonce in a same-site cookie and each form
carries the HMAC of that nonce under the server's secret; a request without both, or
whose ``Origin`` is another site, is refused.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel

from phaseledger.domain.errors import InvalidInput

CSRF_COOKIE = "phaseledger_csrf"
CSRF_FIELD = "csrf_token"


class Csrf:
    """Signed double-submit CSRF tokens under the actions secret."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"phaseledger-web-csrf:" + secret.encode()).digest()

    @staticmethod
    def new_nonce() -> str:
        """A fresh random nonce for the cookie."""
        return secrets.token_urlsafe(24)

    def token(self, nonce: str) -> str:
        """The form token that goes with ``nonce``."""
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        """Whether ``token`` was made for ``nonce`` under this secret."""
        return bool(nonce and token) and hmac.compare_digest(self.token(nonce or ""), token or "")


@dataclass
class FormField:
    """One input of a generated form."""

    name: str
    label: str
    kind: str
    """checkbox, number, text, select or json."""
    required: bool = False
    value: Any = None
    """The default, as the input shows it."""
    choices: list[str] = field(default_factory=list)
    step: str = "any"
    help: str = ""

    @property
    def input_id(self) -> str:
        """The HTML id of the input (its label points to it)."""
        return f"field-{self.name}"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None`` in a union, and whether None was allowed."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def signal_fields(model: type[BaseModel] | None) -> list[FormField]:
    """The form fields of a signal's payload model (one JSON text area when it has none)."""
    if model is None:
        return [FormField("payload", "Payload (JSON)", "json", help="Any JSON value; empty sends null.")]
    fields = []
    for name, info in model.model_fields.items():
        annotation, optional = _unwrap(info.annotation)
        required = info.is_required()
        default = None if required else info.get_default(call_default_factory=True)
        label = info.title or name.replace("_", " ").capitalize()
        help_text = info.description or ""
        if annotation is bool:
            fields.append(FormField(name, label, "checkbox", False, bool(default), help=help_text))
        elif annotation in (int, float):
            fields.append(FormField(name, label, "number", required and not optional, default,
                                    step="1" if annotation is int else "any", help=help_text))
        elif typing.get_origin(annotation) is Literal:
            choices = [str(c) for c in typing.get_args(annotation)]
            fields.append(FormField(name, label, "select", required, default, choices, help=help_text))
        elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            choices = [str(m.value) for m in annotation]
            value = default.value if isinstance(default, enum.Enum) else default
            fields.append(FormField(name, label, "select", required, value, choices, help=help_text))
        elif annotation is str:
            fields.append(FormField(name, label, "text", required and not optional, default, help=help_text))
        else:
            shown = json.dumps(default) if default is not None else ""
            fields.append(FormField(name, label, "json", required, shown,
                                    help=help_text or "JSON (a list, an object, a number, ...)."))
    return fields


def parse_signal(model: type[BaseModel] | None, form: Mapping[str, Any]) -> Any:
    """The payload a submitted signal form stands for (:class:`InvalidInput` for malformed JSON)."""
    if model is None:
        text = str(form.get("payload") or "").strip()
        return _json_value("payload", text) if text else None
    payload: dict[str, Any] = {}
    for item in signal_fields(model):
        raw = form.get(item.name)
        if item.kind == "checkbox":
            payload[item.name] = raw is not None and str(raw) not in ("", "0", "false", "off")
            continue
        text = "" if raw is None else str(raw)
        if item.kind == "text":
            if text or item.required:
                payload[item.name] = text
            continue
        if not text.strip():
            continue  # left empty: the model's default (or its "field required" error)
        if item.kind == "number":
            payload[item.name] = text.strip()  # pydantic parses numeric strings in lax mode
        elif item.kind == "select":
            payload[item.name] = text
        else:
            payload[item.name] = _json_value(item.label, text)
    return payload


def _json_value(label: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{label} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
