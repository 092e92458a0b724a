"""Ids validated the same on every store: run ids, signal names and signal ids that are not
printable text of 1 to 200 characters get InvalidInput, and the store is left unchanged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from phaseledger import Context, Engine, InvalidInput, Workflow
from phaseledger.domain.ids import MAX_ID_LENGTH, validate_id
from tests.integration.test_cli import cli, one_line_error


class Note(BaseModel):
    text: str = ""


waits = Workflow("waits", state=Note)


@waits.phase(initial=True, final=True)
async def wait_for_go(ctx: Context[Note]) -> str:
    await ctx.wait_for_signal("go")
    return "went"


FLOWS = """
from pydantic import BaseModel

from phaseledger import Context, Workflow


class Note(BaseModel):
    text: str = ""


waits = Workflow("waits", state=Note)


@waits.phase(initial=True, final=True)
async def wait_for_go(ctx: Context[Note]) -> str:
    await ctx.wait_for_signal("go")
    return "went"
"""
"""The same workflow, for the command's --workflows module."""


BAD = {
    "nul": ("a\x00b", "NUL character at position 1"),
    "lone surrogate": ("a\udcffb", "lone surrogate (U+DCFF) at position 1"),
    "control character": ("a\x07b", "control character U+0007 at position 1"),
    "newline": ("line\nbreak", "control character U+000A at position 4"),
    "C1 control": ("a\x85", "control character U+0085 at position 1"),
    "empty": ("", "is empty"),
    "too long": ("x" * (MAX_ID_LENGTH + 1), f"{MAX_ID_LENGTH + 1} characters long; the limit is {MAX_ID_LENGTH}"),
}


def log_of(engine: Engine) -> tuple[list[str], int]:
    return list(engine.store.run_ids()), engine.store.app.recorder.max_notification_id() or 0


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_id_or_name_is_refused_before_anything_is_written(store_url: str, case: str) -> None:
    bad, problem = BAD[case]
    engine = Engine(store_url, workflows=[waits])
    try:
        await engine.run(waits, run_id="ok")
        before = log_of(engine)
        calls: dict[str, Callable[[], Awaitable[Any] | Any]] = {
            "start": lambda: engine.start(waits, run_id=bad),
            "run": lambda: engine.run(waits, run_id=bad),
            "fork": lambda: engine.fork("ok", new_run_id=bad),
            "resume": lambda: engine.resume(bad),
            "signal a run": lambda: engine.signal(bad, "go"),
            "cancel": lambda: engine.cancel(bad),
            "get": lambda: engine.get(bad),
            "history": lambda: engine.history(bad),
            "signal name": lambda: engine.signal("ok", bad),
            "signal id": lambda: engine.signal("ok", "go", signal_id=bad),
        }
        for what, call in calls.items():
            with pytest.raises(InvalidInput) as raised:
                result = call()
                if isinstance(result, Awaitable):
                    await result
            assert problem in str(raised.value), what
        assert log_of(engine) == before
        assert engine.get("ok").status == "waiting"
    finally:
        engine.close()


async def test_the_longest_ids_are_accepted_and_forks_of_them_get_ids_within_the_limit(store_url: str) -> None:
    engine = Engine(store_url, workflows=[waits])
    longest = "r" * MAX_ID_LENGTH
    try:
        await engine.run(waits, run_id=longest)
        await engine.signal(longest, "g" * MAX_ID_LENGTH)
        await engine.signal(longest, "go", signal_id="s" * MAX_ID_LENGTH)
        fork = await engine.fork(longest, at=2, drive=False)
        assert len(fork.run_id) == MAX_ID_LENGTH and "-fork-" in fork.run_id
        assert (await engine.resume(longest)).status == "completed"
        with pytest.raises(InvalidInput, match="reserved"):
            await engine.start(waits, run_id="$phaseledger:mine")
    finally:
        engine.close()


def test_the_rule_names_the_kind_and_refuses_what_is_not_a_string() -> None:
    assert validate_id("signal name", "approve") == "approve"
    with pytest.raises(InvalidInput, match="the signal id must be a string, got int"):
        validate_id("signal id", 7)
    with pytest.raises(InvalidInput, match="the signal name 'a\\\\x00b' contains a NUL"):
        validate_id("signal name", "a\x00b")


async def test_the_cli_refuses_a_bad_signal_name(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/runs.db"
    (tmp_path / "flows.py").write_text(FLOWS)
    engine = Engine(store, workflows=[waits])
    try:
        await engine.run(waits, run_id="ok")
    finally:
        engine.close()
    common = ("--store", store, "--workflows", "flows.py")
    for name, fragment in (("bad\x07name", "control character U+0007"), ("", "is empty"),
                           ("n" * 201, "the limit is 200")):
        one_line_error(cli(*common, "signal", "ok", name, cwd=tmp_path, check=None), "signal name", fragment)
    engine = Engine(store)
    try:
        assert [e.type for e in engine.history("ok")][-1] == "RunSuspended"  # nothing appended
    finally:
        engine.close()
