"""Encryption and compression at rest of the events and snapshots a store keeps.

Only the ``state`` of a stored event is compressed and encrypted: the fields of the
event (run inputs, step results, phase states, outputs, signal payloads, errors). The run
id, the event's topic (its type), its version and the notification id are columns of
their own and stay plain, as do the tables derived from the log (see docs/encryption.md).

Settings (both off by default, and then nothing changes on any path):

- ``Engine(cipher_key=...)`` / ``Store(cipher_key=...)``, else ``$PHASELEDGER_CIPHER_KEY``:
  one or more AES keys, each base64 of 16, 24 or 32 random bytes
  (:func:`generate_cipher_key`), separated by commas in a string or given as a list.
  The first key encrypts what is written; every key is tried, in order, to read. So a
  key is rotated by putting a new one first and keeping the old ones after it while
  events written with them remain. Events are encrypted with AES-GCM by eventsourcing's
  ``eventsourcing.cryptography:AESCipher`` (the ``cryptography`` package, extra
  ``phaseledger[encryption]``), which also authenticates them: a changed byte is an
  unreadable event, never a wrong one.
- ``compress=True``, else ``$PHASELEDGER_COMPRESS`` (``1``/``true``/``yes``/``on``):
  zlib (eventsourcing's ``ZlibCompressor``) before encryption.

A store can be switched to either at any time without a migration: events stored
plain (or uncompressed) before still read, because a JSON state is recognised by its
first and last byte when no key opens it; a compressed one is recognised by its zlib
header when compression is off. An event that none of the configured keys opens and
that is not plain raises :class:`~phaseledger.DecryptionFailed` naming the run.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import Cipher, Mapper, MapperDeserialisationError, StoredEvent

from phaseledger.domain.errors import DecryptionFailed, EncryptionSetupError

CIPHER_KEY_ENV_VAR = "PHASELEDGER_CIPHER_KEY"
COMPRESS_ENV_VAR = "PHASELEDGER_COMPRESS"
ENCRYPTION_EXTRA = "phaseledger[encryption]"
KEY_SIZES = (16, 24, 32)

CipherKeys = str | Sequence[str]
"""One key, several separated by commas (the first encrypts), or a list of keys."""

_ON = frozenset({"1", "true", "yes", "on", "y"})
_OFF = frozenset({"", "0", "false", "no", "off", "n"})


def generate_cipher_key(num_bytes: int = 32) -> str:
    """A new random AES key (256 bits by default) in the form ``cipher_key=`` takes: base64 text.

    Keep it where the store's users can get it and nobody else can: without it the
    encrypted events cannot be read by anyone.
    """
    if num_bytes not in KEY_SIZES:
        raise EncryptionSetupError(f"an AES key has 16, 24 or 32 bytes, not {num_bytes}")
    return base64.b64encode(secrets.token_bytes(num_bytes)).decode("ascii")


def parse_cipher_keys(value: CipherKeys | None, *, source: str = "cipher_key") -> tuple[str, ...]:
    """The keys in ``value`` (current first), checked; ``()`` for none.

    Raises :class:`EncryptionSetupError` naming the position of a key that is not base64
    of 16, 24 or 32 bytes (never the key itself).
    """
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    keys: list[str] = []
    for position, part in enumerate(parts, 1):
        if not isinstance(part, str):
            raise EncryptionSetupError(f"key {position} of {source} is a {type(part).__name__}, not base64 text")
        text = part.strip()
        if not text:
            continue
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) not in KEY_SIZES:
            raise EncryptionSetupError(
                f"key {position} of {source} is not base64 of 16, 24 or 32 bytes; make a key with "
                "`phaseledger keygen` or phaseledger.generate_cipher_key()"
            )
        keys.append(base64.b64encode(raw).decode("ascii"))
    return tuple(keys)


def resolve_cipher_keys(cipher_key: CipherKeys | None, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The keys given, else those of ``$PHASELEDGER_CIPHER_KEY``; ``()``: no encryption.

    An empty string or list given explicitly turns encryption off whatever the environment says.
    """
    if cipher_key is not None:
        return parse_cipher_keys(cipher_key)
    environ = os.environ if environ is None else environ
    return parse_cipher_keys(environ.get(CIPHER_KEY_ENV_VAR), source=f"${CIPHER_KEY_ENV_VAR}")


