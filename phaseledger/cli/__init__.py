"""The ``phaseledger`` command: inspect, drive and draw workflow runs from a shell.

``phaseledger --help`` lists the commands; ``phaseledger demo`` shows a run killed
part-way and resumed from its log. The command is a thin layer over
:class:`phaseledger.Engine`: everything it does, the Python API does too.
"""

from phaseledger.cli._app import app, main

__all__ = ["app", "main"]
