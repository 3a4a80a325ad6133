"""The webhook router through TestClient: the shared HTTP surface, its errors, its schema."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from sagaz_fastapi_support import terminal_state, wait_until
from sagaz_fastapi_testapp import LIMIT, SECRET, SIGNED_SOURCE, SOURCE, create_app

from sagaz.core import InMemorySagaStorage, SagaConfig, StorageError
from sagaz.core.web import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSettings,
    signature_headers,
)
from sagaz.integrations.fastapi import (
    ErrorResponse,
    SagaState,
    SagazRoute,
    StepState,
    WebhookAccepted,
    create_lifespan,
    create_webhook_router,
)

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(
        SagaConfig(),
        settings=WebhookSettings(
            max_body_bytes=1024, secrets={SIGNED_SOURCE: SECRET}, expose_context=True
        ),
    )
    with TestClient(app) as test_client:
        yield test_client


def post_event(client: TestClient, body: Any, source: str = SOURCE, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"/webhooks/{source}", content=data, headers={**JSON, **headers})


def assert_error(response: Any, status: int, code: str, correlation_id: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "X-Correlation-ID" in response.headers
    if correlation_id is not None:
        assert body["correlation_id"] == correlation_id
        assert response.headers["X-Correlation-ID"] == correlation_id
    return body


def test_event_is_accepted_and_the_saga_completes(client: TestClient) -> None:
    response = post_event(client, {"order_id": "c1", "amount": 10}, **{"X-Correlation-ID": "cid-1"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["source"] == SOURCE
    assert body["correlation_id"] == "cid-1"
    assert body["duplicate"] is False
    assert len(body["saga_ids"]) == 1
    assert response.headers["X-Correlation-ID"] == "cid-1"
    saga_id = body["saga_ids"][0]
    assert terminal_state(client, saga_id) == "COMPLETED"

    status = client.get(f"/webhooks/status/{saga_id}").json()
    assert status["correlation_id"] == "cid-1"
    assert status["completed_steps"] == ["reserve", "charge", "ship"]
    assert status["failed_step"] is None
    # The correlation id reached the steps: through the context scope and the step info.
    assert status["context"]["seen_correlation_id"] == "cid-1"
    assert status["context"]["step_correlation_id"] == "cid-1"
    assert set(status) == set(SagaState.model_fields)
    assert {s["name"] for s in status["steps"]} == {"reserve", "charge", "ship"}
    assert set(status["steps"][0]) == set(StepState.model_fields)

    by_event = client.get(f"/webhooks/{SOURCE}/status/cid-1")
    assert by_event.status_code == 200
    event = by_event.json()
    assert event["status"] == "completed"
    assert event["saga_ids"] == [saga_id]
    assert event["sagas"][0]["state"] == "COMPLETED"


def test_a_declined_order_is_compensated(client: TestClient) -> None:
    response = post_event(client, {"order_id": "c2", "amount": LIMIT + 1})
    assert response.status_code == 202
    saga_id = response.json()["saga_ids"][0]
    assert terminal_state(client, saga_id) == "COMPENSATED"
    status = client.get(f"/webhooks/status/{saga_id}").json()
    assert status["failed_step"] == "charge"
    assert "PaymentDeclinedError" in status["error"]
    assert status["compensated_steps"] == ["reserve"]
    cid = response.json()["correlation_id"]
    assert client.get(f"/webhooks/{SOURCE}/status/{cid}").json()["status"] == "compensated"


def test_a_duplicate_event_returns_the_existing_saga(client: TestClient) -> None:
    first = post_event(client, {"order_id": "dup", "amount": 1})
    second = post_event(client, {"order_id": "dup", "amount": 1})
    assert first.status_code == second.status_code == 202
    assert second.json()["saga_ids"] == first.json()["saga_ids"]
    assert second.json()["duplicate"] is True
    assert "Duplicate" in second.json()["message"]


def test_a_generated_correlation_id_is_returned_and_stored(client: TestClient) -> None:
    response = post_event(
        client, {"order_id": "gen", "amount": 1}, **{"X-Correlation-ID": "bad id!"}
    )
    cid = response.json()["correlation_id"]
    assert cid != "bad id!"
    assert response.headers["X-Correlation-ID"] == cid
    saga_id = response.json()["saga_ids"][0]
    terminal_state(client, saga_id)
    assert client.get(f"/webhooks/status/{saga_id}").json()["correlation_id"] == cid


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_json"),
        (b"[1, 2]", {}, 400, "invalid_payload"),
        (b'{"amount": 3}', {}, 400, "missing_field"),
        (b'{"order_id": "x"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"order_id": "x"}', {"Content-Type": ""}, 415, "unsupported_media_type"),
    ],
)
def test_bad_events_get_a_json_4xx(
    client: TestClient, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post(
        f"/webhooks/{SOURCE}",
        content=body,
        headers={**JSON, **headers, "X-Correlation-ID": "bad-1"},
    )
    detail = assert_error(response, status, code, "bad-1")["detail"]
    if code == "missing_field":
        assert "order_id" in detail


def test_an_unknown_source_is_404(client: TestClient) -> None:
    body = assert_error(
        post_event(client, {"order_id": "x"}, source="nobody_listens"), 404, "unknown_source"
    )
    assert SOURCE in body["detail"]
    assert_error(post_event(client, {"order_id": "x"}, source="bad%20name"), 404, "unknown_source")


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    body = json.dumps({"order_id": "big", "pad": "x" * 5000}).encode()
    response = post_event(client, body, **{"X-Correlation-ID": "big-1"})
    detail = assert_error(response, 413, "payload_too_large", "big-1")["detail"]
    assert detail == f"the body is {len(body)} bytes; the limit is 1024 bytes"
    assert response.headers["connection"] == "close"

    def chunked() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 512

    response = client.post(f"/webhooks/{SOURCE}", content=chunked(), headers=JSON)
    detail = assert_error(response, 413, "payload_too_large")["detail"]
    assert detail == "the body is more than 1024 bytes; the limit is 1024 bytes"
    # The size is checked before anything else (as in every Sagaz web plugin).
    assert_error(post_event(client, body, source="nobody_listens"), 413, "payload_too_large")


def test_a_body_at_the_limit_is_accepted(client: TestClient) -> None:
    base = {"order_id": "edge", "pad": ""}
    pad = 1024 - len(json.dumps(base).encode())
    body = json.dumps({**base, "pad": "x" * pad}).encode()
    assert len(body) == 1024
    assert post_event(client, body).status_code == 202


def test_signed_sources_need_a_valid_signature(client: TestClient) -> None:
    body = json.dumps({"order_id": "s1", "amount": 1}).encode()
    assert_error(post_event(client, body, source=SIGNED_SOURCE), 401, "missing_signature")
    wrong = signature_headers(body, "not-the-secret")
    assert_error(post_event(client, body, source=SIGNED_SOURCE, **wrong), 401, "invalid_signature")
    good = signature_headers(body, SECRET)
    response = post_event(client, body, source=SIGNED_SOURCE, **good)
    assert response.status_code == 202, response.text
    assert terminal_state(client, response.json()["saga_ids"][0]) == "COMPLETED"


def test_status_routes_answer_404_for_unknown_ids(client: TestClient) -> None:
    assert_error(client.get("/webhooks/status/no-such-saga"), 404, "not_found")
    assert_error(client.get("/webhooks/status/no-such-saga/diagram"), 404, "not_found")
    assert_error(client.get(f"/webhooks/{SOURCE}/status/no-such-id"), 404, "not_found")


def test_the_diagram_route_colours_steps(client: TestClient) -> None:
    saga_id = post_event(client, {"order_id": "d1", "amount": LIMIT + 5}).json()["saga_ids"][0]
    terminal_state(client, saga_id)
    response = client.get(f"/webhooks/status/{saga_id}/diagram")
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "COMPENSATED"
    assert body["mermaid"].startswith("flowchart")
    assert "classDef compensated" in body["mermaid"]


def test_health(client: TestClient) -> None:
    response = client.get("/webhooks/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "storage": "InMemorySagaStorage"}


def test_a_wrong_method_is_a_json_405(client: TestClient) -> None:
    response = client.get(f"/webhooks/{SOURCE}", headers={"X-Correlation-ID": "m-1"})
    assert_error(response, 405, "method_not_allowed", "m-1")
    assert "POST" in response.headers["allow"]


class BrokenStorage(InMemorySagaStorage):
    """A storage whose reads fail, as an unreachable database would."""

    async def ping(self) -> None:
        raise StorageError("the database is down")

    async def load(self, saga_id: str) -> Any:
        raise StorageError("the database is down")


def test_storage_failures_are_503() -> None:
    app = create_app(SagaConfig(storage=BrokenStorage()), recover=False)
    with TestClient(app) as client:
        health = client.get("/webhooks/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert "down" not in health.json()["detail"]  # the cause stays in the server log
        body = assert_error(client.get("/webhooks/status/x1"), 503, "storage_unavailable")
        assert "down" not in body["detail"]  # the storage's own message stays in the log


def test_storage_errors_elsewhere_on_the_routes_are_503() -> None:
    def storage_down() -> None:
        raise StorageError("the token store is down")

    app = FastAPI(lifespan=create_lifespan(SagaConfig()))
    app.include_router(create_webhook_router(dependencies=[Depends(storage_down)]))
    with TestClient(app) as client:
        body = assert_error(client.get("/webhooks/health"), 503, "storage_unavailable")
    assert "token store" not in body["detail"]


def test_unexpected_errors_are_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Exploding(InMemorySagaStorage):
        async def load(self, saga_id: str) -> Any:
            raise ZeroDivisionError("oops")

    app = create_app(SagaConfig(storage=Exploding()), middleware=False)
    with TestClient(app) as client:
        body = assert_error(client.get("/webhooks/status/x1"), 500, "internal_error")
    assert "oops" not in body["detail"]
    assert any("oops" in (r.exc_text or "") for r in caplog.records)


def test_router_dependencies_errors_are_json() -> None:
    def token(x_token: str = Header()) -> str:
        if x_token != "ok":
            raise HTTPException(403, detail={"reason": "bad token"})
        return x_token

    app = FastAPI(lifespan=create_lifespan(SagaConfig()))
    app.include_router(create_webhook_router(dependencies=[Depends(token)]))
    with TestClient(app) as client:
        missing = client.get("/webhooks/health", headers={"X-Correlation-ID": "dep-1"})
        body = assert_error(missing, 422, "validation_error", "dep-1")
        assert body["errors"]
        assert "x-token" in body["detail"]
        forbidden = client.get("/webhooks/health", headers={"X-Token": "no"})
        assert "bad token" in assert_error(forbidden, 403, "forbidden")["detail"]
        assert client.get("/webhooks/health", headers={"X-Token": "ok"}).status_code == 200


def test_without_the_lifespan_the_router_says_so() -> None:
    app = FastAPI()
    app.include_router(create_webhook_router())
    with TestClient(app) as client:
        body = assert_error(client.get("/webhooks/health"), 500, "sagaz_not_initialized")
    assert "create_lifespan" in body["detail"]


def test_an_explicit_config_needs_no_lifespan() -> None:
    config = SagaConfig()
    app = FastAPI()
    app.include_router(create_webhook_router("/hooks", config=config))
    with TestClient(app) as client:
        response = post_event(client, {"order_id": "e1", "amount": 1}, source=SOURCE)
        assert response.status_code == 404  # the prefix is /hooks
        response = client.post(
            f"/hooks/{SOURCE}", content=b'{"order_id": "e1", "amount": 1}', headers=JSON
        )
        assert response.status_code == 202
        # Without the middleware the route still echoes a correlation id.
        assert response.headers["X-Correlation-ID"] == response.json()["correlation_id"]
        assert terminal_state(client, response.json()["saga_ids"][0], "/hooks") == "COMPLETED"


def test_run_in_process_false_leaves_sagas_pending() -> None:
    config = SagaConfig()
    app = create_app(config, settings=WebhookSettings(run_in_process=False))
    with TestClient(app) as client:
        response = post_event(client, {"order_id": "w1", "amount": 1})
        saga_id = response.json()["saga_ids"][0]
        status = client.get(f"/webhooks/status/{saga_id}").json()
        assert status["state"] == "PENDING"
        assert "context" not in status  # not exposed by default


def test_the_openapi_schema_documents_the_routes(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    post = paths["/webhooks/{source}"]["post"]
    assert set(post["responses"]) >= {"202", "400", "401", "404", "413", "415", "422"}
    assert post["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WebhookAccepted"
    )
    for code in ("400", "401", "404", "413", "415"):
        ref = post["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")
    assert "application/json" in post["requestBody"]["content"]
    headers = {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert headers == {"X-Correlation-ID", SIGNATURE_HEADER, TIMESTAMP_HEADER}
    assert "/webhooks/status/{saga_id}" in paths
    assert "/webhooks/status/{saga_id}/diagram" in paths
    assert "/webhooks/{source}/status/{correlation_id}" in paths
    assert "/webhooks/health" in paths
    components = schema["components"]["schemas"]
    assert {"WebhookAccepted", "ErrorResponse", "SagaState", "SourceStatus"} <= set(components)
    assert set(components["WebhookAccepted"]["properties"]) == set(WebhookAccepted.model_fields)
    assert set(components["ErrorResponse"]["properties"]) == set(ErrorResponse.model_fields)


def test_sagaz_route_gives_any_router_the_json_errors() -> None:
    from fastapi import APIRouter

    router = APIRouter(route_class=SagazRoute)

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/items/3").json() == {"item_id": 3}
        body = assert_error(client.get("/items/three"), 422, "validation_error")
        assert "item_id" in body["detail"]


def test_sagas_started_by_webhooks_finish_before_shutdown() -> None:
    config = SagaConfig()
    app = create_app(config)
    with TestClient(app) as client:
        saga_ids = [
            post_event(client, {"order_id": f"s{i}", "amount": 1}).json()["saga_ids"][0]
            for i in range(5)
        ]
    # The lifespan waited for them (grace period) before closing the storage.
    storage = config.storage
    assert isinstance(storage, InMemorySagaStorage)

    async def states() -> list[str]:
        return [(await storage.load(s)).status.value for s in saga_ids]  # type: ignore[union-attr]

    import asyncio

    assert wait_until(lambda: asyncio.run(states()) == ["COMPLETED"] * 5)


def raw_post_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/webhooks/{SOURCE}",
        "raw_path": f"/webhooks/{SOURCE}".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


@pytest.mark.parametrize(
    ("headers", "chunks_read", "detail"),
    [
        # A declared Content-Length over the limit: rejected before reading anything.
        (
            [(b"content-length", b"51200")],
            0,
            "the body is 51200 bytes; the limit is 1024 bytes",
        ),
        # No Content-Length (chunked): reading stops at the first chunk past the limit.
        ([], 3, "the body is more than 1024 bytes; the limit is 1024 bytes"),
    ],
)
async def test_an_oversized_body_is_not_read(
    headers: list[tuple[bytes, bytes]], chunks_read: int, detail: str
) -> None:
    app = FastAPI()
    app.include_router(
        create_webhook_router(config=SagaConfig(), settings=WebhookSettings(max_body_bytes=1024))
    )
    received = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 512, "more_body": received < 100}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(raw_post_scope(headers), receive, send)
    assert sent[0]["status"] == 413
    assert received == chunks_read
    assert json.loads(sent[1]["body"])["detail"] == detail


async def test_a_client_that_disconnects_mid_body_gets_a_400() -> None:
    app = FastAPI()
    app.include_router(create_webhook_router(config=SagaConfig()))
    sent: list[dict[str, Any]] = []
    messages = iter(
        [
            {"type": "http.request", "body": b'{"order', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(raw_post_scope([]), receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"] == "client_disconnected"


def test_unusual_status_codes_get_a_generic_error_code() -> None:
    def teapot_or_worse() -> None:
        raise HTTPException(599, detail="odd")

    app = FastAPI(lifespan=create_lifespan(SagaConfig()))
    app.include_router(create_webhook_router(dependencies=[Depends(teapot_or_worse)]))
    with TestClient(app) as client:
        assert_error(client.get("/webhooks/health"), 599, "http_error")
