"""Resume tokens: signed, store-bound; forged, edited, truncated and foreign tokens change nothing."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, InvalidToken, RetentionPolicy, TokenKeyMissing, Workflow
from phaseledger.history.tokens import STORE_IDENTITY_ID, TOKEN_KEY_ENV_VAR

KEY = "unit-test-token-key-0123456789abcdef"


class Waiting(BaseModel):
    approved: bool = False


CALLS: list[str] = []


def make_workflow() -> Workflow[Waiting]:
    wf = Workflow("approval", state=Waiting)

    @wf.phase(initial=True, to="done")
    async def ask(ctx: Context[Waiting]) -> str:
        await ctx.step("draft", lambda: CALLS.append("draft") or "draft")
        ctx.state.approved = bool(await ctx.wait_for_signal("approve"))
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Waiting]) -> bool:
        return ctx.state.approved

    return wf


async def waiting_run(engine: Engine, wf: Workflow[Waiting], run_id: str = "r") -> None:
    run = await engine.run(wf, run_id=run_id)
    assert run.status == "waiting"


def _edit_payload(token: str, **changes: object) -> str:
    prefix, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data.update(changes)
    raw = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{prefix}.{raw}.{signature}"


def _log(engine: Engine) -> list[tuple[str, int]]:
    return [(rid, len(engine.history(rid))) for rid in sorted(r.run_id for r in engine.runs())]


async def test_a_token_resumes_the_run_it_names() -> None:
    wf = make_workflow()
    resumed: list[tuple[str, str]] = []
    engine = Engine("memory://", workflows=[wf], token_key=KEY, on_resume=lambda r, why: resumed.append((r, why)))
    await waiting_run(engine, wf)
    token = engine.resume_token("r")
    assert token.startswith("pl1.") and token.count(".") == 2
    await engine.signal("r", "approve", True)
    run = await engine.resume(token)
    assert run.status == "completed" and run.output is True
    assert [run_id for run_id, _ in resumed] == ["r"]


@pytest.mark.parametrize("damage", ["truncate_end", "truncate_middle", "flip_signature", "edit_version",
                                    "edit_run", "other_key", "garbage", "wrong_prefix"])
async def test_damaged_tokens_are_refused_and_change_nothing(damage: str) -> None:
    wf = make_workflow()
    engine = Engine("memory://", workflows=[wf], token_key=KEY)
    await waiting_run(engine, wf, "r")
    await waiting_run(engine, wf, "other")
    await engine.signal("r", "approve", True)
    token = engine.resume_token("r", at=2)
    bad = {
        "truncate_end": token[:-5],
        "truncate_middle": token[: len(token) // 2],
        "flip_signature": token[:-1] + ("A" if token[-1] != "A" else "B"),
        "edit_version": _edit_payload(token, v=3),
        "edit_run": _edit_payload(token, r="other"),
        "other_key": Engine(engine.store, workflows=[wf], token_key="another-key-of-32-bytes-length!!").resume_token("r"),
        "garbage": "pl1.not-base64!.x",
        "wrong_prefix": "pl9." + token.split(".", 1)[1],
    }[damage]
    before = _log(engine)
    status = engine.get("r").status
    with pytest.raises(InvalidToken) as info:
        await engine.resume(bad)
    assert "token" in str(info.value)
    with pytest.raises(InvalidToken):
        await engine.fork(bad, new_run_id="f")
    assert _log(engine) == before
    assert engine.get("r").status == status


async def test_tokens_of_another_store_are_refused() -> None:
    wf = make_workflow()
    first = Engine("memory://", workflows=[wf], token_key=KEY)
    second = Engine("memory://", workflows=[wf], token_key=KEY)
    await waiting_run(first, wf)
    await waiting_run(second, wf)  # same run id, same key, another store
    token = first.resume_token("r")
    before = _log(second)
    with pytest.raises(InvalidToken, match="another store"):
        await second.resume(token)
    with pytest.raises(InvalidToken, match="another store"):
        await second.fork(token)
    assert _log(second) == before
    # the same store reached through another engine accepts it
    same = Engine(first.store, workflows=[wf], token_key=KEY)
    assert (await same.fork(token, new_run_id="copy", drive=False)).parent["run_id"] == "r"


async def test_a_token_beyond_the_runs_log_is_refused() -> None:
    """A token whose run id now names a shorter log (the run was deleted and re-created)."""
    wf = make_workflow()
    engine = Engine("memory://", workflows=[wf], token_key=KEY)
    await waiting_run(engine, wf)
    await engine.signal("r", "approve", False)
    await engine.resume("r")
    token = engine.resume_token("r")
    engine.apply_retention(RetentionPolicy(delete_after=timedelta(0)))
    assert not engine.store.exists("r")
    with pytest.raises(InvalidToken, match="not in this store"):
        await engine.resume(token)
    await waiting_run(engine, wf)
    with pytest.raises(InvalidToken, match="only"):
        await engine.fork(token)


async def test_the_key_is_required_and_must_be_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_KEY_ENV_VAR, raising=False)
    wf = make_workflow()
    engine = Engine("memory://", workflows=[wf])
    await waiting_run(engine, wf)
    with pytest.raises(TokenKeyMissing, match="token_key"):
        engine.resume_token("r")
    with pytest.raises(TokenKeyMissing):
        await engine.resume("pl1.e30.x")
    with pytest.raises(TokenKeyMissing, match="at least 16"):
        Engine("memory://", token_key="short")
    monkeypatch.setenv(TOKEN_KEY_ENV_VAR, KEY)
    from_env = Engine(engine.store, workflows=[wf])
    signed = Engine(engine.store, workflows=[wf], token_key=KEY)
    assert from_env.resume_token("r") == signed.resume_token("r")


async def test_the_store_identity_is_not_a_run() -> None:
    wf = make_workflow()
    engine = Engine("memory://", workflows=[wf], token_key=KEY)
    await waiting_run(engine, wf)
    engine.resume_token("r")
    assert engine.store.app.recorder.select_events(STORE_IDENTITY_ID)  # the stream is there,
    assert not engine.store.exists(STORE_IDENTITY_ID)  # but it is not a run
    assert [r.run_id for r in engine.runs()] == ["r"]
