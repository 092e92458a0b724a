"""Resume tokens: signed, opaque strings that name a run and a position in its log.

A token is ``pl1.<payload>.<signature>``: the payload is base64url of compact JSON
``{"r": run_id, "v": version, "s": store_id}`` and the signature is HMAC-SHA256 of
``pl1.<payload>`` under the engine's token key (``Engine(token_key=...)`` or
``$PHASELEDGER_TOKEN_KEY``). Anyone holding a token can read the run id and version
(tokens are signed, not encrypted); nobody without the key can make or edit one.

Tokens are bound to the store that issued them through the store's *identity*: a random
id written once, on first use, as the only event of a reserved stream
(:data:`STORE_IDENTITY_ID`) in the store itself. The identity travels with the data: the
same database reached through another URL (another host name, a connection pooler)
accepts the token, while a different database with the same URL (another
``memory://`` store, a recreated file) refuses it. A copied SQLite file keeps its
identity, and so accepts the tokens of the original.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from eventsourcing.domain import (
    BaseAggregate,
    CanCreateTimestamp,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)

from phaseledger.domain.errors import ConcurrencyConflict, InvalidToken, TokenKeyMissing
from phaseledger.store.eventstore import Store

TOKEN_KEY_ENV_VAR = "PHASELEDGER_TOKEN_KEY"
TOKEN_PREFIX = "pl1"
STORE_IDENTITY_ID = "$phaseledger:store-identity"
"""The stream that holds the store's identity (never a run: it holds no RunStarted)."""
MIN_KEY_BYTES = 16

_IDENTITIES: weakref.WeakKeyDictionary[Store, str] = weakref.WeakKeyDictionary()
"""Each open store's identity, once read: it never changes."""


class StoreIdentity(BaseAggregate[str]):
    """The identity of a store: one event, written the first time a token is made or read."""

    class Event(CanMutateAggregate[str], CanCreateTimestamp, metaclass=MetaDomainEvent):
        """Base class of the identity's events."""

        originator_id: str
        originator_version: int
        timestamp: datetime

    class Identified(CanInitAggregate[str], Event):
        """The store was given the random ``store_id`` that its resume tokens carry."""

        originator_topic: str
        store_id: str

        def apply(self, aggregate: StoreIdentity) -> None:
            aggregate.store_id = self.store_id

    if TYPE_CHECKING:  # set by Identified.apply (an annotation at run time would be a constructor field)
        store_id: str

    @classmethod
    def create(cls, store_id: str) -> StoreIdentity:
        """A new identity for a store that has none yet."""
        return cls._create(cls.Identified, id=STORE_IDENTITY_ID, store_id=store_id)


def store_identity(store: Store) -> str:
    """The store's identity, created (once, race-free) when it has none yet."""
    cached = _IDENTITIES.get(store)
    if cached:
        return cached
    for _ in range(3):
        events = store.stream(STORE_IDENTITY_ID, lte=1)
        if events:
            store_id = str(events[0].store_id)
            break
        try:
            store.record(StoreIdentity.create(uuid.uuid4().hex))
        except ConcurrencyConflict:  # another engine wrote it first: read theirs
            continue
    else:  # pragma: no cover - three lost races in a row
        raise InvalidToken(f"could not establish the identity of store {store.url.redacted}; try again")
    _IDENTITIES[store] = store_id
    return store_id


def resolve_key(token_key: str | bytes | None) -> bytes | None:
    """The signing key: the one given, else ``$PHASELEDGER_TOKEN_KEY``, else None."""
    key = token_key if token_key is not None else os.environ.get(TOKEN_KEY_ENV_VAR)
    if key is None or key == "":
        return None
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise TokenKeyMissing(
            f"the token key is {len(raw)} bytes long; use at least {MIN_KEY_BYTES} random bytes "
            f"(for example `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return raw


def _require(key: bytes | None) -> bytes:
    if key is None:
        raise TokenKeyMissing(
            "resume tokens need a signing key: pass Engine(token_key=...) or set "
            f"${TOKEN_KEY_ENV_VAR} (at least {MIN_KEY_BYTES} random bytes), the same on every "
            "engine that must accept the tokens"
        )
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token names: a run, a version of its log and the issuing store."""

    run_id: str
    version: int
    store_id: str


def make_token(key: bytes | None, claims: TokenClaims) -> str:
    """Sign ``claims`` into an opaque token."""
    payload = json.dumps({"r": claims.run_id, "v": claims.version, "s": claims.store_id},
                         separators=(",", ":"), sort_keys=True)
    body = f"{TOKEN_PREFIX}.{_b64(payload.encode())}"
    return f"{body}.{_sign(_require(key), body)}"


def read_token(key: bytes | None, token: str, store_id: str) -> TokenClaims:
    """Verify a token and return its claims; :class:`InvalidToken` says what is wrong.

    Checks, in order: the shape (a truncated or mangled token), the signature (a forged
    or edited token, or one signed with another key) and the issuing store.
    """
    key = _require(key)
    if not isinstance(token, str) or token.count(".") != 2:
        raise InvalidToken(
            "this is not a phaseledger resume token (expected 'pl1.<payload>.<signature>'): "
            "it may be truncated; copy the whole token"
        )
    prefix, payload, signature = token.split(".")
    if prefix != TOKEN_PREFIX:
        raise InvalidToken(f"unsupported resume token format {prefix!r}; this engine reads {TOKEN_PREFIX!r} tokens")
    expected = _sign(key, f"{prefix}.{payload}")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise InvalidToken(
            "the resume token's signature does not match: it was edited, truncated, forged, or "
            "signed with another token key (check PHASELEDGER_TOKEN_KEY / Engine(token_key=...))"
        )
    try:
        data: Any = json.loads(_unb64(payload))
        claims = TokenClaims(run_id=str(data["r"]), version=int(data["v"]), store_id=str(data["s"]))
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:  # pragma: no cover - signed garbage
        raise InvalidToken(f"the resume token's payload cannot be read: {exc}") from None
    if not hmac.compare_digest(claims.store_id.encode(), store_id.encode()):
        raise InvalidToken(
            f"the resume token for run {claims.run_id!r} was issued by another store; "
            "use it with the engine whose store issued it"
        )
    return claims


_TOKEN_SHAPE = re.compile(r"pl\d+\.")


def looks_like_token(value: str) -> bool:
    """Whether a string has the shape of a token (to tell tokens from run ids)."""
    return isinstance(value, str) and _TOKEN_SHAPE.match(value) is not None
