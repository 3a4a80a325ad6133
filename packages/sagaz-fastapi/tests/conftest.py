"""Fixtures of the sagaz-fastapi tests: the test app, storages, and real uvicorn servers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    # The tests import their helpers and the test app by name (uniquely named modules);
    # uvicorn imports the test app from this folder too.
    sys.path.insert(0, str(TESTS_DIR))

import sagaz_fastapi_testapp  # noqa: E402
from sagaz_fastapi_support import (  # noqa: E402
    STARTED,
    Backend,
    Server,
    ServerFactory,
    free_port,
    postgres_problem,
    require,
    sqlite_problem,
    uvicorn_problem,
)


@pytest.fixture
def app_module() -> Any:
    """The test application's module (its sagas are registered on import)."""
    return sagaz_fastapi_testapp


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file URL (the test skips, or fails in CI, without the backend)."""
    problem = sqlite_problem()
    require(problem is None, problem or "")
    return f"sqlite:///{tmp_path / 'sagas.db'}"


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The storage of a test: SQLite (default) or, with ``@pytest.mark.parametrize("backend",
    ["sqlite", "postgres"], indirect=True)``, each in turn. PostgreSQL gets a schema of its
    own in the test database, dropped afterwards; it skips (fails under CI=true) when the
    server is unreachable."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        problem = sqlite_problem()
        require(problem is None, problem or "")
        yield Backend.sqlite(tmp_path / "sagas.db")
        return
    assert kind == "postgres", kind
    problem = postgres_problem()
    require(problem is None, problem or "")
    created = Backend.postgres("sagaz_fastapi_test")
    try:
        yield created
    finally:
        created.drop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start uvicorn subprocesses on free loopback ports; stopped after the test."""
    problem = uvicorn_problem()
    require(problem is None, problem or "")
    servers: list[Server] = []

    def start(
        *,
        storage_url: str = "memory://",
        env: dict[str, str] | None = None,
        app: str = "sagaz_fastapi_testapp:app_from_env",
        factory: bool = True,
        app_dir: Path = TESTS_DIR,
        cwd: Path | None = None,
        ready_path: str = "/webhooks/health",
        timeout: float = 30.0,
    ) -> Server:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
        environment.update({"SAGAZ_STORAGE_URL": storage_url, "PYTHONUNBUFFERED": "1"})
        environment.update(env or {})
        for attempt in range(3):
            port = free_port()
            log = tmp_path / f"uvicorn-{port}.log"
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                app,
                *(["--factory"] if factory else []),
                "--app-dir",
                str(app_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ]
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command,
                    cwd=cwd or tmp_path,
                    env=environment,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            server = Server(proc, port, log)
            servers.append(server)
            STARTED.append(server)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(server.url + ready_path, timeout=2.0).status_code == 200:
                        return server
                time.sleep(0.05)
            output = server.output()
            server.stop(signal.SIGKILL)
            if "address already in use" in output.lower() and attempt < 2:
                continue
            pytest.fail(f"uvicorn did not start ({' '.join(command)}):\n{output}")
        raise AssertionError("unreachable")  # pragma: no cover

    STARTED.clear()
    yield start
    STARTED.clear()
    for server in servers:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
