"""A private PostgreSQL cluster that tests may stop, restart and cut off at will.

The shared test server must never be restarted, so tests of database outages make a
cluster of their own: ``initdb`` into a temporary folder, ``pg_ctl start`` on a free port of
127.0.0.1 only, trust authentication, fsync off (a test cluster needs no durability
across power cuts, only across process restarts). As root, ``initdb`` and ``pg_ctl``
refuse to run, so they run as the ``postgres`` user and the folder is handed to it.

:func:`private_cluster` is what fixtures call: it skips (outside CI) when the PostgreSQL
programs are missing, and fails when they are there but the cluster does not start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

DATABASE = "outage"


def find_program(name: str) -> str | None:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``), or None."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One PostgreSQL cluster in a folder of its own, listening on 127.0.0.1:``port``."""

    def __init__(self, root: Path, *, initdb: str, pg_ctl: str) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.initdb_program = initdb
        self.pg_ctl_program = pg_ctl
        self.restarts = 0
        self.terminated = 0
        self._as_postgres = os.geteuid() == 0

    # -- running the server programs ---------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(self._command(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}): {result.stderr or result.stdout}"
                               f"\n{self.server_log()}")

    def server_log(self, tail: int = 3000) -> str:
        """The end of the server's log (for failure messages)."""
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-tail:]
        return ""

    def init(self) -> None:
        """Create the cluster's files and its ``outage`` database, and start it."""
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(self.initdb_program, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        self.start()
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (f"-F -p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                   "-c full_page_writes=off -c max_connections=200")
        self._run(self.pg_ctl_program, "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are disconnected; ``immediate``: as after a crash)."""
        self._run(self.pg_ctl_program, "stop", "-w", "-t", "60", "-D", str(self.data), "-m", mode)

    def restart(self, mode: str = "fast", *, down_for: float = 0.0) -> None:
        """Stop the server, keep it down for ``down_for`` seconds, start it again."""
        self.stop(mode)
        if down_for:
            time.sleep(down_for)
        self.start()
        self.restarts += 1

    def terminate_backends(self, database: str = DATABASE) -> int:
        """End every server process connected to ``database`` but this call's; return how many."""
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = %s", (database,)
            ).fetchall()
        ended = sum(1 for (done,) in rows if done)
        self.terminated += ended
        return ended

    def destroy(self) -> None:
        """Stop the server (if running) and remove its files."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- addresses ---------------------------------------------------------------------

    def conninfo(self, database: str = DATABASE) -> str:
        """A libpq connection string for ``database``."""
        return f"host=127.0.0.1 port={self.port} dbname={database} user=postgres connect_timeout=5"

    def url(self, schema: str | None = None, **params: str) -> str:
        """A phaseledger store URL on the cluster's ``outage`` database."""
        query = {**({"schema": schema} if schema else {}), **params}
        suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}{suffix}"


def private_cluster() -> Iterator[PgCluster]:
    """A started private cluster, destroyed afterwards (for a module- or session-scoped fixture).

    Skips outside CI when ``initdb`` is missing; under ``CI=true`` that is a failure, and so
    is a cluster that does not start.
    """
    initdb, pg_ctl = find_program("initdb"), find_program("pg_ctl")
    if initdb is None or pg_ctl is None:
        message = "the PostgreSQL server programs (initdb, pg_ctl) are not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="phaseledger-pg-")), initdb=initdb, pg_ctl=pg_ctl)
    try:
        cluster.init()
    except Exception as exc:  # noqa: BLE001 - reported as the test's failure
        cluster.destroy()
        pytest.fail(f"the private PostgreSQL cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()
