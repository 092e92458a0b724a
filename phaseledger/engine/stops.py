"""How a driven run's handler is unwound: BaseExceptions raised at journal boundaries.

They derive from ``BaseException`` so that ``except Exception`` in user code cannot
swallow them; the driver catches each and settles the run accordingly.
"""

__all__ = ["Cancelled", "Released", "Superseded", "Suspended"]


class Suspended(BaseException):
    """Unwinds a handler when the run suspends (a BaseException so ``except Exception`` in
    user code cannot swallow it)."""


class Cancelled(BaseException):
    """Unwinds a handler when the run was cancelled by another writer."""


class Superseded(BaseException):
    """Unwinds a handler when another driver advanced the run (or this one's worker lost its
    lease); this one must stop without appending."""


class Released(BaseException):
    """Unwinds a handler at a journal boundary when its worker shuts down: what was recorded
    is committed and the run is left for another worker."""
