"""Encryption and compression at rest, on a real SQLite file and on PostgreSQL.

A run whose input holds one secret and whose step returns another is driven, crashed,
resumed by a worker in a fresh engine, read back (get, history, state_at, checkpoints,
a fork, reports), and then every stored byte is searched for the secrets: the SQLite
file and its journal files, and every row of every table of the PostgreSQL schema.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from phaseledger import (
    Context,
    DecryptionFailed,
    EncryptionSetupError,
    Engine,
    PhaseledgerError,
    Store,
    Workflow,
    generate_cipher_key,
    run_worker,
)
from phaseledger.store.cipher import RotatingCipher
from phaseledger.store.eventstore import StoreURL

INPUT_SECRET = "sk-input-3f9a1c77d2e04b8e"
STEP_SECRET = "tok-step-8b2d5e91c4a07f36"
SECRETS = (INPUT_SECRET, STEP_SECRET)
RUN = "vault-run-1"


class Vault(BaseModel):
    api_key: str = ""
    answer: str = ""


class ProcessDied(BaseException):
    """Stops a handler the way a killed process would: no engine code catches it."""


def make_workflow(calls: list[str], crash: list[bool]) -> Workflow[Vault]:
    """Fetch a secret with the input's secret, checkpoint, die once (while ``crash`` holds an item), report."""
    wf = Workflow("vault", state=Vault)

    def fetch(key: str) -> str:
        calls.append(key)
        return STEP_SECRET

    @wf.phase(initial=True, to="report")
    async def ask(ctx: Context[Vault]) -> None:
        ctx.state.answer = await ctx.step("fetch", fetch, ctx.state.api_key)
        await ctx.checkpoint("fetched")
        if crash:
            crash.pop()
            raise ProcessDied

    @wf.phase(final=True)
    async def report(ctx: Context[Vault]) -> dict[str, str]:
        return {"answer": ctx.state.answer}

    return wf


async def drive_everything(url: str, key: str | list[str], *, follow: bool = False) -> None:
    """Run, crash, resume with a worker, then read the run back every way there is."""
    calls: list[str] = []
    wf = make_workflow(calls, [True])
    engine = Engine(url, workflows=[wf], cipher_key=key, snapshot_every=2)
    with pytest.raises(ProcessDied):
        await engine.run(wf, {"api_key": INPUT_SECRET}, run_id=RUN)
    engine.close()

    # A fresh process's worker resumes it: the recorded step result is read back, not fetched again.
    stats = await run_worker(url, [wf], until_idle=True, handle_signals=False,
                             engine_options={"cipher_key": key, "snapshot_every": 2})
    assert stats.completed == 1
    assert calls == [INPUT_SECRET]

    engine = Engine(url, workflows=[wf], cipher_key=key, snapshot_every=2)
    try:
        run = engine.get(RUN)
        assert run.status == "completed" and run.output == {"answer": STEP_SECRET}
        assert run.state == Vault(api_key=INPUT_SECRET, answer=STEP_SECRET)
        history = engine.history(RUN)
        assert json.dumps([e.data for e in history]).count(STEP_SECRET) >= 2
        checkpoint = engine.checkpoint(RUN, "fetched")
        assert checkpoint.state == Vault(api_key=INPUT_SECRET, answer=STEP_SECRET)
        at = engine.state_at(RUN, checkpoint.version)
        assert at.state == Vault(api_key=INPUT_SECRET) and at.journal[0].result == STEP_SECRET
        fork = await engine.fork(RUN, at="fetched", new_run_id=f"{RUN}-fork")
        assert fork.status == "completed" and fork.output == {"answer": STEP_SECRET}
        assert calls == [INPUT_SECRET], "the fork replayed the recorded step"
        assert [f.run_id for f in engine.lineage(RUN).children] == [f"{RUN}-fork"]
        if follow:  # eventsourcing's projection runner, with an application of its own
            engine.reports.follow(interval=0.05)
            engine.reports.wait(timeout=20)
        else:
            engine.reports.catch_up()
        summary = engine.reports.run(RUN)
        assert summary is not None and summary.status == "completed" and summary.steps == 1
        assert {r.run_id for r in engine.reports.runs()} == {RUN, f"{RUN}-fork"}
    finally:
        engine.close()


