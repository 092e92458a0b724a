"""The deploy gate: what the code about to be deployed would do to the runs a store holds.

:func:`check_deploy` replays every unfinished run against the new code, executing
nothing and writing nothing, and classifies each (:class:`RunCompatibility`): compatible,
compatible after an upcaster, pinned to its old workflow version, diverging at a sequence,
or failing. ``phaseledger check`` is its command. See ``docs/deploys.md``.
"""

from phaseledger.deploys.gate import check_deploy, check_deploy_sync
from phaseledger.deploys.models import CallInfo, CheckReport, RunCompatibility, Verdict, VersionUse

__all__ = ["CallInfo", "CheckReport", "RunCompatibility", "Verdict", "VersionUse", "check_deploy", "check_deploy_sync"]
