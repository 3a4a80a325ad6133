"""The webhook blueprint through Flask's test client: the README flow and every error."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from flask import Flask
from sagaz_flask_helpers import sagaz_of, wait_terminal

from sagaz.core import CORRELATION_ID_HEADER, InMemorySagaStorage, StorageError
from sagaz.core.web import signature_headers


def order(order_id: str | None = None, amount: float = 99.99) -> dict[str, Any]:
    return {
        "order_id": order_id or f"ORD-{uuid.uuid4().hex[:8]}",
        "amount": amount,
        "user_id": "u1",
    }


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    assert body["error"] == code
    assert body["detail"]
    # Errors carry the request's correlation id in the body and the header.
    assert body["correlation_id"] == response.headers[CORRELATION_ID_HEADER]
    return body


# -- the README ----------------------------------------------------------------------------


def test_readme_flow_webhook_then_status(client: Any) -> None:
    response = client.post(
        "/webhooks/order_created",
        json={"order_id": "ORD-001", "amount": 99.99, "user_id": "user-123"},
    )
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted"
    assert body["source"] == "order_created"
    assert body["message"] == "Event queued for processing"
    correlation_id = body["correlation_id"]
    assert correlation_id == response.headers[CORRELATION_ID_HEADER]
    assert len(body["saga_ids"]) == 1
    saga_id = body["saga_ids"][0]

    status = client.get(f"/webhooks/order_created/status/{correlation_id}")
    assert status.status_code == 200
    s = status.get_json()
    assert s["correlation_id"] == correlation_id
    assert s["source"] == "order_created"
    assert s["status"] in {"processing", "completed"}
    assert s["message"]

    final = wait_terminal(client, saga_id)
    assert final["saga_id"] == saga_id
    assert final["state"] == "COMPLETED"
    assert final["context"]["order_id"] == "ORD-001"
    assert final["completed_steps"] == ["reserve_inventory", "charge_payment", "ship_order"]
    assert final["failed_step"] is None
    assert final["error"] is None
    assert final["correlation_id"] == correlation_id

    done = client.get(f"/webhooks/order_created/status/{correlation_id}").get_json()
    assert done["status"] == "completed"
    assert done["saga_ids"] == [saga_id]


def test_declined_order_is_compensated(client: Any) -> None:
    body = client.post("/webhooks/order_created", json=order(amount=5000)).get_json()
    final = wait_terminal(client, body["saga_ids"][0])
    assert final["state"] == "COMPENSATED"
    assert final["failed_step"] == "charge_payment"
    assert "PaymentDeclinedError" in final["error"]
    assert final["compensated_steps"] == ["reserve_inventory"]
    status = client.get(f"/webhooks/order_created/status/{body['correlation_id']}").get_json()
    assert status["status"] == "compensated"


def test_incoming_correlation_id_is_used_everywhere(client: Any) -> None:
    cid = "req-42.a:b_c"
    response = client.post(
        "/webhooks/order_created", json=order(), headers={CORRELATION_ID_HEADER: cid}
    )
    assert response.headers[CORRELATION_ID_HEADER] == cid
    body = response.get_json()
    assert body["correlation_id"] == cid
    final = wait_terminal(client, body["saga_ids"][0])
    assert final["correlation_id"] == cid
    assert (
        client.get(f"/webhooks/order_created/status/{cid}").get_json()["saga_ids"]
        == (body["saga_ids"])
    )


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", ""])
def test_invalid_correlation_id_is_replaced(client: Any, bad: str) -> None:
    response = client.get("/webhooks/health", headers={CORRELATION_ID_HEADER: bad})
    echoed = response.headers[CORRELATION_ID_HEADER]
    assert echoed != bad
    assert uuid.UUID(echoed).version == 4


def test_duplicate_post_returns_the_existing_saga(client: Any) -> None:
    payload = order("ORD-DUP")
    first = client.post("/webhooks/order_created", json=payload).get_json()
    second = client.post("/webhooks/order_created", json=payload)
    assert second.status_code == 202
    body = second.get_json()
    assert body["saga_ids"] == first["saga_ids"]
    assert body["duplicate"] is True
    assert first["duplicate"] is False
    assert "Duplicate" in body["message"]


def test_saga_diagram_route(client: Any) -> None:
    saga_id = client.post("/webhooks/order_created", json=order()).get_json()["saga_ids"][0]
    wait_terminal(client, saga_id)
    response = client.get(f"/webhooks/status/{saga_id}/diagram")
    assert response.status_code == 200
    body = response.get_json()
    assert body["saga_id"] == saga_id
    assert body["state"] == "COMPLETED"
    assert body["mermaid"].startswith("flowchart TD")
    assert "classDef completed" in body["mermaid"]
    assert_error(client.get("/webhooks/status/nope/diagram"), 404, "not_found")


def test_app_diagram_helper(client: Any) -> None:
    static = client.get("/orders/ORD-7/diagram")
    assert static.status_code == 200
    body = static.get_json()
    assert body["order_id"] == "ORD-7"
    assert body["saga_name"] == "flask-example-order"
    assert "reserve_inventory" in body["mermaid"]
    assert "classDef" not in body["mermaid"]
    assert "saga_id" not in body

    saga_id = client.post("/webhooks/order_created", json=order(amount=5000)).get_json()[
        "saga_ids"
    ][0]
    wait_terminal(client, saga_id)
    coloured = client.get(f"/orders/ORD-7/diagram?saga_id={saga_id}").get_json()
    assert coloured["saga_id"] == saga_id
    assert coloured["state"] == "COMPENSATED"
    assert "classDef compensated" in coloured["mermaid"]
    assert_error(client.get("/orders/ORD-7/diagram?saga_id=unknown"), 404, "not_found")
    assert_error(client.get("/orders/ORD-7/diagram?saga_id=bad%20id"), 404, "not_found")


def test_diagram_helper_rejects_other_sagas_and_bad_direction(app: Flask) -> None:
    from sagaz_flask_example import OrderSaga

    from sagaz.core import Saga, action

    class OtherSaga(Saga):
        saga_name = "flask-test-other"

        @action("only")
        async def only(self, ctx: dict[str, Any]) -> None:
            return None

    sagaz = sagaz_of(app)
    with app.test_request_context("/"):
        app.preprocess_request()
        result = sagaz.run_sync(OtherSaga, {})
        wrong = app.process_response(sagaz.diagram_response(OrderSaga, result.saga_id))
        assert "flask-test-other" in assert_error(wrong, 404, "not_found")["detail"]
        bad = app.process_response(sagaz.diagram_response(OrderSaga, direction="XX"))
        assert_error(bad, 400, "invalid_direction")
        lr = sagaz.diagram_response(OtherSaga(), result.saga_id, direction="LR").get_json()
        assert lr["mermaid"].startswith("flowchart LR")


def test_health_routes(client: Any) -> None:
    for path in ("/webhooks/health", "/health"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok", "storage": "InMemorySagaStorage"}
        assert response.headers[CORRELATION_ID_HEADER]


# -- bad input: 4xx with JSON, never a 500 -------------------------------------------------


def test_invalid_json_is_400(client: Any) -> None:
    response = client.post(
        "/webhooks/order_created", data="{not json", content_type="application/json"
    )
    assert_error(response, 400, "invalid_json")


def test_json_that_is_not_an_object_is_400(client: Any) -> None:
    assert_error(client.post("/webhooks/order_created", json=[1, 2]), 400, "invalid_payload")


def test_missing_idempotency_field_is_400_and_named(client: Any) -> None:
    body = assert_error(
        client.post("/webhooks/order_created", json={"amount": 1}), 400, "missing_field"
    )
    assert "order_id" in body["detail"]


def test_unknown_source_is_404(client: Any) -> None:
    body = assert_error(client.post("/webhooks/no_such_source", json={}), 404, "unknown_source")
    assert "order_created" in body["detail"]


def test_not_json_is_415(client: Any) -> None:
    response = client.post("/webhooks/order_created", data="a=1", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")
    no_type = client.post("/webhooks/order_created", data=b"{}")
    assert_error(no_type, 415, "unsupported_media_type")


def test_json_suffix_media_type_is_accepted(client: Any) -> None:
    response = client.post(
        "/webhooks/order_created",
        data=json.dumps(order()),
        content_type="application/vnd.orders+json; charset=utf-8",
    )
    assert response.status_code == 202


def test_too_large_by_content_length_is_413_without_reading(make_app: Any) -> None:
    app = make_app(max_body_bytes=100)

    class Unreadable(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            raise AssertionError("the body of an oversized request must not be read")

    with app.test_request_context(
        "/webhooks/order_created",
        method="POST",
        content_type="application/json",
        headers={CORRELATION_ID_HEADER: "big-1"},
        environ_overrides={"wsgi.input": Unreadable(), "CONTENT_LENGTH": "5000"},
    ):
        response = app.full_dispatch_request()
    body = assert_error(response, 413, "payload_too_large")
    assert body["correlation_id"] == "big-1"
    assert "5000 bytes" in body["detail"]
    assert response.headers["Connection"] == "close"


def test_too_large_without_content_length_is_413_after_a_bounded_read(make_app: Any) -> None:
    app = make_app(max_body_bytes=100)
    read: list[int] = []

    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            read.append(len(buffer))
            assert sum(read) < 10_000, "read far past the limit"
            buffer[: len(buffer)] = b"x" * len(buffer)
            return len(buffer)

    with app.test_request_context(
        "/webhooks/order_created",
        method="POST",
        content_type="application/json",
        environ_overrides={"wsgi.input": Endless(), "wsgi.input_terminated": True},
    ) as ctx:
        ctx.request.environ.pop("CONTENT_LENGTH", None)
        response = app.full_dispatch_request()
    body = response.get_json()
    assert response.status_code == 413
    assert body["error"] == "payload_too_large"
    assert sum(read) <= 101


def test_body_at_the_limit_is_accepted(make_app: Any) -> None:
    payload = json.dumps(order()).encode()
    app = make_app(max_body_bytes=len(payload))
    response = app.test_client().post(
        "/webhooks/order_created", data=payload, content_type="application/json"
    )
    assert response.status_code == 202


def test_signature_required_for_a_source_with_a_secret(client: Any) -> None:
    from sagaz_flask_example import SIGNING_SECRET

    payload = json.dumps(order()).encode()
    unsigned = client.post("/webhooks/order_signed", data=payload, content_type="application/json")
    assert_error(unsigned, 401, "missing_signature")
    wrong = client.post(
        "/webhooks/order_signed",
        data=payload,
        content_type="application/json",
        headers=signature_headers(payload, "other"),
    )
    assert_error(wrong, 401, "invalid_signature")
    signed = client.post(
        "/webhooks/order_signed",
        data=payload,
        content_type="application/json",
        headers=signature_headers(payload, SIGNING_SECRET),
    )
    assert signed.status_code == 202
    # The other source needs no signature.
    assert client.post("/webhooks/order_created", data=payload, content_type="application/json")


def test_blueprint_secrets_override_the_app_settings(app: Flask) -> None:
    sagaz_of(app).register_webhook_blueprint("/strict", app=app, secrets={"order_created": "k"})
    client = app.test_client()
    payload = json.dumps(order()).encode()
    assert_error(
        client.post("/strict/order_created", data=payload, content_type="application/json"),
        401,
        "missing_signature",
    )
    signed = client.post(
        "/strict/order_created",
        data=payload,
        content_type="application/json",
        headers=signature_headers(payload, "k"),
    )
    assert signed.status_code == 202


def test_flask_404_and_405_on_webhook_routes_are_json(client: Any) -> None:
    wrong_method = client.get("/webhooks/order_created")
    body = assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]
    assert "POST" in body["detail"]
    assert_error(client.delete("/webhooks/status/abc"), 405, "method_not_allowed")
    assert_error(client.get("/webhooks/a/b/c/d"), 404, "not_found")
    assert_error(client.get("/webhooks"), 404, "not_found")


def test_other_routes_keep_flask_defaults(client: Any) -> None:
    response = client.get("/not/a/webhook")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert response.headers[CORRELATION_ID_HEADER]
    assert client.get("/webhooksX/y").mimetype == "text/html"


def test_unknown_saga_and_correlation_are_404(client: Any) -> None:
    assert_error(client.get("/webhooks/status/does-not-exist"), 404, "not_found")
    assert_error(client.get("/webhooks/status/bad%20id"), 404, "not_found")
    response = client.get("/webhooks/order_created/status/never-seen")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_context_hidden_unless_exposed(make_app: Any) -> None:
    app = make_app()
    sagaz = sagaz_of(app)
    sagaz.register_webhook_blueprint("/private", app=app, expose_context=False)
    client = app.test_client()
    saga_id = client.post("/private/order_created", json=order()).get_json()["saga_ids"][0]
    final = wait_terminal(client, saga_id, prefix="/private")
    assert "context" not in final
    assert "context" in client.get(f"/webhooks/status/{saga_id}").get_json()
    assert_error(client.get("/private/nothing/here/at/all"), 404, "not_found")


def test_storage_failure_is_503_json(make_app: Any) -> None:
    class BrokenStorage(InMemorySagaStorage):
        async def load(self, saga_id: str) -> Any:
            raise StorageError("database is down")

        async def ping(self) -> None:
            raise StorageError("database is down")

    app = make_app(storage=BrokenStorage())
    client = app.test_client()
    assert_error(client.get("/webhooks/status/abc"), 503, "storage_unavailable")
    health = client.get("/webhooks/health")
    assert health.status_code == 503
    assert health.get_json()["status"] == "unavailable"


def test_unexpected_error_is_a_json_500_with_the_correlation_id(make_app: Any) -> None:
    class Exploding(InMemorySagaStorage):
        async def load(self, saga_id: str) -> Any:
            raise ZeroDivisionError("bug")

    app = make_app(storage=Exploding())
    response = app.test_client().get(
        "/webhooks/status/abc", headers={CORRELATION_ID_HEADER: "trace-1"}
    )
    body = assert_error(response, 500, "internal_error")
    assert body["correlation_id"] == "trace-1"
    assert "ZeroDivisionError" not in body["detail"]


def test_user_route_errors_still_echo_the_correlation_id(app: Flask) -> None:
    @app.get("/explode")
    def explode() -> Any:
        raise RuntimeError("boom")

    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/explode", headers={CORRELATION_ID_HEADER: "err-1"})
    assert response.status_code == 500
    assert response.headers[CORRELATION_ID_HEADER] == "err-1"


def test_two_blueprints_get_distinct_names(app: Flask) -> None:
    sagaz = sagaz_of(app)
    second = sagaz.register_webhook_blueprint("/hooks2/", app=app)
    third = sagaz.register_webhook_blueprint("hooks3", app=app, name="custom")
    assert second.name != "sagaz_webhooks"
    assert third.name == "custom"
    client = app.test_client()
    assert client.get("/hooks2/health").status_code == 200
    assert client.get("/hooks3/health").status_code == 200


def test_blueprint_at_the_root(make_app: Any) -> None:
    app = make_app()
    sagaz_of(app).register_webhook_blueprint("/", app=app, name="root_hooks")
    client = app.test_client()
    assert client.post("/order_created", json=order()).status_code == 202
    assert_error(client.get("/no/such/thing"), 404, "not_found")
