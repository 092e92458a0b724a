"""How a durable unit is identified in the journal: its kind, key slot and fingerprint.

pydantic-ai names each unit (``JournalOperationNamer``) and hands the engine an opaque
``cache_key`` of the unit's inputs. From them phaseledger derives

- the journal ``kind``: ``model`` for model requests, ``tool`` for tool calls, argument
  validation and tool discovery, ``agent`` for event deliveries and capability operations;
- the key slot: tool calls and validations are keyed by the model's ``tool_call_id``
  (replay-stable because it comes from a journaled response), everything else by its
  ordinal within the agent run and slot;
- a fingerprint of what was asked, checked on replay: the request's messages with their
  ``timestamp`` fields stripped (they change on every attempt), its settings and tool
  definitions; a tool call's name and arguments.

The ``cache_key`` tuples are private pydantic-ai classes, so they are searched by type,
never by position.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter
from pydantic_ai.durable_exec import (
    CapabilityOperationId,
    DurableOperationId,
    EventStreamHandlerId,
    ModelCancelSuspendedResponseId,
    ModelCompactMessagesId,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.messages import ModelMessagesTypeAdapter, ModelRequest, ModelResponse
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.tools import RunContext

from phaseledger.domain.values import strip_volatile

_PARAMETERS = TypeAdapter(ModelRequestParameters)


@dataclass(frozen=True)
class UnitIdentity:
    """What the journal knows a unit by."""

    kind: str
    """``model``, ``tool`` or ``agent``."""
    slot: str
    """The key slot within the agent run (``m``: model requests, ``t``: tool calls, ...)."""
    unit_id: str | None
    """A replay-stable id of its own (a ``tool_call_id``), else None: keyed by ordinal."""
    fingerprint: str | None
    asked: str
    """A short description of what was asked, for error messages."""
    run_context: RunContext[Any] | None
    is_model_request: bool = False


def digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _find(cache_key: tuple[object, ...], kind: type[Any]) -> Any:
    return next((item for item in cache_key if isinstance(item, kind)), None)


def _messages(cache_key: tuple[object, ...]) -> list[Any] | None:
    for item in cache_key:
        if isinstance(item, list) and all(isinstance(m, (ModelRequest, ModelResponse)) for m in item):
            return item
    return None


class MessageDigests:
    """Digests of the messages of one agent run, each computed once.

    The history grows by a request and a response per turn, so digesting every message of
    every request would cost O(turns²). Settled messages (all but the newest two, which
    pydantic-ai may still be completing) are remembered by identity.
    """

    def __init__(self) -> None:
        self._settled: dict[int, tuple[object, str]] = {}

    def of(self, messages: list[Any]) -> list[str]:
        """The digest of each message, in order."""
        digests: list[str] = []
        settled = len(messages) - 2
        for index, message in enumerate(messages):
            known = self._settled.get(id(message))
            if known is not None and known[0] is message:
                digests.append(known[1])
                continue
            value = digest(strip_volatile(ModelMessagesTypeAdapter.dump_python([message], mode="json")))
            if index < settled:
                self._settled[id(message)] = (message, value)
            digests.append(value)
        return digests


def request_fingerprint(
    cache_key: tuple[object, ...], model_name: str | None = None, digests: MessageDigests | None = None
) -> str | None:
    """The fingerprint of a model request: model, messages (timestamps stripped), settings, tools."""
    messages = _messages(cache_key)
    if messages is None:
        return None
    parts: list[Any] = [model_name, (digests or MessageDigests()).of(messages)]
    settings = _find(cache_key, dict)
    parts.append(strip_volatile(settings) if settings else None)
    parameters = _find(cache_key, ModelRequestParameters)
    if parameters is not None:
        try:
            parts.append(strip_volatile(_PARAMETERS.dump_python(parameters, mode="json")))
        except Exception:  # parameters holding values pydantic cannot dump: fingerprint the rest
            parts.append(None)
    return digest(parts)


def _tool_call(cache_key: tuple[object, ...]) -> tuple[str | None, dict[str, Any] | None]:
    name = next((item for item in cache_key if isinstance(item, str)), None)
    args = _find(cache_key, dict)
    return name, args


def _describe_call(name: str | None, args: dict[str, Any] | None) -> str:
    text = json.dumps(args, sort_keys=True, default=str) if args is not None else "?"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"tool call {name!r} with arguments {text}"


def identify(
    operation_id: DurableOperationId, name: str, cache_key: tuple[object, ...], digests: MessageDigests | None = None
) -> UnitIdentity:
    """Derive the journal identity of a unit from pydantic-ai's operation id and cache key."""
    run_context = _find(cache_key, RunContext)
    match operation_id:
        case ModelRequestId(model_name=model_name):
            return UnitIdentity(
                "model", "m", None, request_fingerprint(cache_key, model_name, digests),
                f"a request to model {model_name!r} whose model, prompt, history, instructions, settings or tools "
                "differ from the recorded one",
                run_context, is_model_request=True,
            )
        case ModelCompactMessagesId() | ModelCancelSuspendedResponseId():
            return UnitIdentity("model", "m", None, None, f"model operation {name!r}", run_context)
        case ToolsetCallToolId() | ToolsetValidateToolArgumentsId():
            tool_name, args = _tool_call(cache_key)
            slot = "t" if isinstance(operation_id, ToolsetCallToolId) else "v"
            call_id = run_context.tool_call_id if run_context is not None else None
            return UnitIdentity(
                "tool", slot, call_id, digest([tool_name, args]), _describe_call(tool_name, args), run_context
            )
        case ToolsetGetToolsId(toolset_id=toolset_id):
            return UnitIdentity("tool", f"d:{toolset_id}#", None, None, f"tool discovery {name!r}", run_context)
        case ToolsetGetInstructionsId(toolset_id=toolset_id):
            return UnitIdentity("tool", f"i:{toolset_id}#", None, None, f"instructions of {name!r}", run_context)
        case EventStreamHandlerId():
            return UnitIdentity("agent", "e", None, None, f"event delivery {name!r}", run_context)
        case CapabilityOperationId(capability_id=capability_id, operation=operation):
            return UnitIdentity(
                "agent", f"c:{capability_id}.{operation}#", None, None, f"capability operation {name!r}", run_context
            )
        case _:  # the union grows in minor releases: key new operations by name and ordinal
            return UnitIdentity("agent", f"x:{name}#", None, None, f"operation {name!r}", run_context)
