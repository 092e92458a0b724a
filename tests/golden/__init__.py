"""Golden logs: runs stored by past releases, which every later release must load and resume."""
