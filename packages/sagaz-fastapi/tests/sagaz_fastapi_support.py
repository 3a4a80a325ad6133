"""Helpers of the sagaz-fastapi tests (a module with a unique name: tests import it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS_DIR = Path(__file__).resolve().parent

TERMINAL = {"COMPLETED", "COMPENSATED", "FAILED"}
#: The uvicorn servers the running test started (for failure messages).
STARTED: list[Server] = []


def in_ci() -> bool:
    """True under CI=true: tests must not skip for want of a service there."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(ok: bool, reason: str) -> None:
    """Skip with ``reason`` when ``ok`` is false, except under CI where it fails."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must work in CI)")
    pytest.skip(reason)


def sqlite_problem() -> str | None:
    """Why the SQLite backend cannot be used here, or None."""
    try:
        import aiosqlite  # noqa: F401

        from sagaz.core import storage_from_url

        storage_from_url("sqlite:///:memory:")
    except Exception as exc:
        return f"the SQLite storage backend is not usable: {type(exc).__name__}: {exc}"
    return None


def uvicorn_problem() -> str | None:
    """Why uvicorn cannot be started here, or None."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return "uvicorn is not installed (pip install uvicorn)"
    return None


def wait_until(
    check: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or check}: last value {last!r}")


def terminal_state(client: Any, saga_id: str, prefix: str = "/webhooks") -> str:
    """Poll a status route until the saga is terminal; return its state."""

    def state() -> str | None:
        response = client.get(f"{prefix}/status/{saga_id}")
        assert response.status_code == 200, response.text
        value: str = response.json()["state"]
        return value if value in TERMINAL else None

    result: str = wait_until(state, what=f"saga {saga_id} to finish")
    return result


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A uvicorn subprocess serving an application on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.proc.pid

    def client(self, **kwargs: Any) -> httpx.Client:
        """A synchronous HTTP client for this server."""
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def output(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the process to exit; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                pytest.fail(f"the server did not stop within {timeout}s:\n{self.output()}")
        self.stopped = True
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        self.stop(signal.SIGKILL)

    def fds_to(self, path: Path) -> int:
        """How many file descriptors of the server point at ``path`` (or its -wal/-shm)."""
        count = 0
        fd_dir = Path(f"/proc/{self.pid}/fd")
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(path)):
                    count += 1
        return count

    def threads(self) -> int:
        """The server's thread count."""
        return len(list(Path(f"/proc/{self.pid}/task").iterdir()))


ServerFactory = Callable[..., Server]


# -- PostgreSQL --------------------------------------------------------------------------------

#: The test server (trust auth); SAGAZ_TEST_POSTGRES_URL points the tests at another one.
POSTGRES_URL = os.environ.get(
    "SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_problem() -> str | None:
    """Why the PostgreSQL server or backend cannot be used here, or None."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return (
            f"the PostgreSQL backend is not installed ({exc}): pip install 'sagaz-core[postgres]'"
        )
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).strip()}); start it "
            "or set SAGAZ_TEST_POSTGRES_URL"
        )
    return None


@dataclass
class Backend:
    """Where a test server keeps its sagas: a SQLite file or a PostgreSQL schema.

    PostgreSQL: a schema of its own in the test database (dropped afterwards), reached
    through ``search_path``, and an ``application_name`` of its own, so the server's
    connections can be told from everyone else's in ``pg_stat_activity``. Its pool has
    a fixed size (``pool``): the count of connections is exact at rest.
    """

    kind: str
    url: str
    sqlite_path: Path | None = None
    schema: str | None = None
    application_name: str | None = None
    pool: int = 0

    @classmethod
    def sqlite(cls, path: Path) -> Backend:
        """A fresh SQLite file."""
        return cls("sqlite", f"sqlite:///{path}", sqlite_path=path)

    @classmethod
    def postgres(cls, prefix: str, pool: int = 4) -> Backend:
        """A new schema in the test database (call :meth:`drop` after use)."""
        import psycopg
        from psycopg import sql

        token = uuid.uuid4().hex[:12]
        schema, name = f"{prefix}_{token}", f"{prefix}-{token}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        separator = "&" if "?" in POSTGRES_URL else "?"
        url = (
            f"{POSTGRES_URL}{separator}application_name={name}"
            f"&options=-csearch_path%3D{schema}&pool_min={pool}&pool_max={pool}"
        )
        return cls("postgres", url, schema=schema, application_name=name, pool=pool)

    def connections(self) -> int:
        """How many sessions with this backend's application_name the server has."""
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def drop(self) -> None:
        """Drop the PostgreSQL schema (terminating this backend's sessions first)."""
        if self.schema is None:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (self.application_name,),
            )
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
            )