def sqlite_bytes(path: Path) -> bytes:
    """Every byte SQLite keeps for this database: the file and any journal files next to it."""
    data = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            data += part.read_bytes()
    return data


def postgres_rows(url: str) -> Iterator[str | bytes]:
    """Every row of every table of the store's schema: as row text, and each value as stored."""
    parsed = StoreURL.parse(url)
    with psycopg.connect(parsed.postgres_conninfo or "", autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (parsed.postgres_schema,)
        )]
        assert {"phaseledger_events", "phaseledger_snapshots", "phaseledger_runindex", "report_runs"} <= set(tables)
        for table in tables:
            name = sql.Identifier(parsed.postgres_schema or "public", table)
            for (text,) in conn.execute(sql.SQL("SELECT t::text FROM {} t").format(name)):
                yield text
            for row in conn.execute(sql.SQL("SELECT * FROM {}").format(name)):
                for value in row:
                    yield value if isinstance(value, bytes) else str(value)


def exposed_in(blobs: Iterator[str | bytes], secret: str) -> bool:
    """Whether ``secret`` appears in any blob: as text, UTF-8 bytes, or bytea's hex text."""
    raw, hexed = secret.encode(), secret.encode().hex()
    for blob in blobs:
        if isinstance(blob, bytes):
            if raw in blob:
                return True
        elif secret in blob or hexed in blob:
            return True
    return False


# -- nothing secret is stored -------------------------------------------------------------


