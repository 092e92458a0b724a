"""Errors of the web view that users can hit."""

from __future__ import annotations

from phaseledger.domain.errors import PhaseledgerError


class WebUnavailable(PhaseledgerError, ImportError):
    """A package the web view needs is not installed: install the ``web`` extra."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"the web view needs the {missing!r} package, which is not installed; "
            "install it with: pip install 'phaseledger[web]'"
        )
        self.missing = missing
