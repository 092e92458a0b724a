"""The demo: a four-phase research workflow with pydantic-ai agents, killed and resumed.

``phaseledger demo`` (or ``python -m phaseledger.demo``) starts the workflow in a child
process on a fresh SQLite file, kills that process with SIGKILL part-way through a phase,
and resumes the run in a new process from its event log. It then shows which steps and
model calls were served from the log instead of running again, the tokens that were not
paid twice, the run's history and the workflow's state machine.

``research`` defines the workflow; ``runner`` orchestrates the demo.
"""
