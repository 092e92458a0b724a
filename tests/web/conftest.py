"""Fixtures of the web view's tests: a store filled by real runs, a served app, a browser.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``) driven by Playwright. Outside
CI the browser tests skip with a reason when it or Playwright is missing; under
``CI=true`` they fail instead, as the PostgreSQL tests do. Screenshots of the pages go
to ``test-artifacts/screenshots/`` at the top of the repository.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


def off_loop(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own: Playwright's sync API keeps an event loop running in
    this one, where ``asyncio.run`` refuses to start another."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


@pytest.fixture(scope="session")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the runs of :func:`tests.web.flows.fill` (made once per session)."""
    from tests.web.flows import fill

    path = tmp_path_factory.mktemp("web") / "runs.db"
    off_loop(fill, f"sqlite:///{path}")
    return path


@pytest.fixture
def store_copy(filled_store: Path, tmp_path: Path) -> str:
    """A copy of the filled store for a test that changes it (its URL), made with SQLite's backup
    API: a consistent copy even while a server of another test reads (and projects) the original."""
    import sqlite3

    target = tmp_path / "runs.db"
    with sqlite3.connect(filled_store) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return f"sqlite:///{target}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """An ASGI app served by uvicorn in a thread of this process, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web view's server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; the dev extra has it)"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium): the browser tests drive it"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless chromium (skipped, or failed under CI, when it cannot be started).

    One per test module: Playwright's sync API runs an event loop in this thread while it
    is open, and the tests of other modules call ``asyncio.run``.
    """
    missing = chromium_missing()
    if missing is not None:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page (its own cookies) of a desktop size."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