async def test_sqlite_stores_no_secret_byte_and_everything_still_works(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    await drive_everything(f"sqlite:///{path}", generate_cipher_key())
    data = sqlite_bytes(path)
    assert RUN.encode() in data, "the scan sees the store (run ids are plain)"
    for secret in SECRETS:
        assert secret.encode() not in data, f"{secret} is stored in plain text"


@pytest.mark.postgres
async def test_postgres_stores_no_secret_byte_and_everything_still_works(postgres_url: str) -> None:
    await drive_everything(postgres_url, generate_cipher_key(), follow=True)
    assert exposed_in(postgres_rows(postgres_url), RUN), "the scan sees the store (run ids are plain)"
    for secret in SECRETS:
        assert not exposed_in(postgres_rows(postgres_url), secret), f"{secret} is stored in plain text"


async def test_without_a_key_the_same_run_stores_the_secrets_plain(tmp_path: Path) -> None:
    """The control: the scan above would find them."""
    path = tmp_path / "plain.db"
    await drive_everything(f"sqlite:///{path}", [])
    data = sqlite_bytes(path)
    assert all(secret.encode() in data for secret in SECRETS)


# -- keys: rotation, wrong keys, missing keys ---------------------------------------------


def stored_states(url: str, run_id: str) -> list[bytes]:
    store = Store(url, cipher_key=[])  # raw rows: nothing decrypts here
    try:
        return [e.state for e in store.app.recorder.select_events(run_id)]
    finally:
        store.close()


def opens(key: str, state: bytes) -> bool:
    return RotatingCipher([key]).open(state) is not None


async def simple_run(engine: Engine, run_id: str, secret: str = INPUT_SECRET) -> None:
    wf = make_workflow([], [])
    run = await engine.run(wf, {"api_key": secret}, run_id=run_id)
    assert run.status == "completed"


async def test_rotation_writes_with_the_new_key_and_reads_with_the_old(durable_store_url: str) -> None:
    old, new = generate_cipher_key(), generate_cipher_key(16)
    async with Engine(durable_store_url, cipher_key=old) as engine:
        await simple_run(engine, "before")
    engine = Engine(durable_store_url, cipher_key=f"{new}, {old}")
    try:
        assert engine.get("before").state["api_key"] == INPUT_SECRET  # old events read with the old key
        await simple_run(engine, "after")
        assert engine.get("after").output == {"answer": STEP_SECRET}
    finally:
        engine.close()
    assert all(opens(old, s) and not opens(new, s) for s in stored_states(durable_store_url, "before"))
    assert all(opens(new, s) and not opens(old, s) for s in stored_states(durable_store_url, "after"))

    async with Engine(durable_store_url, cipher_key=new) as engine:
        assert engine.get("after").status == "completed"
        with pytest.raises(DecryptionFailed) as caught:
            engine.get("before")
    assert caught.value.run_id == "before" and caught.value.version == 1
    assert "'before'" in str(caught.value) and "PHASELEDGER_CIPHER_KEY" in str(caught.value)


async def test_a_wrong_key_or_no_key_raises_a_typed_error(durable_store_url: str) -> None:
    key = generate_cipher_key()
    async with Engine(durable_store_url, cipher_key=key) as engine:
        await simple_run(engine, "locked")
    async with Engine(durable_store_url, cipher_key=generate_cipher_key()) as engine:
        with pytest.raises(DecryptionFailed, match="none of the configured cipher keys"):
            engine.get("locked")
        with pytest.raises(DecryptionFailed):
            engine.history("locked")
    async with Engine(durable_store_url, cipher_key=[]) as engine:
        with pytest.raises(DecryptionFailed, match="no cipher key is configured"):
            engine.get("locked")


async def test_a_plain_store_reads_after_encryption_is_turned_on(durable_store_url: str) -> None:
    key = generate_cipher_key()
    async with Engine(durable_store_url, cipher_key=[]) as engine:
        await simple_run(engine, "plain")
    async with Engine(durable_store_url, cipher_key=key, compress=True) as engine:
        assert engine.get("plain").output == {"answer": STEP_SECRET}
        await simple_run(engine, "sealed")
        assert engine.get("sealed").output == {"answer": STEP_SECRET}
        assert {r.run_id for r in engine.runs()} == {"plain", "sealed"}
    assert all(s.startswith(b"{") for s in stored_states(durable_store_url, "plain"))
    assert all(opens(key, s) for s in stored_states(durable_store_url, "sealed"))


async def test_keys_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    key = generate_cipher_key()
    monkeypatch.setenv("PHASELEDGER_CIPHER_KEY", key)
    monkeypatch.setenv("PHASELEDGER_COMPRESS", "1")
    async with Engine(url) as engine:
        assert engine.store.encrypted and engine.store.compressed
        await simple_run(engine, "from-env")
    assert all(opens(key, s) for s in stored_states(url, "from-env"))
    monkeypatch.delenv("PHASELEDGER_CIPHER_KEY")
    async with Engine(url, compress=False) as engine:
        with pytest.raises(DecryptionFailed):
            engine.get("from-env")


def test_bad_settings_raise_errors_that_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    secretish = base64.b64encode(b"x" * 20).decode()
    with pytest.raises(EncryptionSetupError, match="key 2 of cipher_key is not base64 of 16, 24 or 32") as caught:
        Store("memory://", cipher_key=[generate_cipher_key(), secretish])
    assert secretish not in str(caught.value)
    monkeypatch.setenv("PHASELEDGER_CIPHER_KEY", "not a key")
    with pytest.raises(EncryptionSetupError, match=r"\$PHASELEDGER_CIPHER_KEY"):
        Store("memory://")
    monkeypatch.delenv("PHASELEDGER_CIPHER_KEY")
    monkeypatch.setenv("PHASELEDGER_COMPRESS", "maybe")
    with pytest.raises(EncryptionSetupError, match="PHASELEDGER_COMPRESS"):
        Store("memory://")
    monkeypatch.delenv("PHASELEDGER_COMPRESS")
    store = Store("memory://", cipher_key=generate_cipher_key())
    with pytest.raises(PhaseledgerError, match="pass it to Store"):
        Engine(store, cipher_key=generate_cipher_key())
    with pytest.raises(PhaseledgerError, match="pass it to Store"):
        Engine(store, compress=True)
    Engine(store, cipher_key=store.cipher_keys[0])  # the same settings are fine
    store.close()


def test_a_key_without_the_cryptography_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "eventsourcing.cryptography", None)
    with pytest.raises(EncryptionSetupError, match=r"pip install 'phaseledger\[encryption\]'"):
        Store("memory://", cipher_key=generate_cipher_key())
    Store("memory://").close()  # without a key nothing needs it


# -- compression ---------------------------------------------------------------------------


