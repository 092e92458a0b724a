"""Dispatchers: external engines (DBOS, Temporal) that schedule phaseledger runs through ``engine.advance``.

Each dispatcher lives in a module of its own that imports its engine's package (an
optional extra); this package imports none of them, so ``import phaseledger.dispatch``
never needs an extra. Importing a dispatcher whose extra is missing raises
:class:`~phaseledger.dispatch.errors.DispatcherUnavailable` naming the extra to install.
"""
