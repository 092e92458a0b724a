"""Where an agent run stands: inside a phase handler (the durable container) or not.

A phase handler is the container: code there re-runs on every replay and must be
deterministic, while each model request and tool call it makes is a journaled unit. Inside
a unit (or inside a ``ctx.step`` function) an agent is an ordinary agent whose work is
part of the enclosing unit's recorded result.

Every agent run in a phase visit gets a replay-stable id and a journal key prefix
(``a0``, ``a1``, ... in the order the runs start), and within it keys per kind of unit:
model requests by their ordinal, tool calls by the model's ``tool_call_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from phaseledger.agents._identity import MessageDigests
from phaseledger.engine.journal import STEP_KEY, Journal, current_journal

IN_UNIT: ContextVar[bool] = ContextVar("phaseledger_agent_in_unit", default=False)
"""True while the body of a journaled unit runs (its code is not container code)."""

REPLAY_SCOPED: ContextVar[bool] = ContextVar("phaseledger_agent_replay_scoped", default=False)
"""True inside a ``replay_scope()`` phaseledger opened for the current agent run."""


def container_journal() -> Journal | None:
    """The journal of the phase handler when the caller is container code, else None."""
    journal = current_journal()
    if journal is None or IN_UNIT.get() or STEP_KEY.get() is not None:
        return None
    return journal


@dataclass
class AgentRunJournal:
    """The journal bookkeeping of one agent run inside a phase visit."""

    run_id: str
    prefix: str
    ordinals: dict[str, int] = field(default_factory=dict)
    digests: MessageDigests = field(default_factory=MessageDigests)

    def next_key(self, slot: str) -> str:
        """The next key of a sequential kind of unit (``a0:m3`` is the 4th model request of run a0)."""
        n = self.ordinals.get(slot, 0)
        self.ordinals[slot] = n + 1
        return f"{self.prefix}:{slot}{n}"

    def key_for(self, slot: str, unit_id: str) -> str:
        """The key of a unit named by its own replay-stable id (a tool call's ``tool_call_id``)."""
        return f"{self.prefix}:{slot}:{unit_id}"


class PhaseAgents:
    """The agent runs started in one phase visit, by run id."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.started = 0
        self.runs: dict[str, AgentRunJournal] = {}

    def new_run_id(self) -> str:
        """A replay-stable id for the next agent run: ``<run id>:<phase visit>.a<n>``.

        Runs are numbered in the order they start, so concurrent agent runs in one phase
        must start in a deterministic order (create their tasks in a fixed order).
        """
        n = self.started
        self.started += 1
        run_id = self.journal.step_key(f"a{n}")
        self.runs[run_id] = AgentRunJournal(run_id=run_id, prefix=f"a{n}")
        return run_id

    def run(self, run_id: str | None) -> AgentRunJournal:
        """The bookkeeping of an agent run (one started with an explicit ``run_id`` is keyed by it)."""
        key = run_id or "?"
        journal = self.runs.get(key)
        if journal is None:
            journal = AgentRunJournal(run_id=key, prefix=f"a[{key}]")
            self.runs[key] = journal
        return journal


_PHASES: WeakKeyDictionary[Journal, PhaseAgents] = WeakKeyDictionary()


def phase_agents(journal: Journal) -> PhaseAgents:
    """The agent runs of the phase visit that ``journal`` records."""
    agents = _PHASES.get(journal)
    if agents is None:
        agents = PhaseAgents(journal)
        _PHASES[journal] = agents
    return agents

AGENT_RUN: ContextVar[str | None] = ContextVar("phaseledger_agent_run", default=None)
"""The id of the agent run whose container code runs in this task (set around the run)."""

ON_UNIT_COMMIT: ContextVar[Callable[[str, str], Any] | None] = ContextVar("phaseledger_agent_on_commit", default=None)
"""Called with ``(run_id, unit name)`` after a recorded unit was committed (``DurableAgent``'s hook)."""
