"""The click classes of every ``phaseledger`` command: tidy help screens, errors as one line.

Help screens show metavars (``RUN``, ``N``, ``URL``), never typer's type placeholders.
Recent typer versions print a type for every parameter in ``--help``: ``<bool>`` beside
flags (``--help`` itself included), ``<str>`` or ``<list[str]>`` beside arguments. Our
parameters say what they take with a metavar and a help text instead, so
:class:`Command` and :class:`Group` blank those placeholders when help is built. Older
typer versions print no such placeholders; the tidy-up then changes nothing.

A command that fails with a :class:`~phaseledger.PhaseledgerError` prints one ``error:``
line on stderr and exits with the error's status (1 unless it says otherwise); Ctrl-C
prints one line and exits with status 130; ``--debug`` (or ``$PHASELEDGER_DEBUG``) lets
the traceback through instead. :meth:`Command.invoke` does this, so a command behaves the
same on the ``phaseledger`` command and in a typer app of its own.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from phaseledger.cli import _render as render
from phaseledger.cli._drive import INTERRUPTED, Interrupted
from phaseledger.cli._session import debug_from_env
from phaseledger.domain.errors import PhaseledgerError


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
    """A ``phaseledger`` command: its help shows metavars, its errors print as one line."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters (with ``--help``), tidied for the help screen."""
        return [tidy(param) for param in super().get_params(ctx)]

    def invoke(self, ctx: Any) -> Any:
        """Run the command; report an error or Ctrl-C in one line and exit with its status."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C while no run was driven (driving commands raise Interrupted)
            print("interrupted", file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None
        except Interrupted as exc:
            print(str(exc), file=sys.stderr)
            raise typer.Exit(INTERRUPTED) from None
        except PhaseledgerError as exc:
            if getattr(ctx.find_root().obj, "debug", False) or debug_from_env():
                raise
            render.print_error(str(exc))
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None


class Group(TyperGroup):
    """The ``phaseledger`` command group (and ``projections``): help without type placeholders."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's options (with ``--help``), tidied for the help screen."""
        return [tidy(param) for param in super().get_params(ctx)]
