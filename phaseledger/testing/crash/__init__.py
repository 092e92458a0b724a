"""A crash harness: kill real processes running your workflow and prove the run still ends right.

:class:`CrashHarness` starts a workflow in a child ``python`` process (it imports the
workflow from a module and opens the store by URL), kills that process with ``SIGKILL``
at a chosen point, starts a *new* process that resumes the run, kills that one too if
told, and so on until a process finishes the run. Kill points are deterministic and
cheap; each names what it counts in the process it applies to:

``before_step:n``
    just before the n-th live step body of that process starts (between steps);
``in_step:n``
    after the n-th live step body returned, before its result is recorded (a step in
    flight: its side effect happened, the log does not know it);
``after_append:n``
    right after the n-th append to the event store committed.

Every live step execution is written to a ledger file outside the event store, with the
step's idempotency key. After each kill the harness reads what the store had committed,
and at the end it checks that:

* no step whose result was committed before a kill ran again afterwards;
* every event committed before a kill is still there, unchanged, at the same version;
  versions are gapless and no step, attempt, checkpoint or timer is recorded twice;
* the run finished with the same status, state, output and log (timestamps, clock and
  random values, resume markers and failed attempts aside) as an uninterrupted run;
* with ``checkpoint_every_n_steps=N``, a kill lost at most N-1 recorded step results
  (one more when the kill hit a step in flight).

Use it from a test (POSIX only, needs a SQLite file or PostgreSQL store)::

    harness = CrashHarness("myapp.flows:order_workflow", "sqlite:////tmp/crash.db",
                           input={"order": 42})
    report = harness.explore(kill_points=50, seed=1)
    report.raise_for_problems()
    assert report.kill_points >= 50

The module named by the target must be importable in the child (give ``cwd`` or
``env={"PYTHONPATH": ...}``), or be a path to a ``.py`` file.
"""

from phaseledger.testing.crash._checks import check_log, committed_step_keys
from phaseledger.testing.crash._child import child_main, fork_server_main, load_workflows
from phaseledger.testing.crash._harness import CrashHarness
from phaseledger.testing.crash._killpoints import KILL_ENV, KILL_KINDS, LEDGER_ENV, CrashHarnessError, KillPoint
from phaseledger.testing.crash._reports import ChildOutcome, CrashCheckFailed, CrashReport, RunReport

__all__ = [
    "KILL_ENV",
    "KILL_KINDS",
    "LEDGER_ENV",
    "ChildOutcome",
    "CrashCheckFailed",
    "CrashHarness",
    "CrashHarnessError",
    "CrashReport",
    "KillPoint",
    "RunReport",
    "check_log",
    "child_main",
    "committed_step_keys",
    "fork_server_main",
    "load_workflows",
]