def parse_compress(value: str | None, *, source: str = f"${COMPRESS_ENV_VAR}") -> bool:
    """Whether a switch written as text (``1``/``true``/``yes``/``on``, or off) is on."""
    text = (value or "").strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise EncryptionSetupError(f"{source} is {value!r}: use 1 (compress stored events) or 0")


def resolve_compress(compress: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """``compress`` when given, else ``$PHASELEDGER_COMPRESS``."""
    if compress is not None:
        return bool(compress)
    environ = os.environ if environ is None else environ
    return parse_compress(environ.get(COMPRESS_ENV_VAR))


def _aes_cipher_class() -> type[Cipher]:
    """eventsourcing's AES-GCM cipher, or a clear error when ``cryptography`` is missing."""
    try:
        from eventsourcing.cryptography import AESCipher
    except ImportError as exc:
        raise EncryptionSetupError(
            f"encrypting the store needs the cryptography package: pip install '{ENCRYPTION_EXTRA}' "
            f"(or unset ${CIPHER_KEY_ENV_VAR} / cipher_key=) [{exc}]"
        ) from None
    return AESCipher


def _looks_plain(state: bytes) -> bool:
    """Whether a stored state is what phaseledger writes without a key: a JSON object, or zlib."""
    return (state[:1] == b"{" and state[-1:] == b"}") or _looks_zlib(state)


def _looks_zlib(data: bytes) -> bool:
    # A zlib stream starts with CMF 0x78 (deflate, 32K window) and a FLG making CMF*256+FLG
    # a multiple of 31.
    return len(data) > 2 and data[0] == 0x78 and ((data[0] << 8) | data[1]) % 31 == 0


class _NoKeyOpens(ValueError):
    """Raised by :class:`RotatingCipher` for a state no key opens (turned into DecryptionFailed)."""


class RotatingCipher(Cipher):
    """AES-GCM under several keys: encrypts with the first, decrypts with whichever opens the data.

    Each key is an instance of eventsourcing's ``eventsourcing.cryptography:AESCipher``.
    A state that no key opens but that is plain JSON (or zlib), as stored before
    encryption was turned on, is handed on as it is.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise EncryptionSetupError("a cipher needs at least one key")
        from eventsourcing.utils import Environment

        aes = _aes_cipher_class()
        self.ciphers = [aes(Environment(env={"CIPHER_KEY": key})) for key in keys]
        """One eventsourcing AESCipher per key, the current one first."""
        self._current = self.ciphers[0]

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt with the current (first) key."""
        return self._current.encrypt(plaintext)

    def open(self, ciphertext: bytes) -> bytes | None:
        """The plaintext, from the first key that opens ``ciphertext``; None if none does."""
        for cipher in self.ciphers:
            try:
                return cipher.decrypt(ciphertext)
            except ValueError:  # InvalidTag (another key), or too short to be ciphertext
                continue
        return None

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt with the first key that opens it; a plain state passes; else :class:`_NoKeyOpens`."""
        plaintext = self.open(ciphertext)
        if plaintext is not None:
            return plaintext
        if _looks_plain(ciphertext):
            return ciphertext  # written before encryption was turned on
        raise _NoKeyOpens(f"none of the configured cipher keys ({len(self.ciphers)}) opens it")


class TolerantZlibCompressor(ZlibCompressor):
    """eventsourcing's zlib compressor, passing on states stored before compression was on."""

    def decompress(self, data: bytes) -> bytes:
        """Decompress zlib data; a plain JSON state is returned as it is."""
        if data[:1] == b"{":
            return data
        return zlib.decompress(data)


class CipherMapper(Mapper[str]):
    """eventsourcing's mapper with errors a user can act on when a stored state cannot be read.

    Writing is eventsourcing's own (transcode, compress, encrypt). Reading is too, and only
    when it fails does this class look further: a state no key opens raises
    :class:`DecryptionFailed`; a compressed state read with compression off is decompressed;
    an encrypted state read without a key raises :class:`DecryptionFailed`.
    """

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The domain event stored in ``stored_event`` (see the class for the errors)."""
        try:
            return _decode(self, stored_event)
        except MapperDeserialisationError as exc:
            return self._recover(stored_event, exc)

    def _recover(self, stored: StoredEvent, exc: MapperDeserialisationError) -> Any:
        state = stored.state
        cipher = self.cipher if isinstance(self.cipher, RotatingCipher) else None
        if isinstance(exc.__cause__, _NoKeyOpens) or (
            cipher is not None and cipher.open(state) is None and not _really_plain(state)
        ):
            count = len(cipher.ciphers) if cipher is not None else 0
            raise self._failed(stored, f"none of the configured cipher keys ({count}) opens it; put the key it "
                               f"was written with after the current one in ${CIPHER_KEY_ENV_VAR} "
                               "(or cipher_key=[current, old, ...])") from None
        inner = (cipher.open(state) or state) if cipher is not None else state
        if self.compressor is None and _looks_zlib(inner):
            try:  # stored compressed, read with compression off
                return Mapper(self.transcoder, compressor=TolerantZlibCompressor(), cipher=self.cipher
                              ).to_domain_event(stored)
            except MapperDeserialisationError:
                pass
        if self.cipher is None and not _reads_as_text(state) and not _inflates_to_text(state):  # not JSON, however damaged
            raise self._failed(stored, f"it is encrypted (or damaged) and no cipher key is configured: set "
                               f"${CIPHER_KEY_ENV_VAR} or pass cipher_key= with the store's key") from None
        raise exc

    @staticmethod
    def _failed(stored: StoredEvent, reason: str) -> DecryptionFailed:
        kind = stored.topic.rsplit(".", 1)[-1].rsplit(":", 1)[-1]
        version = stored.originator_version
        what = f"the snapshot at version {version}" if kind == "Snapshot" else f"event {version} ({kind})"
        return DecryptionFailed(str(stored.originator_id), version, what, reason)


_decode = Mapper.to_domain_event  # called directly: cheaper than super() on every read


_CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _reads_as_text(state: bytes) -> bool:
    """Whether a state that does not decode still reads as JSON text, damaged (truncated or
    edited), rather than as random bytes such as ciphertext: it starts with ``{`` and holds
    no control byte, which JSON text never holds raw and ciphertext is full of (one in 256
    ciphertexts starts with ``{``)."""
    return state[:1] == b"{" and _CONTROL_BYTE.search(state) is None


def _inflates_to_text(state: bytes) -> bool:
    """Whether a state is a zlib stream whose start inflates to JSON text (a compressed row,
    maybe damaged further on), not random bytes behind a zlib header (one ciphertext in 8,000
    has one)."""
    if not _looks_zlib(state):
        return False
    try:
        start = zlib.decompressobj().decompress(state, 64)
    except zlib.error:
        return False
    return _reads_as_text(start)


def _really_plain(state: bytes) -> bool:
    """Whether a state no key opens is plain JSON or zlib indeed (checked by decoding it)."""
    if not _looks_plain(state):
        return False
    try:
        if state[:1] != b"{":
            state = zlib.decompress(state)
        import orjson

        orjson.loads(state)
    except (zlib.error, ValueError):
        return False
    return True


def make_mapper(transcoder: Any, keys: Sequence[str], compress: bool,
                mapper_class: type[CipherMapper] = CipherMapper) -> CipherMapper:
    """The mapper of a store with these settings (no cipher and no compressor when off)."""
    return mapper_class(
        transcoder=transcoder,
        cipher=RotatingCipher(keys) if keys else None,
        compressor=TolerantZlibCompressor() if compress else None,
    )
