"""The workflows the benchmarks drive: trivial steps, so what is measured is durability itself.

- :func:`steps_workflow`: one phase of ``n`` trivial steps, then a final phase. The
  handler notes when its first and last step finished, so run start-up is not billed.
- :func:`history_workflow`: a loop phase of ``per_visit`` steps, visited until the run has
  a given number of events, then a probe that simulates a crash after its first live step.
  It gives runs with long histories whose current phase is short, which is what resume
  cost is about.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import BaseModel

from benchmarks._harness import now
from phaseledger import Context, Workflow


def trivial(i: int) -> int:
    """The step function: as cheap as a step can be."""
    return i + 1


class StepsState(BaseModel):
    """How many steps to take."""

    n: int


@dataclass
class Timings:
    """Perf-counter marks a workflow handler leaves for the benchmark (by run id), each with
    the process's CPU time at the same moment (``time.process_time``, all threads)."""

    marks: dict[str, list[float]] = field(default_factory=dict)
    cpu_marks: dict[str, list[float]] = field(default_factory=dict)

    def mark(self, run_id: str) -> None:
        """Note the time and the CPU time now for ``run_id``."""
        self.marks.setdefault(run_id, []).append(now())
        self.cpu_marks.setdefault(run_id, []).append(time.process_time())


def steps_workflow(timings: Timings, *, checkpoint_every_n_steps: int = 1) -> Workflow[StepsState]:
    """One phase of ``state.n`` trivial steps, then ``done``; marks after step 1 and step n."""
    wf = Workflow(f"bench-steps-{checkpoint_every_n_steps}", state=StepsState,
                  checkpoint_every_n_steps=checkpoint_every_n_steps)

    @wf.phase(initial=True, to="done")
    async def work(ctx: Context[StepsState]) -> str:
        timings.mark(ctx.run_id)
        for i in range(ctx.state.n):
            await ctx.step("s", trivial, i)
        timings.mark(ctx.run_id)
        return "done"

    @wf.phase(final=True)
    async def done(ctx: Context[StepsState]) -> int:
        return ctx.state.n

    return wf


class SimulatedCrash(BaseException):
    """Raised by a benchmark handler to stop a run the way a killed process would."""


class HistoryState(BaseModel):
    """Visits of the loop phase so far, and how many to make before probing."""

    visits: int = 0
    target_visits: int


def history_workflow(timings: Timings, *, per_visit: int = 10, batch: int = 1) -> Workflow[HistoryState]:
    """A run that builds a long history, then crashes right after each live probe step.

    The loop phase ``work`` records ``per_visit`` steps per visit and re-enters itself
    (``per_visit + 1`` events a visit). On its last visit it calls a probe step: the first
    live probe marks the time and the handler raises :class:`SimulatedCrash`, leaving the
    run ``running`` as a crash would. Each resume replays the visit and runs one probe.
    """
    wf = Workflow(f"bench-history-{per_visit}-{batch}", state=HistoryState, checkpoint_every_n_steps=batch)

    @wf.phase(initial=True, to={"work": None, "done": None})
    async def work(ctx: Context[HistoryState]) -> str:
        for i in range(per_visit):
            await ctx.step("s", trivial, i)
        if ctx.state.visits + 1 >= ctx.state.target_visits:
            fired: list[bool] = []

            def probe() -> int:
                timings.mark(ctx.run_id)
                fired.append(True)
                return 0

            while True:
                await ctx.step("probe", probe)
                if fired:
                    raise SimulatedCrash()
        ctx.state.visits += 1
        return "work"

    @wf.phase(final=True)
    async def done(ctx: Context[HistoryState]) -> int:  # never reached: the probe crashes first
        return ctx.state.visits

    return wf
