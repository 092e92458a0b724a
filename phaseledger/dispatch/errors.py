"""Errors of the dispatchers that users can hit."""

from __future__ import annotations

from phaseledger.domain.errors import PhaseledgerError


class DispatcherUnavailable(PhaseledgerError, ImportError):
    """A dispatcher's engine package is not installed: install the extra the message names."""

    def __init__(self, dispatcher: str, extra: str, missing: str) -> None:
        super().__init__(
            f"the {dispatcher} dispatcher needs the {missing!r} package, which is not installed; "
            f"install it with: pip install 'phaseledger[{extra}]'"
        )
        self.dispatcher = dispatcher
        self.extra = extra
        self.missing = missing


class DispatchError(PhaseledgerError):
    """A dispatcher cannot schedule a run as asked (e.g. the queue it names does not exist)."""
