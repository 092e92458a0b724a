"""Errors of the report projections (all derive from :class:`phaseledger.PhaseledgerError`)."""

from __future__ import annotations

from phaseledger.domain.errors import PhaseledgerError


class ProjectionError(PhaseledgerError):
    """A report projection cannot be read or advanced."""


class ProjectionOutdated(ProjectionError):
    """The report tables were built with another layout than this version of phaseledger uses.

    Nothing was read or written. Rebuild them: ``engine.reports.rebuild()`` or
    ``phaseledger projections rebuild``.
    """

    def __init__(self, found: int, expected: int) -> None:
        super().__init__(
            f"the report tables have layout v{found} but this phaseledger uses v{expected}; rebuild them "
            "with engine.reports.rebuild() or `phaseledger projections rebuild` (the event log is unchanged)"
        )
        self.found = found
        self.expected = expected


class ProjectionReset(ProjectionError):
    """The report tables were rebuilt while this processor was applying events.

    Nothing was written by the interrupted transaction; a processor started after the rebuild
    (followers restart by themselves) continues from the rebuilt position.
    """

    def __init__(self, expected: int, found: int) -> None:
        super().__init__(
            f"the report tables were rebuilt (generation {expected} -> {found}) while events were being "
            "applied; nothing was written: start the processor again to continue from the rebuilt position"
        )
        self.expected = expected
        self.found = found


class AlreadyApplied(ProjectionError):
    """Another processor has already applied the events from this notification id on."""

    def __init__(self, notification_id: int) -> None:
        super().__init__(f"notification {notification_id} has already been applied to the report tables")
        self.notification_id = notification_id
