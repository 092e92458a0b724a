"""A workflow whose steps wait at a gate, driven in child processes by the ownership tests.

Each step records its execution (idempotency key) in the file named by
``$CRASHFLOW_EFFECTS`` and then waits until the file named by ``$OWNERSHIP_GATE`` exists,
so a test can hold a driver in the middle of a step while another process tries to take
the run. ``python -m tests.integration.ownership_flows STORE RUN_ID [resume|steal]`` drives
the run and prints one JSON line: ``{"status": ..., "output": ...}`` or ``{"error": type}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from pydantic import BaseModel

from phaseledger import Context, Engine, PhaseledgerError, Workflow
from tests.integration.crashflows import effect

GATE_ENV = "OWNERSHIP_GATE"


class Tally(BaseModel):
    done: list[int] = []


gated = Workflow("gated", state=Tally)


async def wait_at_gate(n: int) -> int:
    effect(f"step-{n}")
    gate = Path(os.environ[GATE_ENV])
    for _ in range(6000):  # two minutes at most: a test that failed never opens it
        if gate.exists():
            return n
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the gate {gate} was never opened")


@gated.phase(initial=True, to="end")
async def work(ctx: Context[Tally]) -> None:
    for n in range(3):
        ctx.state.done.append(await ctx.step(f"step-{n}", wait_at_gate, n))


@gated.phase(final=True)
async def end(ctx: Context[Tally]) -> list[int]:
    return ctx.state.done


async def _main(store: str, run_id: str, how: str) -> dict[str, object]:
    async with Engine(store, workflows=[gated]) as engine:
        try:
            if how == "start":
                run = await engine.run(gated, run_id=run_id)
            else:
                run = await engine.resume(run_id, steal=how == "steal")
        except PhaseledgerError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"status": run.status, "output": run.output}


if __name__ == "__main__":
    store_url, run, mode = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "start"
    print(json.dumps(asyncio.run(_main(store_url, run, mode))), flush=True)
