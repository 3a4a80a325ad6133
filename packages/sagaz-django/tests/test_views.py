"""The webhook, status, diagram and health routes through Django's test clients: the sync
views (Client, as under WSGI) and the async views (AsyncClient, as under ASGI)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from django.test import AsyncClient, Client, override_settings
from django.urls import resolve
from sagaz_django_helpers import wait_finished, with_webhooks

from sagaz.core.runner import get_runner
from sagaz.core.web import SIGNATURE_HEADER, signature_headers
from sagaz.integrations.django import views

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"


def _post(client: Client, source: str, payload: Any, **kwargs: Any) -> Any:
    body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    kwargs.setdefault("content_type", JSON)
    return client.post(f"/sagaz/{source}", data=body, **kwargs)


def test_webhook_starts_a_saga_and_status_reads_it(client: Client) -> None:
    order = str(uuid.uuid4())
    response = _post(
        client,
        "order_created",
        {"order_id": order, "amount": 10},
        headers={"X-Correlation-ID": "cid-1"},
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "accepted"
    assert body["source"] == "order_created"
    assert body["correlation_id"] == "cid-1"
    assert response["X-Correlation-ID"] == "cid-1"
    assert body["duplicate"] is False
    assert len(body["saga_ids"]) == 1
    saga_id = body["saga_ids"][0]
    assert wait_finished(saga_id)[saga_id] == "COMPLETED"

    again = _post(client, "order_created", {"order_id": order, "amount": 10})
    assert again.status_code == 202
    assert again.json()["duplicate"] is True
    assert again.json()["saga_ids"] == [saga_id]

    status = client.get(f"/sagaz/status/{saga_id}")
    assert status.status_code == 200
    data = status.json()
    assert data["state"] == "COMPLETED"
    assert data["completed_steps"] == ["reserve", "charge", "ship"]
    assert data["context"]["shipment"] == f"S-{order}"  # EXPOSE_CONTEXT is on in the tests

    by_correlation = client.get("/sagaz/order_created/status/cid-1")
    assert by_correlation.status_code == 200
    assert by_correlation.json()["status"] == "completed"
    assert by_correlation.json()["saga_ids"] == [saga_id]

    diagram = client.get(f"/sagaz/status/{saga_id}/diagram")
    assert diagram.status_code == 200
    assert diagram.json()["mermaid"].startswith("flowchart TD")


@pytest.mark.parametrize(
    ("source", "body", "kwargs", "status", "code"),
    [
        ("order_created", "{not json", {}, 400, "invalid_json"),
        ("order_created", "[1, 2]", {}, 400, "invalid_payload"),
        ("order_created", {"amount": 3}, {}, 400, "missing_field"),
        ("nope", {"order_id": 1}, {}, 404, "unknown_source"),
        (
            "order_created",
            {"order_id": 1},
            {"content_type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        ("order_created", {"order_id": "x" * 5000}, {}, 413, "payload_too_large"),
        ("signed_order", {"order_id": 1}, {}, 401, "missing_signature"),
        (
            "signed_order",
            {"order_id": 1},
            {"headers": {SIGNATURE_HEADER: "sha256=00"}},
            401,
            "missing_timestamp",
        ),
        (
            "signed_order",
            {"order_id": 1},
            {"headers": signature_headers(b'{"order_id": 1}', "not-the-secret")},
            401,
            "invalid_signature",
        ),
        ("bad name!", {"order_id": 1}, {}, 404, "unknown_source"),
    ],
)
def test_bad_webhooks_are_4xx_json(
    client: Client, source: str, body: Any, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = _post(client, source, body, **kwargs)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == JSON
    data = response.json()
    assert data["error"] == code
    assert data["correlation_id"] == response["X-Correlation-ID"]
    if code == "missing_field":
        assert "'order_id'" in data["detail"]


def test_signed_webhook(client: Client) -> None:
    raw = json.dumps({"order_id": str(uuid.uuid4())}).encode()
    response = client.post(
        "/sagaz/signed_order",
        data=raw,
        content_type=JSON,
        headers=signature_headers(raw, "s3cret"),
    )
    assert response.status_code == 202
    wait_finished(*response.json()["saga_ids"])


def test_other_routes(client: Client) -> None:
    assert client.get("/sagaz/health").json()["status"] == "ok"
    missing = client.get("/sagaz/status/unknown-saga")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    assert client.get("/sagaz/status/unknown-saga/diagram").status_code == 404
    assert client.get("/sagaz/order_created/status/none-such").status_code == 404
    for method, path, allowed in (
        ("get", "/sagaz/order_created", "POST"),
        ("post", "/sagaz/health", "GET"),
        ("post", "/sagaz/status/x", "GET"),
        ("post", "/sagaz/status/x/diagram", "GET"),
        ("post", "/sagaz/order_created/status/x", "GET"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 405
        assert response["Allow"] == allowed
        assert response.json()["error"] == "method_not_allowed"
        assert response["X-Correlation-ID"]


def test_correlation_ids(client: Client) -> None:
    kept = client.get("/sagaz/health", headers={"X-Correlation-ID": "abc.DEF:1-2_3"})
    assert kept["X-Correlation-ID"] == "abc.DEF:1-2_3"
    for bad in ("has space", "x" * 129, "ü"):
        replaced = client.get("/sagaz/health", headers={"X-Correlation-ID": bad})
        assert replaced["X-Correlation-ID"] != bad
        assert len(replaced["X-Correlation-ID"]) == 36
    error = client.get("/sagaz/status/nope", headers={"X-Correlation-ID": "err-1"})
    assert error.status_code == 404
    assert error["X-Correlation-ID"] == "err-1"
    other = client.get("/admin/login/", headers={"X-Correlation-ID": "admin-1"})
    assert other["X-Correlation-ID"] == "admin-1"


@override_settings(SAGAZ={**with_webhooks(EXPOSE_CONTEXT=False), "RUN_IN_PROCESS": False})
def test_not_run_in_process_and_context_hidden(client: Client) -> None:
    response = _post(client, "ping", {"n": str(uuid.uuid4())})
    saga_id = response.json()["saga_ids"][0]
    data = client.get(f"/sagaz/status/{saga_id}").json()
    assert data["state"] == "PENDING"
    assert "context" not in data


def test_urls_resolve_sync_off_the_loop() -> None:
    assert resolve("/sagaz/health").func is views.health
    assert resolve("/sagaz/x").func is views.webhook


# ------------------------------------------------------------------- the async views


async def test_async_views(async_client: AsyncClient) -> None:
    order = str(uuid.uuid4())
    response = await async_client.post(
        "/sagaz/order_created",
        data=json.dumps({"order_id": order, "amount": 5000}),
        content_type=JSON,
        headers={"X-Correlation-ID": "async-1"},
    )
    assert response.status_code == 202, response.content
    assert response["X-Correlation-ID"] == "async-1"
    saga_id = response.json()["saga_ids"][0]
    await get_runner().drain()  # the saga ran on this (the server's) loop
    status = await async_client.get(f"/sagaz/status/{saga_id}")
    assert status.json()["state"] == "COMPENSATED"
    assert (await async_client.get("/sagaz/order_created/status/async-1")).json()[
        "status"
    ] == "compensated"
    assert (await async_client.get(f"/sagaz/status/{saga_id}/diagram")).status_code == 200
    assert (await async_client.get("/sagaz/health")).json()["status"] == "ok"
    duplicate = await async_client.post(
        "/sagaz/order_created", data=json.dumps({"order_id": order}), content_type=JSON
    )
    assert duplicate.json()["duplicate"] is True


async def test_async_bad_input(async_client: AsyncClient) -> None:
    cases = [
        ("/sagaz/order_created", "{bad", JSON, 400),
        ("/sagaz/order_created", json.dumps({"amount": 1}), JSON, 400),
        ("/sagaz/nope", "{}", JSON, 404),
        ("/sagaz/order_created", "{}", "text/plain", 415),
        ("/sagaz/order_created", json.dumps({"order_id": "y" * 5000}), JSON, 413),
        ("/sagaz/signed_order", json.dumps({"order_id": 1}), JSON, 401),
    ]
    for path, data, content_type, status in cases:
        response = await async_client.post(path, data=data, content_type=content_type)
        assert response.status_code == status, (path, response.content)
        assert response.json()["correlation_id"] == response["X-Correlation-ID"]
    for method, path in (
        ("get", "/sagaz/x"),
        ("post", "/sagaz/health"),
        ("post", "/sagaz/status/x"),
        ("post", "/sagaz/status/x/diagram"),
        ("post", "/sagaz/x/status/y"),
    ):
        assert (await getattr(async_client, method)(path)).status_code == 405
    assert (await async_client.get("/sagaz/status/none")).status_code == 404
