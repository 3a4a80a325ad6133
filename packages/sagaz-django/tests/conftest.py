"""Test configuration: Django settings for SQLite or PostgreSQL, servers, helpers.

``SAGAZ_TEST_DB=sqlite`` (default) or ``SAGAZ_TEST_DB=postgres`` picks the database. A
test needing a service that does not answer is skipped with the reason, or fails when
``CI=true``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from sagaz_django_helpers import (  # noqa: E402
    CI,
    answers,
    free_port,
    stop,
    subprocess_env,
    wait_http,
)


def pytest_configure(config: pytest.Config) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        from sagaz_django_testproject import settings as project

        settings.configure(**{k: v for k, v in vars(project).items() if k.isupper()})
        django.setup()
    config.addinivalue_line("markers", "servers: starts gunicorn/uvicorn subprocesses")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from sagaz_django_testproject import settings as project

    if project.KIND == "sqlite":
        return
    server = dict(project.DATABASES["default"])
    host, port = str(server["HOST"]), int(server["PORT"])
    if answers(host, port):
        return
    reason = f"{project.KIND} does not answer on {host}:{port} (SAGAZ_TEST_DB={project.KIND})"
    if CI:
        raise pytest.UsageError(f"{reason}; CI=true, so this is a failure, not a skip")
    for item in items:
        if (
            "db" in getattr(item, "fixturenames", ())
            or "transactional_db" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("django_db")
            or item.cls is not None
        ):
            item.add_marker(pytest.mark.skip(reason=reason))


def _start(kind: str, django_db_blocker: Any, **env: str) -> Iterator[str]:
    """Serve the test project; module-scoped, so its in-process recovery sweep is gone
    before other modules record sagas in the same database on purpose."""
    port = free_port()
    with django_db_blocker.unblock():
        environment = subprocess_env(**env)
    if kind == "gunicorn":
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "sagaz_django_testproject.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "8",
            "--graceful-timeout",
            "10",
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "sagaz_django_testproject.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    proc = subprocess.Popen(
        cmd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=TESTS
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/sagaz/health", proc=proc)
        yield base
    finally:
        output = stop(proc)
        if "Traceback" in output:
            print(f"--- {kind} output ---\n{output[-5000:]}")


@pytest.fixture(scope="module")
def gunicorn_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """Base URL of the test project behind gunicorn (WSGI, 2 workers x 8 threads)."""
    yield from _start("gunicorn", django_db_blocker)


@pytest.fixture(scope="module")
def uvicorn_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """Base URL of the test project behind uvicorn (ASGI: the async views)."""
    yield from _start("uvicorn", django_db_blocker)


async def _drain_runner() -> None:
    import asyncio

    from sagaz.core.runner import get_runner

    async with asyncio.timeout(30):
        await get_runner().drain()


@pytest.fixture(autouse=True)
def _in_process_sagas_finish_before_teardown() -> Iterator[None]:
    """Sagas a sync view started run on the portal loop after the response: let them
    finish before the test's database is flushed (a TRUNCATE racing a saga's write
    deadlocks on PostgreSQL). The recovery sweep a test's first request started stops
    too, so it does not claim the sagas a later test records on purpose."""
    yield
    from sagaz.core.portal import run_sync
    from sagaz.integrations.django.runtime import stop_recovery

    stop_recovery()
    run_sync(_drain_runner)
