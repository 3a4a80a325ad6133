"""The apps the hostile corpus is replayed against, one per plugin, all in this process.

Each app serves the corpus's sagas under ``/webhooks`` with run_in_process off (sagas stay
PENDING: the replays count what is stored, not what runs), ``max_body_bytes`` = 64 KiB and
a secret for the signed source. The Django project is configured here (a SQLite file in a
temporary folder, migrated once) unless Django was configured already.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import sagaz_hostile_corpus as corpus  # noqa: E402

from sagaz.core import InMemorySagaStorage, SagaConfig  # noqa: E402
from sagaz.core.portal import run_sync  # noqa: E402
from sagaz.core.web import WebhookSettings  # noqa: E402

#: (status, headers, body) of one response.
Answer = tuple[int, dict[str, str], bytes]


def webhook_settings() -> WebhookSettings:
    return WebhookSettings(
        max_body_bytes=corpus.LIMIT,
        secrets={corpus.SIGNED: corpus.SECRET},
        run_in_process=False,
        secrets_from_env=False,
    )


class Target:
    """One plugin's app: send a corpus case, count the stored sagas."""

    def __init__(self, name: str, send: Callable[[corpus.Case], Answer], count: Callable[[], int]):
        self.name = name
        self.send = send
        self.count = count


# ----------------------------------------------------------------------------- FastAPI


def fastapi_app() -> tuple[Any, SagaConfig]:
    from fastapi import FastAPI

    from sagaz.integrations.fastapi import SagaContextMiddleware, create_webhook_router

    config = SagaConfig(storage=InMemorySagaStorage())
    app = FastAPI()
    app.add_middleware(SagaContextMiddleware)
    app.include_router(create_webhook_router(settings=webhook_settings(), config=config))
    return app, config


@pytest.fixture(scope="module")
def fastapi_target() -> Iterator[Target]:
    import httpx

    app, config = fastapi_app()
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hostile")

    def send(case: corpus.Case) -> Answer:
        headers = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in case.headers.items()]
        if case.content_type is not None:
            headers.append((b"content-type", case.content_type.encode()))
        request = client.request(case.method, case.path, content=case.body, headers=headers)
        response = loop.run_until_complete(asyncio.wait_for(request, corpus.TIMEOUT))
        return response.status_code, dict(response.headers), response.content

    def count() -> int:
        return len(loop.run_until_complete(config.storage.list_sagas()))

    yield Target("fastapi", send, count)
    loop.run_until_complete(client.aclose())
    loop.close()


# ----------------------------------------------------------------------------- Flask


def _environ(case: corpus.Case) -> dict[str, str]:
    """Headers as WSGI environ keys (test clients validate header values; the corpus needs
    control characters to get through, as a raw socket would send them)."""
    return {"HTTP_" + k.upper().replace("-", "_"): v for k, v in case.headers.items()}


class _Bounded:
    """Run each call on one worker thread, failing after the corpus timeout (a hang)."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def __call__(self, func: Callable[[], Answer]) -> Answer:
        return self.pool.submit(func).result(timeout=corpus.TIMEOUT)


@pytest.fixture(scope="module")
def flask_target() -> Iterator[Target]:
    from flask import Flask

    from sagaz.integrations.flask import SagaFlask

    app = Flask("sagaz_hostile")
    sagaz = SagaFlask(
        app,
        storage_url="memory://",
        webhook_secrets={corpus.SIGNED: corpus.SECRET},
        max_body_bytes=corpus.LIMIT,
        run_in_process=False,
    )
    sagaz.register_webhook_blueprint("/webhooks")
    client = app.test_client()
    bounded = _Bounded()
    storage = sagaz.state(app).config.storage

    def send(case: corpus.Case) -> Answer:
        def call() -> Answer:
            response = client.open(
                case.path,
                method=case.method,
                data=case.body,
                content_type=case.content_type,
                environ_overrides=_environ(case),
            )
            return response.status_code, dict(response.headers), response.get_data()

        return bounded(call)

    def count() -> int:
        return len(run_sync(storage.list_sagas))

    yield Target("flask", send, count)
    bounded.pool.shutdown(wait=True)
    sagaz.close(app)


# ----------------------------------------------------------------------------- Django


def _configure_django(folder: Path) -> None:
    import django
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="sagaz-hostile-tests-only",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        ROOT_URLCONF="sagaz_hostile_django_urls",
        INSTALLED_APPS=["django.contrib.contenttypes", "sagaz.integrations.django"],
        MIDDLEWARE=["sagaz.integrations.django.middleware.SagaContextMiddleware"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(folder / "db.sqlite3")}
        },
        SAGAZ={
            "WEBHOOKS": {"SECRETS": {corpus.SIGNED: corpus.SECRET}, "MAX_BODY_BYTES": corpus.LIMIT},
            "RUN_IN_PROCESS": False,
        },
    )
    django.setup()


@pytest.fixture(scope="module")
def django_target() -> Iterator[Target]:
    pytest.importorskip("django")
    folder = Path(tempfile.mkdtemp(prefix="sagaz-hostile-"))
    _configure_django(folder)
    from django.core.management import call_command
    from django.test import Client

    from sagaz.integrations.django.runtime import get_config

    bounded = _Bounded()
    bounded(lambda: (call_command("migrate", verbosity=0), (0, {}, b""))[1])
    client = Client()

    def send(case: corpus.Case) -> Answer:
        def call() -> Answer:
            extra: dict[str, Any] = _environ(case)
            response = client.generic(
                case.method,
                case.path,
                data=case.body,
                content_type=case.content_type or "",
                **extra,
            )
            return response.status_code, dict(response.items()), response.content

        return bounded(call)

    def count() -> int:
        return len(run_sync(get_config().storage.list_sagas))

    yield Target("django", send, count)
    bounded.pool.shutdown(wait=True)
