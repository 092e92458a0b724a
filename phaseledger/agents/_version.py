"""Which pydantic-ai releases the durable-agent integration supports, checked at import.

The integration is built on pydantic-ai's public ``pydantic_ai.durable_exec`` surface. That
surface is complete (replay-stable run ids, ``replay_scope`` / ``record_durable_unit``
telemetry, the ``DurabilityEngineSpec`` fields used here) from pydantic-ai-slim 2.68; the
next major release may change it.
"""

from __future__ import annotations

import re
from importlib import metadata

from phaseledger.domain.errors import PhaseledgerError

SUPPORTED_PYDANTIC_AI = ">=2.68,<3"
"""The pydantic-ai(-slim) versions phaseledger's durable agents are tested with."""

_MINIMUM = (2, 68)
_BELOW = (3, 0)


class UnsupportedPydanticAI(PhaseledgerError, ImportError):
    """The installed pydantic-ai is missing or outside the supported range."""


def _installed_version() -> str | None:
    for dist in ("pydantic-ai-slim", "pydantic-ai"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # an install without distribution metadata (vendored, editable checkout)
        import pydantic_ai

        return str(pydantic_ai.__version__)
    except Exception:
        return None


def parse_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``2.68.0`` or ``2.70.0b1``."""
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        raise UnsupportedPydanticAI(f"cannot read the pydantic-ai version {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_pydantic_ai_version(version: str | None = None) -> str:
    """Return the installed pydantic-ai version, or raise :class:`UnsupportedPydanticAI`.

    ``version`` overrides the installed one (for tests).
    """
    found = version if version is not None else _installed_version()
    if found is None:
        raise UnsupportedPydanticAI(
            "durable agents need pydantic-ai: install it with "
            f"`pip install 'pydantic-ai-slim{SUPPORTED_PYDANTIC_AI}'` (or the full pydantic-ai)"
        )
    if not _MINIMUM <= parse_version(found) < _BELOW:
        raise UnsupportedPydanticAI(
            f"phaseledger's durable agents support pydantic-ai {SUPPORTED_PYDANTIC_AI}, but {found} is "
            f"installed: run `pip install 'pydantic-ai-slim{SUPPORTED_PYDANTIC_AI}'`"
        )
    return found
