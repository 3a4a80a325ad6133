"""Helpers shared by the benchmarks: loopback servers, scratch PostgreSQL databases,
process CPU. Nothing here talks to anything but 127.0.0.1 / a local socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PG_URL",
    "cpu_seconds",
    "free_port",
    "pg_reachable",
    "scratch_pg_database",
    "stop",
    "wait_http",
]

PG_URL = os.environ.get("SAGAZ_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_HZ = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found.extend(int(c) for c in f.read().split())
    return found


def cpu_seconds(pid: int, *, tree: bool = True) -> float | None:
    """User + system CPU seconds of a process (and, with ``tree``, of its live children:
    gunicorn's workers), from /proc; None when not visible."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = (int(fields[11]) + int(fields[12])) / _HZ
    if tree:
        for child in _children(pid):
            total += cpu_seconds(child, tree=True) or 0.0
    return total


def wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    """Wait until GET ``url`` answers 200; exit with the server's log if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.1)
    stop(proc)
    raise SystemExit(f"the server did not answer {url} within {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], grace: float = 60) -> int:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def pg_reachable(url: str = PG_URL) -> str | None:
    """None when PostgreSQL answers at ``url``, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'sagaz-core[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {url} is not reachable: {str(exc).strip().splitlines()[0]}"


@contextlib.contextmanager
def scratch_pg_database(url: str = PG_URL, prefix: str = "sagaz_bench") -> Iterator[str]:
    """Create a fresh database on the server of ``url``; yield its URL; drop it after."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        params = conninfo_to_dict(make_conninfo(url))
        params["dbname"] = name
        user = params.get("user", "")
        if params.get("password"):
            user = f"{user}:{params['password']}"
        host = params.get("host", "127.0.0.1")
        port = params.get("port", "5432")
        yield f"postgresql://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
