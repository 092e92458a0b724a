"""Help screens that show metavars (``RUN``, ``N``, ``URL``), never typer's type placeholders.

Recent typer versions print a type for every parameter in ``--help``: ``<bool>`` beside
flags (``--help`` itself included), ``<str>`` or ``<list[str]>`` beside arguments. Our
parameters say what they take with a metavar and a help text instead, so
:class:`Command` and :class:`Group` blank those placeholders when help is built. Older
typer versions print no such placeholders; the tidy-up then changes nothing.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


def _no_type(*args: Any, **kwargs: Any) -> None:
    """What an argument shows in the type column: nothing (its name says what it is)."""


def tidy(param: Any) -> Any:
    """The parameter with no type placeholder in help: flags show no value, arguments no type."""
    if getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""
    if getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_type_rich"):
        param.display_type_rich = _no_type
    return param


class Command(TyperCommand):
    """A ``phaseledger`` command: its help shows metavars, not type placeholders."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters (with ``--help``), tidied for the help screen."""
        return [tidy(param) for param in super().get_params(ctx)]


class Group(TyperGroup):
    """The ``phaseledger`` command group (and ``projections``): help without type placeholders."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's options (with ``--help``), tidied for the help screen."""
        return [tidy(param) for param in super().get_params(ctx)]
