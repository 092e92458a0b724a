"""Property: the report tables built incrementally while runs execute equal the tables rebuilt
from scratch, whatever the interleaving of catch-ups, background following, rebuilds and
crashes of the projection (SQLite and PostgreSQL).

A crash is simulated by aborting the projection's transaction after it has written its rows
(as a process killed before COMMIT would); tests/integration/test_projection_crash.py kills
real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from pydantic import BaseModel

from phaseledger import Context, Engine, RetryPolicy, Workflow
from phaseledger.engine.journal import current_journal
from phaseledger.projections import Reports, _fold
from phaseledger.store.eventstore import StoreURL

ONCE: set[tuple[str, int, int]] = set()
"""Failures that already happened (a flaky or failing op fails the first time only)."""

OPS = ("step", "model-a", "model-b-nocost", "model-none", "flaky", "wait", "fail")


class Plan(BaseModel):
    visits: list[list[str]]


def _usage(op: str) -> dict[str, Any]:
    usage: dict[str, Any] = {"requests": 1, "input_tokens": 11, "output_tokens": 3}
    if op != "model-none":
        usage["model"] = op.split("-")[1]
    if "nocost" not in op and op != "model-none":
        usage["cost"] = 0.1
    return usage


def make_workflow() -> Workflow[Plan]:
    wf = Workflow("prop", state=Plan, version=1, retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False))

    @wf.phase(initial=True, to={"work": None, "done": None})
    async def start(ctx: Context[Plan]) -> str:
        await ctx.step("begin", lambda: 1)
        return "work" if ctx.state.visits else "done"

    @wf.phase(to={"work": None, "done": None})
    async def work(ctx: Context[Plan]) -> str:
        visit = ctx.attempt - 1
        for i, op in enumerate(ctx.state.visits[visit]):
            once = (ctx.run_id, visit, i)
            if op == "step":
                await ctx.step("s", lambda i=i: i)
            elif op.startswith("model"):
                usage = _usage(op)
                journal = current_journal()
                await journal.call(journal.next_key(), "model", "m", lambda: "ok", outcome=lambda _, u=usage: (u, None))
            elif op == "flaky":
                def flaky(once: tuple[str, int, int] = once) -> str:
                    if once not in ONCE:
                        ONCE.add(once)
                        raise ConnectionError("flaky")
                    return "ok"
                await ctx.step("flaky", flaky)
            elif op == "wait":
                await ctx.wait_for_signal("go")
            elif op == "fail" and once not in ONCE:
                ONCE.add(once)
                raise ValueError("failed once")
        return "work" if visit + 1 < len(ctx.state.visits) else "done"

    @wf.phase(final=True)
    async def done(ctx: Context[Plan]) -> int:
        return len(ctx.state.visits)

    return wf


SIDE = (None, "catch_up", "rebuild", "other_catch_up", "other_rebuild")
"""What the projection does in another thread while a run executes."""

plans = st.lists(st.lists(st.sampled_from(OPS), max_size=4), max_size=3)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("run"), plans, st.sampled_from(SIDE)),
        st.tuples(st.just("signal"), st.integers(0, 5)),
        st.tuples(st.just("retry"), st.integers(0, 5)),
        st.tuples(st.just("cancel"), st.integers(0, 5)),
        st.tuples(st.just("catch_up"), st.integers(1, 30), st.integers(1, 8)),
        st.tuples(st.just("crash"), st.integers(1, 30), st.integers(1, 8)),
        st.tuples(st.just("rebuild"), st.integers(1, 8)),
        st.tuples(st.just("follow")),
        st.tuples(st.just("stop")),
        st.tuples(st.just("other_follow")),
        st.tuples(st.just("other_stop")),
        st.tuples(st.just("other_catch_up"), st.integers(1, 30), st.integers(1, 8)),
    ),
    min_size=1,
    max_size=14,
)


class SimulatedCrash(Exception):
    """The projection process 'died' after writing its rows, before COMMIT."""


@contextlib.contextmanager
def crashing_flush() -> Iterator[None]:
    original = _fold.Fold.flush

    def flush_then_die(self: _fold.Fold) -> None:
        original(self)
        raise SimulatedCrash()

    _fold.Fold.flush = flush_then_die  # type: ignore[method-assign]
    try:
        yield
    finally:
        _fold.Fold.flush = original  # type: ignore[method-assign]


async def play(url: str, script: list[tuple[Any, ...]]) -> None:
    ONCE.clear()
    wf = make_workflow()
    engine = Engine(url, workflows=[wf])
    reports = engine.reports
    other = Reports(engine.store)  # a second processor of the same tables, as another process would be
    run_ids: list[str] = []
    try:
        for action in script:
            kind = action[0]
            if kind == "run":
                run_ids.append(f"run-{len(run_ids)}")
                side = {
                    "catch_up": lambda: reports.catch_up(page_size=2), "rebuild": lambda: reports.rebuild(page_size=3),
                    "other_catch_up": lambda: other.catch_up(page_size=1), "other_rebuild": other.rebuild,
                }.get(action[2])
                await asyncio.gather(engine.run(wf, {"visits": action[1]}, run_id=run_ids[-1]),
                                     asyncio.to_thread(side) if side else asyncio.sleep(0))
            elif kind in ("signal", "retry", "cancel") and run_ids:
                run_id = run_ids[action[1] % len(run_ids)]
                run = engine.get(run_id)
                if kind == "signal" and run.status == "waiting":
                    await engine.signal(run_id, "go", {"ok": True})
                    await engine.resume(run_id)
                elif kind == "retry" and run.status == "failed":
                    await engine.retry(run_id)
                elif kind == "cancel" and not run.finished:
                    await engine.cancel(run_id)
            elif kind == "catch_up":
                reports.catch_up(max_events=action[1], page_size=action[2])
            elif kind == "crash":
                with crashing_flush(), contextlib.suppress(SimulatedCrash):
                    reports.catch_up(max_events=action[1], page_size=action[2])
            elif kind == "rebuild":
                reports.rebuild(page_size=action[1])
            elif kind == "follow":
                reports.follow(interval=0.01)
            elif kind == "stop":
                reports.stop()
            elif kind == "other_follow":
                other.follow(interval=0.01)
            elif kind == "other_stop":
                other.stop()
            elif kind == "other_catch_up":
                other.catch_up(max_events=action[1], page_size=action[2])
        reports.stop()
        other.stop()
        reports.catch_up()
        incremental = reports.dump()

        # Nothing skipped, nothing applied twice: every count agrees with the log.
        summaries = {row["run_id"]: row for row in incremental["report_runs"]}
        assert set(summaries) == set(run_ids)
        failures = 0
        for run_id in run_ids:
            run, history = engine.get(run_id), engine.history(run_id)
            row = summaries[run_id]
            assert (row["status"], row["version"], row["steps"], row["input_tokens"], row["cost"]) == (
                run.status, run.version, run.steps, run.usage.input_tokens, run.usage.cost)
            types = [e.type for e in history]
            assert row["phase_visits"] == types.count("PhaseEntered")
            assert row["step_failures"] == types.count("StepAttemptFailed")
            failures += types.count("StepAttemptFailed") + types.count("RunFailed")
        assert len(incremental["report_failures"]) == failures
        assert sum(r["input_tokens"] for r in incremental["report_token_usage"]) == sum(
            r["input_tokens"] for r in incremental["report_runs"])

        reports.rebuild(page_size=5)
        assert reports.dump() == incremental
    finally:
        other.close()
        engine.close()


SETTINGS = settings(max_examples=int(os.environ.get("PROJECTION_EXAMPLES", "12")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(script=actions)
def test_incremental_equals_rebuilt_on_sqlite(script: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(play(f"sqlite:///{tmp}/runs.db", script))


@pytest.mark.postgres
@settings(SETTINGS, max_examples=int(os.environ.get("PROJECTION_EXAMPLES", "8")))
@given(script=actions)
def test_incremental_equals_rebuilt_on_postgres(postgres_url: str, script: list[tuple[Any, ...]]) -> None:
    base = StoreURL.parse(postgres_url)
    schema = f"{base.postgres_schema}_{uuid.uuid4().hex[:6]}"
    url = postgres_url.replace(f"schema={base.postgres_schema}", f"schema={schema}")
    try:
        asyncio.run(play(url, script))
    finally:
        with psycopg.connect(base.postgres_conninfo or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
