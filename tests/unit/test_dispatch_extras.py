"""Importing a dispatcher whose extra is missing says which extra to install."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from phaseledger import PhaseledgerError
from phaseledger.dispatch.errors import DispatcherUnavailable


def test_the_dbos_dispatcher_without_dbos_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dbos", None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, "phaseledger.dispatch.dbos", raising=False)
    with pytest.raises(DispatcherUnavailable, match=r"pip install 'phaseledger\[dbos\]'") as caught:
        importlib.import_module("phaseledger.dispatch.dbos")
    assert isinstance(caught.value, PhaseledgerError) and isinstance(caught.value, ImportError)
    assert caught.value.extra == "dbos"


def test_the_prefect_dispatcher_without_prefect_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect", None)  # as if the package were not installed
    monkeypatch.delitem(sys.modules, "phaseledger.dispatch.prefect", raising=False)
    with pytest.raises(DispatcherUnavailable, match=r"pip install 'phaseledger\[prefect\]'") as caught:
        importlib.import_module("phaseledger.dispatch.prefect")
    assert isinstance(caught.value, PhaseledgerError) and isinstance(caught.value, ImportError)
    assert (caught.value.dispatcher, caught.value.extra, caught.value.missing) == ("Prefect", "prefect", "prefect")


def test_the_dispatch_package_imports_no_optional_engine() -> None:
    blocked = ("import sys; sys.modules['dbos'] = sys.modules['prefect'] = sys.modules['temporalio'] = None; "
               "import phaseledger.dispatch, phaseledger.dispatch.errors")
    subprocess.run([sys.executable, "-c", blocked], check=True, timeout=60)
