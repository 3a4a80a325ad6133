"""Helpers shared by the sagaz-flask tests (a module of its own: ``conftest`` is ambiguous
when several packages' tests run together)."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from sagaz.core import SagaStatus
from sagaz.integrations.flask import EXTENSION_KEY, SagaFlask, SagaFlaskState


def unavailable(reason: str) -> None:
    """Skip a test whose service is unreachable; under CI=true fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


def sqlite_problem() -> str | None:
    """Why the SQLite storage backend cannot be used here, or None when it can."""
    try:
        from sagaz.core import storage_from_url

        storage_from_url("sqlite:///:memory:")
    except Exception as exc:
        return f"the SQLite storage backend is not usable here: {type(exc).__name__}: {exc}"
    return None


def require_sqlite() -> None:
    """Skip (fail under CI=true) when the SQLite backend cannot be used."""
    problem = sqlite_problem()
    if problem is not None:
        unavailable(problem)


def sagaz_of(app: Flask) -> SagaFlask:
    """The extension object of an app."""
    state = app.extensions[EXTENSION_KEY]
    assert isinstance(state, SagaFlaskState)
    return state.extension


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s (last value: {value!r})")
        time.sleep(interval)


def wait_terminal(
    client: Any, saga_id: str, prefix: str = "/webhooks", timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the status route until the saga is terminal; return its body."""

    def done() -> dict[str, Any] | None:
        body = client.get(f"{prefix}/status/{saga_id}").get_json()
        return body if SagaStatus(body["state"]).is_terminal else None

    result: dict[str, Any] = wait_for(done, timeout)
    return result


def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request to 127.0.0.1:``port``: (status, lower-cased headers, JSON or text).

    A dict or list ``body`` is sent as JSON; bytes are sent as they are.
    """
    headers = dict(headers or {})
    data: bytes | None
    if isinstance(body, dict | list):
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        data = body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    parsed: Any = raw.decode("utf-8", "replace")
    if got.get("content-type", "").startswith("application/json"):
        parsed = json.loads(raw)
    return response.status, got, parsed


class GunicornServer:
    """``gunicorn sagaz_flask_example:create_app()`` on 127.0.0.1, a free port, sync workers."""

    def __init__(
        self,
        storage_url: str,
        log_path: Any,
        workers: int = 2,
        warm: bool = True,
        exit_hook: bool = True,
    ) -> None:
        import importlib.util
        import subprocess
        import sys

        if importlib.util.find_spec("gunicorn") is None:
            unavailable("gunicorn is not installed (pip install gunicorn)")
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {
            **os.environ,
            "SAGAZ_STORAGE_URL": storage_url,
            "SAGAZ_TEST_WORKER_PID": "1",
            "SAGAZ_SHUTDOWN_TIMEOUT": "60",  # a loaded machine may need long
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]
            ),
        }
        tests = os.path.dirname(os.path.abspath(__file__))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--bind",
                "127.0.0.1:0",
                "--chdir",
                tests,
                "--graceful-timeout",
                "90",
                "--log-level",
                "info",
                # The README's advice: sagas finish in gunicorn's worker_exit hook.
                *(["--config", "python:sagaz_flask_gunicorn_conf"] if exit_hook else []),
                "sagaz_flask_example:create_app()",
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.workers = workers
        self.port = self._wait_until_listening()
        if warm:
            self.warm_up()

    def warm_up(self, timeout: float = 30.0) -> None:
        """Send health checks until every worker has answered (and opened its storage)."""
        from concurrent.futures import ThreadPoolExecutor

        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(8) as pool:
            while len(seen) < self.workers:
                if time.monotonic() > deadline:
                    pytest.fail(f"only workers {sorted(seen)} answered within {timeout} s")
                for status, headers, _ in pool.map(
                    lambda _: http_call(self.port, "GET", "/webhooks/health"), range(8)
                ):
                    if status == 200:
                        seen.add(headers["x-worker-pid"])

    def log(self) -> str:
        """What gunicorn (and the app) printed so far."""
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _wait_until_listening(self, timeout: float = 30.0) -> int:
        import re

        deadline = time.monotonic() + timeout
        port = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                pytest.fail(f"gunicorn exited at start-up:\n{self.log()[-3000:]}")
            match = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", self.log())
            if match and len(self.worker_pids()) == self.workers:
                port = int(match.group(1))
                try:
                    status, _, _ = http_call(port, "GET", "/webhooks/health", timeout=5)
                except OSError:
                    status = 0
                if status == 200:
                    return port
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"gunicorn did not answer within {timeout} s:\n{self.log()[-3000:]}")
        raise AssertionError("unreachable")  # pragma: no cover

    def worker_pids(self) -> set[int]:
        """The pids of the master's live worker processes."""
        pids: set[int] = set()
        try:
            for task in os.listdir(f"/proc/{self.process.pid}/task"):
                with open(f"/proc/{self.process.pid}/task/{task}/children") as f:
                    pids.update(int(p) for p in f.read().split())
        except OSError:
            return set()
        return pids

    def stop(self, timeout: float = 100.0) -> int:
        """SIGTERM the master (a graceful stop) and return its exit code."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def open_fds(pid: int, needle: str) -> list[str]:
    """The targets of ``pid``'s open file descriptors that contain ``needle``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if needle in target:
            found.append(target)
    return sorted(found)


# -- PostgreSQL ------------------------------------------------------------------------------

#: The test server (trust auth); SAGAZ_TEST_POSTGRES_URL points the tests at another one.
POSTGRES_URL = os.environ.get(
    "SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def require_postgres() -> None:
    """Skip (fail under CI=true) when the PostgreSQL server or backend cannot be used."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        unavailable(
            f"the PostgreSQL backend is not installed ({exc}): pip install 'sagaz-core[postgres]'"
        )
        return
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).strip()}); start it "
            "or set SAGAZ_TEST_POSTGRES_URL"
        )


class PostgresSchema:
    """A schema of its own in the PostgreSQL test database, for one test server.

    Its storage URL sets ``search_path`` to the schema (the storage creates its tables
    there) and an ``application_name`` of its own, so the server's sessions can be told
    from everyone else's in ``pg_stat_activity``; each process's pool has a fixed size
    (``pool``), so the count of connections is exact at rest. :meth:`drop` removes it.
    """

    def __init__(self, prefix: str, pool: int = 3) -> None:
        import uuid

        import psycopg
        from psycopg import sql

        token = uuid.uuid4().hex[:12]
        self.schema = f"{prefix}_{token}"
        self.application_name = f"{prefix}-{token}"
        self.pool = pool
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        separator = "&" if "?" in POSTGRES_URL else "?"
        self.url = (
            f"{POSTGRES_URL}{separator}application_name={self.application_name}"
            f"&options=-csearch_path%3D{self.schema}&pool_min={pool}&pool_max={pool}"
        )

    def connections(self) -> int:
        """How many sessions with this schema's application_name the server has."""
        return int(
            self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                self.application_name,
            )
        )

    def scalar(self, query: str, *params: Any) -> Any:
        """The first column of the first row of ``query``, run in this schema."""
        import psycopg

        with psycopg.connect(
            POSTGRES_URL, autocommit=True, options=f"-csearch_path={self.schema}"
        ) as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None
        return row[0]

    def drop(self) -> None:
        """Drop the schema (ending this schema's leftover sessions first)."""
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
