"""Security of the Flask routes: timestamped signatures, the authorisation hook (from a
callable or a dotted path), hidden context, validated correlation ids."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, Request
from sagaz_flask_example import SIGNING_SECRET
from sagaz_flask_helpers import sagaz_of, wait_for

from sagaz.core import ConfigurationError
from sagaz.core.web import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body, signature_headers

TOKEN = "Bearer let-me-in"
JSON = "application/json"


def bearer_only(request: Request) -> bool:
    return request.headers.get("Authorization") == TOKEN


def order() -> bytes:
    return json.dumps({"order_id": f"sec-{uuid.uuid4().hex[:8]}", "amount": 2}).encode()


@pytest.mark.parametrize("hook", [bearer_only, f"{__name__}:bearer_only"])
def test_the_authorize_hook_guards_the_routes(make_app: Callable[..., Flask], hook: Any) -> None:
    if isinstance(hook, str):
        hook = f"{bearer_only.__module__}:bearer_only"
    app = make_app(authorize=hook)
    client = app.test_client()
    allowed = {"Authorization": TOKEN}
    refused = client.post("/webhooks/order_created", data=order(), content_type=JSON)
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "forbidden"
    assert refused.get_json()["correlation_id"] == refused.headers["X-Correlation-ID"]
    accepted = client.post(
        "/webhooks/order_created", data=order(), content_type=JSON, headers=allowed
    )
    assert accepted.status_code == 202
    saga_id = accepted.get_json()["saga_ids"][0]
    cid = accepted.get_json()["correlation_id"]
    for path in (
        f"/webhooks/status/{saga_id}",
        f"/webhooks/status/{saga_id}/diagram",
        f"/webhooks/order_created/status/{cid}",
    ):
        assert client.get(path).status_code == 403, path
        assert client.get(path, headers=allowed).status_code == 200, path
    assert client.get("/webhooks/health").status_code == 200  # not guarded


def test_a_hook_that_cannot_be_used_is_a_configuration_error(
    make_app: Callable[..., Flask],
) -> None:
    with pytest.raises(ConfigurationError, match=r"SAGAZ_AUTHORIZE.*cannot be imported"):
        make_app(authorize="no_such_module_xyz:hook")
    with pytest.raises(ConfigurationError, match="SAGAZ_AUTHORIZE must be a function"):
        make_app(authorize=42)
    with pytest.raises(ConfigurationError, match="SAGAZ_SIGNATURE_TOLERANCE"):
        make_app(signature_tolerance="soon")


def test_an_async_hook_in_flask_refuses_and_logs(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    async def hook(request: Request) -> bool:
        return True

    client = make_app(authorize=hook).test_client()
    with caplog.at_level(logging.ERROR, logger="sagaz.web"):
        response = client.get("/webhooks/status/x")
    assert response.status_code == 403
    assert "asynchronous" in caplog.text


def test_timestamped_signatures_and_the_window(make_app: Callable[..., Flask]) -> None:
    client = make_app(signature_tolerance=60).test_client()
    body = order()
    # Two minutes past the window either way: a loaded machine may take seconds per request.
    now = int(time.time())

    def post(headers: dict[str, str]) -> Any:
        return client.post("/webhooks/order_signed", data=body, content_type=JSON, headers=headers)

    stale = {
        TIMESTAMP_HEADER: str(now - 180),
        SIGNATURE_HEADER: sign_body(body, SIGNING_SECRET, now - 180),
    }
    assert post(stale).get_json()["error"] == "stale_timestamp"
    future = {
        TIMESTAMP_HEADER: str(now + 180),
        SIGNATURE_HEADER: sign_body(body, SIGNING_SECRET, now + 180),
    }
    assert post(future).get_json()["error"] == "future_timestamp"
    legacy = {SIGNATURE_HEADER: sign_body(body, SIGNING_SECRET)}
    assert post(legacy).get_json()["error"] == "missing_timestamp"
    assert post(signature_headers(body, SIGNING_SECRET)).status_code == 202

    legacy_ok = make_app(legacy_signatures=True).test_client()
    response = legacy_ok.post(
        "/webhooks/order_signed", data=order(), content_type=JSON, headers=legacy
    )
    assert response.get_json()["error"] == "invalid_signature"  # signed another body
    body = order()
    legacy = {SIGNATURE_HEADER: sign_body(body, SIGNING_SECRET)}
    response = legacy_ok.post(
        "/webhooks/order_signed", data=body, content_type=JSON, headers=legacy
    )
    assert response.status_code == 202


def test_settings_repr_hides_secrets(app: Flask) -> None:
    assert SIGNING_SECRET not in repr(sagaz_of(app).state(app).settings)


def test_the_context_is_hidden_by_default() -> None:
    from sagaz.integrations.flask import SagaFlask

    app = Flask("hidden")
    sagaz = SagaFlask(app, storage_url="memory://")  # SAGAZ_EXPOSE_CONTEXT not set
    sagaz.register_webhook_blueprint("/webhooks")
    client = app.test_client()
    accepted = client.post("/webhooks/order_created", data=order(), content_type=JSON)
    saga_id = accepted.get_json()["saga_ids"][0]
    state = wait_for(
        lambda: (
            (s := client.get(f"/webhooks/status/{saga_id}").get_json())["state"]
            in {"COMPLETED", "COMPENSATED", "FAILED"}
            and s
        )
    )
    assert state.get("context") is None
    assert "amount" not in json.dumps(state)
    sagaz.close(app)


@pytest.mark.parametrize(
    "hostile", ["abc\r\nSet-Cookie: x=1", "a" * 129, "with space", "<b>", "x\x00y", "é"]
)
def test_invalid_correlation_ids_never_reach_headers_or_logs(
    client: Any, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = client.post(
        "/webhooks/order_created",
        data=b"{oops",
        content_type=JSON,
        environ_overrides={"HTTP_X_CORRELATION_ID": hostile},
    )
    assert response.status_code == 400
    echoed = response.headers["X-Correlation-ID"]
    uuid.UUID(echoed)
    assert response.get_json()["correlation_id"] == echoed
    assert hostile not in response.get_data(as_text=True)
    for record in caplog.records:
        assert hostile not in record.getMessage()
