"""Helpers shared by the sagaz-django tests (a unique module name: the tests of every
package may run in one pytest session)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def with_webhooks(**options: Any) -> dict[str, Any]:
    """The test project's ``SAGAZ`` with these ``WEBHOOKS`` options set (the rest kept)."""
    from sagaz_django_testproject.settings import SAGAZ

    return {**SAGAZ, "WEBHOOKS": {**SAGAZ["WEBHOOKS"], **options}}


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


TERMINAL = {"COMPLETED", "COMPENSATED", "FAILED"}


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def saga_status(saga_id: str) -> str | None:
    """The stored status of a saga (None when unknown), read with the ORM."""
    from sagaz.integrations.django.models import SagaInstance

    return SagaInstance.objects.filter(saga_id=saga_id).values_list("status", flat=True).first()


def wait_finished(*saga_ids: str, timeout: float = 20.0) -> dict[str, str | None]:
    """Wait until every saga is in a terminal status; return their statuses."""
    wait_until(
        lambda: all(saga_status(i) in TERMINAL for i in saga_ids), timeout, f"sagas {saga_ids}"
    )
    return {i: saga_status(i) for i in saga_ids}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a server or worker using the tests' database."""
    from django.db import connection
    from sagaz_django_testproject import settings as project

    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DJANGO_SETTINGS_MODULE"] = "sagaz_django_testproject.settings"
    env["SAGAZ_TEST_DB"] = project.KIND
    env["SAGAZ_TEST_DB_NAME"] = str(connection.settings_dict["NAME"])
    env.update(extra)
    return env


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers (any status)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {out[-3000:]}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    """SIGTERM ``proc``, wait, and return its output."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read().decode() if proc.stdout else ""
