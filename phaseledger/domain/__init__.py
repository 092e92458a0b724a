"""The pure model: events, the WorkflowRun aggregate and workflow definitions (no I/O)."""
