"""The cipher and mapper of encrypted stores, byte by byte.

The stores themselves are tested in tests/integration/test_encryption.py.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import pytest

from phaseledger import CorruptEvent, DecryptionFailed, Engine, Store, generate_cipher_key
from phaseledger.domain.run import WorkflowRun
from phaseledger.store.cipher import RotatingCipher, _NoKeyOpens
from tests.integration.test_encryption import INPUT_SECRET, STEP_SECRET, make_workflow


def started(run_id: str = "run-1") -> WorkflowRun.Event:
    run = WorkflowRun._create(WorkflowRun.RunStarted, id=run_id, workflow="w", workflow_version=1,
                              input={"secret": INPUT_SECRET}, parent=None)
    [event] = run.collect_events()
    return event


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    new, old = generate_cipher_key(), generate_cipher_key(24)
    sealed_old = RotatingCipher([old]).encrypt(b'{"a":1}')
    both = RotatingCipher([new, old])
    sealed_new = both.encrypt(b'{"a":2}')
    assert both.decrypt(sealed_old) == b'{"a":1}' and both.decrypt(sealed_new) == b'{"a":2}'
    assert RotatingCipher([new]).open(sealed_old) is None
    assert RotatingCipher([old]).open(sealed_new) is None
    assert sealed_new != both.encrypt(b'{"a":2}'), "a fresh nonce every time"


def test_plain_states_pass_and_anything_else_is_refused() -> None:
    cipher = RotatingCipher([generate_cipher_key()])
    assert cipher.decrypt(b'{"plain":true}') == b'{"plain":true}'  # stored before encryption was on
    packed = zlib.compress(b'{"plain":true}')
    assert cipher.decrypt(packed) == packed
    with pytest.raises(_NoKeyOpens):
        cipher.decrypt(RotatingCipher([generate_cipher_key()]).encrypt(b'{"x":1}'))


def test_a_changed_byte_is_an_unreadable_event_naming_the_run() -> None:
    mapper = Store("memory://", cipher_key=generate_cipher_key(), compress=True).app.mapper
    stored = mapper.to_stored_event(started("run-7"))
    assert INPUT_SECRET.encode() not in stored.state
    assert mapper.to_domain_event(stored).input == {"secret": INPUT_SECRET}
    damaged = bytearray(stored.state)
    damaged[-1] ^= 1
    with pytest.raises(DecryptionFailed, match=r"cannot read event 1 \(RunStarted\) of run 'run-7'") as caught:
        mapper.to_domain_event(dataclasses.replace(stored, state=bytes(damaged)))
    assert caught.value.run_id == "run-7" and caught.value.version == 1


def sealed_starting_with(prefix: bytes, test: Callable[[bytes], bool] = lambda state: True) -> bytes:
    """A state encrypted under a fresh key whose ciphertext starts with ``prefix`` (and passes ``test``)."""
    cipher = Store("memory://", cipher_key=generate_cipher_key()).app.mapper.to_stored_event
    while True:
        state = cipher(started("sealed")).state
        if state.startswith(prefix) and test(state):
            return state


@pytest.mark.parametrize("looks_like", ["json", "zlib"])
def test_without_a_key_an_encrypted_state_that_looks_plain_by_its_first_bytes_is_still_refused(
    looks_like: str,
) -> None:
    # One ciphertext in 256 starts with "{", one in about 8,000 with a zlib header.
    if looks_like == "json":
        state = sealed_starting_with(b"{")
    else:
        state = sealed_starting_with(b"\x78", lambda s: (s[0] << 8 | s[1]) % 31 == 0)
    mapper = Store("memory://").app.mapper
    stored = dataclasses.replace(mapper.to_stored_event(started("sealed")), state=state)
    with pytest.raises(DecryptionFailed, match="no cipher key is configured"):
        mapper.to_domain_event(stored)


def test_without_a_key_a_damaged_plain_state_is_a_damaged_event_not_an_encrypted_one() -> None:
    mapper = Store("memory://").app.mapper
    stored = mapper.to_stored_event(started("plain"))
    for damaged in (stored.state[: len(stored.state) // 2], stored.state.replace(b'"', b"'", 1),
                    zlib.compress(stored.state)[:-4] + b"oops"):
        with pytest.raises(CorruptEvent) as caught:
            mapper.to_domain_event(dataclasses.replace(stored, state=damaged))
        assert not isinstance(caught.value, DecryptionFailed)


def test_without_settings_the_mapper_has_no_cipher_and_no_compressor(monkeypatch: pytest.MonkeyPatch) -> None:
    # eventsourcing's own variables do not switch anything on (nor break the store).
    monkeypatch.setenv("CIPHER_TOPIC", "eventsourcing.cipher:AESCipher")
    monkeypatch.setenv("CIPHER_KEY", generate_cipher_key())
    monkeypatch.setenv("COMPRESSOR_TOPIC", "eventsourcing.compressor:ZlibCompressor")
    monkeypatch.delenv("PHASELEDGER_CIPHER_KEY", raising=False)
    monkeypatch.delenv("PHASELEDGER_COMPRESS", raising=False)
    store = Store("memory://")
    assert store.app.mapper.cipher is None and store.app.mapper.compressor is None
    assert not store.encrypted and not store.compressed
    store.close()


async def test_a_memory_store_encrypts_too() -> None:
    engine = Engine("memory://", cipher_key=generate_cipher_key(), compress=True)
    wf = make_workflow([], [])
    run = await engine.run(wf, {"api_key": INPUT_SECRET}, run_id="m")
    assert run.output == {"answer": STEP_SECRET}
    states = [e.state for e in engine.store.app.recorder.select_events("m")]
    assert states and not any(INPUT_SECRET.encode() in s or STEP_SECRET.encode() in s for s in states)
    assert engine.get("m").state.api_key == INPUT_SECRET
    engine.close()