async def test_compression_stores_fewer_bytes_per_event_and_reads_either_way(tmp_path: Path) -> None:
    repetitive = "the same words again and again " * 40
    sizes = {}
    for compress in (False, True):
        url = f"sqlite:///{tmp_path / f'c{compress}.db'}"
        async with Engine(url, compress=compress, cipher_key=[]) as engine:
            await simple_run(engine, "r", secret=repetitive)
        states = stored_states(url, "r")
        sizes[compress] = sum(map(len, states)) / len(states)
        # Readable whatever the compression setting now is.
        async with Engine(url, compress=not compress, cipher_key=[]) as engine:
            assert engine.get("r").state["api_key"] == repetitive
    assert sizes[True] < sizes[False] / 2, sizes
    key = generate_cipher_key()
    async with Engine(f"sqlite:///{tmp_path / 'both.db'}", compress=True, cipher_key=key) as engine:
        await simple_run(engine, "r", secret=repetitive)
    both = stored_states(f"sqlite:///{tmp_path / 'both.db'}", "r")
    assert sum(map(len, both)) / len(both) < sizes[False] / 2
    async with Engine(f"sqlite:///{tmp_path / 'both.db'}", compress=False, cipher_key=key) as engine:
        assert engine.get("r").state["api_key"] == repetitive


def test_generate_cipher_key_makes_keys_of_each_size() -> None:
    for size in (16, 24, 32):
        assert len(base64.b64decode(generate_cipher_key(size))) == size
    assert generate_cipher_key() != generate_cipher_key()
    with pytest.raises(EncryptionSetupError):
        generate_cipher_key(20)


async def test_snapshots_are_encrypted_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'snap.db'}"
    key = generate_cipher_key()
    async with Engine(url, cipher_key=key, snapshot_every=2) as engine:
        await simple_run(engine, "snap")
        snapshots = list(engine.store.app.snapshots.recorder.select_events("snap"))  # type: ignore[union-attr]
        assert snapshots and all(opens(key, s.state) for s in snapshots)
    with sqlite3.connect(tmp_path / "snap.db") as conn:
        rows = conn.execute("SELECT state FROM stored_snapshots").fetchall()
    assert rows and not any(INPUT_SECRET.encode() in bytes(r[0]) for r in rows)
    async with Engine(url, cipher_key=generate_cipher_key(), snapshot_every=2) as engine:
        with pytest.raises(DecryptionFailed, match="snapshot at version"):
            engine.get("snap")


# -- the crash harness --------------------------------------------------------------------


@pytest.mark.slow
def test_the_crash_harness_kills_and_checks_encrypted_runs(tmp_path: Path) -> None:
    """Children get the key from ``env``; the harness reads the log with it too."""
    from phaseledger.testing.crash import CrashHarness, KillPoint
    from tests.integration.crashflows import EFFECTS_ENV

    path = tmp_path / "runs.db"
    env = {EFFECTS_ENV: str(tmp_path / "effects.tsv"), "PHASELEDGER_CIPHER_KEY": generate_cipher_key()}
    root = Path(__file__).resolve().parents[2]
    with CrashHarness("tests.integration.crashflows:order_workflow", f"sqlite:///{path}", env=env, cwd=root,
                      workdir=tmp_path / "ledgers") as harness:
        baseline = harness.baseline()
        crashed = harness.run("crashed", [KillPoint("after_append", 2), KillPoint("in_step", 2)])
        harness.compare(baseline, crashed)
    assert baseline.output == {"label": "LABEL-100", "total": 100, "items": 4}
    assert crashed.kills and not crashed.problems
    data = sqlite_bytes(path)
    assert b"crashed" in data and b"LABEL-100" not in data


# -- the command line ---------------------------------------------------------------------


async def test_the_command_line_takes_the_key_from_the_environment(tmp_path: Path) -> None:
    from tests.integration.test_cli import cli

    [key] = cli("keygen", cwd=tmp_path).stdout.split()
    assert len(base64.b64decode(key)) == 32
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    async with Engine(url, cipher_key=key, compress=True) as engine:
        await simple_run(engine, "cli-run")
    shown = cli("--store", url, "show", "cli-run", "--json", cwd=tmp_path,
                env={"PHASELEDGER_CIPHER_KEY": f"{generate_cipher_key()},{key}", "PHASELEDGER_COMPRESS": "1"})
    assert json.loads(shown.stdout)["state"]["api_key"] == INPUT_SECRET
    refused = cli("--store", url, "show", "cli-run", cwd=tmp_path, check=1)
    assert "error: cannot read" in refused.stderr and "'cli-run'" in refused.stderr
    assert "Traceback" not in refused.stderr
