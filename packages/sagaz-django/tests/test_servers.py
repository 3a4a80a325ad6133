"""The routes behind real servers on 127.0.0.1: gunicorn (WSGI: the sync views through the
portal) and uvicorn (ASGI: the async views on the server's loop); bounded load tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sagaz_django_helpers import TERMINAL, wait_until
from sagaz_django_testproject import settings as project

from sagaz.core.web import SIGNATURE_HEADER, signature_headers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.servers]

JSON = {"Content-Type": "application/json"}


@pytest.fixture(params=["gunicorn", "uvicorn"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    return request.getfixturevalue(f"{request.param}_server")


def _statuses(saga_ids: list[str]) -> dict[str, str]:
    from sagaz.integrations.django.models import SagaInstance

    return dict(SagaInstance.objects.filter(saga_id__in=saga_ids).values_list("saga_id", "status"))


def _wait_all(saga_ids: list[str], timeout: float = 60.0) -> dict[str, str]:
    wait_until(
        lambda: (
            len(found := _statuses(saga_ids)) == len(set(saga_ids))
            and set(found.values()) <= TERMINAL
        ),
        timeout,
        f"{len(saga_ids)} sagas to finish",
    )
    return _statuses(saga_ids)


def test_webhook_status_duplicates_and_errors(server: str) -> None:
    order = str(uuid.uuid4())
    with httpx.Client(base_url=server, timeout=30) as http:
        accepted = http.post(
            "/sagaz/order_created",
            content=json.dumps({"order_id": order, "amount": 800}),
            headers={**JSON, "X-Correlation-ID": f"live-{order}"},
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.headers["X-Correlation-ID"] == f"live-{order}"
        saga_id = accepted.json()["saga_ids"][0]
        assert _wait_all([saga_id]) == {saga_id: "COMPENSATED"}
        duplicate = http.post(
            "/sagaz/order_created", content=json.dumps({"order_id": order}), headers=JSON
        )
        assert duplicate.status_code == 202
        assert duplicate.json()["duplicate"] is True
        assert duplicate.json()["saga_ids"] == [saga_id]
        status = http.get(f"/sagaz/status/{saga_id}").json()
        assert status["state"] == "COMPENSATED"
        assert status["failed_step"] == "ship"
        by_cid = http.get(f"/sagaz/order_created/status/live-{order}").json()
        assert by_cid["status"] == "compensated"
        assert "flowchart" in http.get(f"/sagaz/status/{saga_id}/diagram").json()["mermaid"]
        assert http.get("/sagaz/health").json()["status"] == "ok"
        raw = json.dumps({"order_id": str(uuid.uuid4())}).encode()
        signed = http.post(
            "/sagaz/signed_order",
            content=raw,
            headers={**JSON, **signature_headers(raw, "s3cret")},
        )
        assert signed.status_code == 202
        _wait_all(signed.json()["saga_ids"])
        for path, body, headers, code in (
            ("/sagaz/order_created", b"{oops", JSON, 400),
            ("/sagaz/order_created", b'{"amount": 1}', JSON, 400),
            ("/sagaz/unknown", b"{}", JSON, 404),
            ("/sagaz/order_created", b'{"order_id": 1}', {"Content-Type": "text/plain"}, 415),
            ("/sagaz/order_created", b'{"order_id": "' + b"z" * 10_000 + b'"}', JSON, 413),
            ("/sagaz/signed_order", raw, {**JSON, SIGNATURE_HEADER: "sha256=bad"}, 401),
        ):
            response = http.post(
                path, content=body, headers={**headers, "X-Correlation-ID": "bad-1"}
            )
            assert response.status_code == code, (path, response.text)
            assert response.json()["correlation_id"] == "bad-1"
            assert response.headers["X-Correlation-ID"] == "bad-1"
        assert http.get("/sagaz/status/nope").status_code == 404


def test_oversized_chunked_body_is_refused_on_asgi(uvicorn_server: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"order_id": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(
        f"{uvicorn_server}/sagaz/order_created", content=chunks(), headers=JSON, timeout=30
    )
    assert response.status_code == 413, response.text


async def _fire(base: str, count: int, concurrency: int, *, status_gets: bool = False) -> list[str]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    saga_ids: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:

        async def send(method: str, url: str, **kwargs: Any) -> httpx.Response:
            # A keep-alive connection the server closed just as it was reused fails with
            # ReadError/RemoteProtocolError: resend (at most 3 tries). Both requests are
            # safe to repeat: a GET, and a webhook whose idempotency key is "n".
            for attempt in range(3):
                try:
                    return await http.request(method, url, **kwargs)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        async def one(i: int) -> None:
            async with semaphore:
                if status_gets and i % 2:
                    target = saga_ids[-1] if saga_ids else "none"
                    response = await send("GET", f"/sagaz/status/{target}")
                    assert response.status_code in {200, 404}
                    return
                body = json.dumps({"n": f"{uuid.uuid4()}"})
                response = await send("POST", "/sagaz/ping", content=body, headers=JSON)
                assert response.status_code == 202, response.text
                saga_ids.extend(response.json()["saga_ids"])

        await asyncio.gather(*(one(i) for i in range(count)))
    return saga_ids


def test_100_concurrent_webhooks(server: str) -> None:
    started = time.perf_counter()
    saga_ids = asyncio.run(_fire(server, 100, 100))
    assert len(set(saga_ids)) == 100
    assert set(_wait_all(saga_ids).values()) == {"COMPLETED"}
    assert time.perf_counter() - started < 120


def _pg_connections(dbname: str) -> int:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
def test_1000_requests_leak_no_connection(server: str) -> None:
    if project.KIND != "postgres":
        pytest.skip("pg_stat_activity is PostgreSQL's: runs with SAGAZ_TEST_DB=postgres")
    from django.db import connection

    dbname = str(connection.settings_dict["NAME"])
    connection.close()  # the test's own connection is not the servers'
    asyncio.run(_fire(server, 10, 5))
    time.sleep(1)
    before = _pg_connections(dbname)
    saga_ids = asyncio.run(_fire(server, 1000, 20, status_gets=True))
    assert len(saga_ids) == 500
    assert set(_wait_all(saga_ids, timeout=180).values()) == {"COMPLETED"}
    connection.close()
    counts: list[Any] = []

    def settled() -> bool:
        counts.append(_pg_connections(dbname))
        return counts[-1] <= before

    wait_until(settled, 20, f"connections back to {before} (seen {counts[-5:]})")
