"""What the deploy gate reports: a verdict per unfinished run, and who still needs each workflow version."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, computed_field

Verdict = Literal["compatible", "upcast", "pinned", "diverges", "fails"]
"""How a run fares with the code about to be deployed (see :class:`RunCompatibility`)."""

BREAKING: frozenset[str] = frozenset({"diverges", "fails"})
"""The verdicts of runs the new code would break (a pinned run breaks when its version is gone)."""


class CallInfo(BaseModel):
    """One journaled call: as the log recorded it, or as the new code asks for it."""

    kind: str
    """``step``, ``model``, ``tool``, ``signal``, ``timer``, ``clock``, ``random``, ``checkpoint``,
    ``agent``; ``phase`` for the next phase change; ``write`` for anything else that would be recorded."""
    name: str
    fingerprint: str | None = None
    """A digest of the call's inputs, when the call has one (agent units do; steps do not)."""
    key: str | None = None
    """The call's key in its phase visit."""


class RunCompatibility(BaseModel):
    """How one unfinished run fares with the new code.

    ``verdict`` is one of:

    - ``compatible``: the new code replays the run's current phase visit from its log (every
      recorded call served, none asked differently) up to the first call that would run live,
      and reads the recorded data exactly as it was recorded;
    - ``upcast``: the same, but some recorded data (the state, a checkpoint's state, a recorded
      pydantic result) reads differently through the new models: only their upcasting (a
      ``mode="before"`` validator that migrates old data, or a new field's default) lets the
      run continue; ``upcast`` lists what;
    - ``pinned``: the run started on an older version of its workflow than the newest one
      deployed, and continues on it: it needs that version registered (``version_registered``;
      without it the run breaks). A registered old version is replayed like any other;
    - ``diverges``: the new code asks for another call than the log recorded at
      ``sequence`` (``recorded`` and ``new`` side by side), or the run is in a phase the new
      code does not define: resuming it raises :class:`~phaseledger.NonDeterminismError`;
    - ``fails``: the recorded data does not fit the new models, or the new code raises on
      what the log serves it (or asks for a phase change its transitions refuse): resuming it
      fails the run.
    """

    run_id: str
    workflow: str
    workflow_version: int
    """The version the run started on (and continues on)."""
    status: str
    """The run's status (``running``, ``waiting``, ``sleeping``, ``retrying``)."""
    phase: str | None
    verdict: Verdict
    version_registered: bool
    """Whether the new code registers the run's workflow version."""
    replayed_calls: int = 0
    """Recorded calls served from the log before the replay stopped."""
    stopped_at: CallInfo | None = None
    """The first call that would run live, where the replay stopped (compatible, upcast, pinned)."""
    sequence: int | str | None = None
    """Where the run diverges: the recorded call's sequence in its phase visit."""
    recorded: CallInfo | None = None
    """The call the log recorded at ``sequence`` (None: none)."""
    new: CallInfo | None = None
    """The call the new code asks for at ``sequence`` (None: none, the phase finished)."""
    upcast: list[str] = Field(default_factory=list)
    """Recorded data the new models read differently than recorded."""
    detail: str = ""
    """The verdict in words: what was found and what to do."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def breaking(self) -> bool:
        """Whether deploying the new code would break this run."""
        return self.verdict in BREAKING or (self.verdict == "pinned" and not self.version_registered)


class VersionUse(BaseModel):
    """One version of a workflow: whether the new code registers it, and how many unfinished runs need it."""

    workflow: str
    version: int
    registered: bool
    """Whether the new code registers this version."""
    latest: bool
    """Whether it is the newest version the new code registers (the one new runs take)."""
    unfinished_runs: int
    """Unfinished runs that started on this version, and so continue on it."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def safe_to_retire(self) -> bool:
        """A registered old version no unfinished run needs: it can be removed from the code."""
        return self.registered and not self.latest and self.unfinished_runs == 0


class CheckReport(BaseModel):
    """What :func:`~phaseledger.check_deploy` found in a store for the code about to be deployed."""

    store: str
    """The store checked (its URL, password hidden)."""
    checked_on: datetime
    workflows: list[str]
    """The workflow versions of the new code, as ``name@version``."""
    runs: list[RunCompatibility]
    """Every unfinished run, in the order the runs were started."""
    versions: list[VersionUse]
    """Every workflow version registered or needed by an unfinished run."""
    unreadable: list[str] = Field(default_factory=list)
    """Runs whose log cannot be read (damaged; see ``phaseledger show``): not checked."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def counts(self) -> dict[str, int]:
        """How many runs got each verdict (every verdict listed, zeros included)."""
        counts = dict.fromkeys(("compatible", "upcast", "pinned", "diverges", "fails"), 0)
        for run in self.runs:
            counts[run.verdict] += 1
        return counts

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when no unfinished run would break: the new code may be deployed."""
        return not any(run.breaking for run in self.runs)

    def breaking(self) -> list[RunCompatibility]:
        """The runs the new code would break."""
        return [run for run in self.runs if run.breaking]
