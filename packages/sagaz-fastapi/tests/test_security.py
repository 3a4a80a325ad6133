"""Security of the webhook router: timestamped signatures, the authorisation hook,
hidden context, and correlation ids that never reach headers or logs unvalidated."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sagaz_fastapi_support import terminal_state
from sagaz_fastapi_testapp import SECRET, SIGNED_SOURCE, SOURCE, create_app

from sagaz.core import SagaConfig
from sagaz.core.web import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSettings, sign_body

JSON = {"Content-Type": "application/json"}
TOKEN = "Bearer let-me-in"


def bearer_only(request: Request) -> bool:
    return request.headers.get("Authorization") == TOKEN


async def async_bearer_only(request: Request) -> bool:
    return bearer_only(request)


def make_client(**settings: Any) -> Iterator[TestClient]:
    settings.setdefault("secrets", {SIGNED_SOURCE: SECRET})
    with TestClient(create_app(SagaConfig(), settings=WebhookSettings(**settings))) as client:
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    yield from make_client()


def order() -> bytes:
    return json.dumps({"order_id": f"sec-{uuid.uuid4().hex[:8]}", "amount": 3}).encode()


@pytest.mark.parametrize("hook", [bearer_only, async_bearer_only])
def test_the_authorize_hook_guards_webhook_status_and_diagram(hook: Any) -> None:
    for client in make_client(authorize=hook):
        allowed = {"Authorization": TOKEN}
        refused = client.post(f"/webhooks/{SOURCE}", content=order(), headers=JSON)
        assert refused.status_code == 403
        assert refused.json()["error"] == "forbidden"
        assert refused.json()["correlation_id"] == refused.headers["X-Correlation-ID"]
        accepted = client.post(f"/webhooks/{SOURCE}", content=order(), headers={**JSON, **allowed})
        assert accepted.status_code == 202, accepted.text
        saga_id = accepted.json()["saga_ids"][0]
        cid = accepted.json()["correlation_id"]
        for path in (
            f"/webhooks/status/{saga_id}",
            f"/webhooks/status/{saga_id}/diagram",
            f"/webhooks/{SOURCE}/status/{cid}",
        ):
            assert client.get(path).status_code == 403, path
            assert client.get(path, headers=allowed).status_code == 200, path
        assert client.get("/webhooks/health").status_code == 200  # not guarded


def test_a_failing_hook_refuses_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> bool:
        raise RuntimeError("identity provider down")

    for client in make_client(authorize=broken):
        with caplog.at_level(logging.ERROR, logger="sagaz.web"):
            response = client.get("/webhooks/status/whatever")
        assert response.status_code == 403
        assert "see its log" in response.json()["detail"]
        assert "identity provider down" in caplog.text


def test_timestamped_signatures_and_the_replay_window(client: TestClient) -> None:
    body = order()
    # Two minutes past the window either way: a loaded machine may take seconds per request.
    now = int(time.time())
    url = f"/webhooks/{SIGNED_SOURCE}"

    def post(ts: int | str | None, secret: str = SECRET) -> Any:
        headers = {**JSON, SIGNATURE_HEADER: sign_body(body, secret, ts)}
        if ts is not None:
            headers[TIMESTAMP_HEADER] = str(ts)
        return client.post(url, content=body, headers=headers)

    for ts, code in (
        (None, "missing_timestamp"),
        (now - 420, "stale_timestamp"),
        (now + 420, "future_timestamp"),
        ("soon", "invalid_timestamp"),
    ):
        response = post(ts)
        assert response.status_code == 401
        assert response.json()["error"] == code
        assert TIMESTAMP_HEADER in response.json()["detail"]
    assert post(now, "wrong").json()["error"] == "invalid_signature"
    accepted = post(now)
    assert accepted.status_code == 202
    # The same signed request again is a duplicate of the same saga, never a second one.
    again = post(now)
    assert again.json()["saga_ids"] == accepted.json()["saga_ids"]


def test_legacy_signatures_when_enabled() -> None:
    for client in make_client(legacy_signatures=True):
        body = order()
        headers = {**JSON, SIGNATURE_HEADER: sign_body(body, SECRET)}
        response = client.post(f"/webhooks/{SIGNED_SOURCE}", content=body, headers=headers)
        assert response.status_code == 202


def test_a_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAZ_WEBHOOK_SECRET_" + SOURCE.upper().replace("-", "_"), "env-secret")
    for client in make_client():
        body = order()
        assert client.post(f"/webhooks/{SOURCE}", content=body, headers=JSON).status_code == 401
        ts = int(time.time())
        headers = {
            **JSON,
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign_body(body, "env-secret", ts),
        }
        assert client.post(f"/webhooks/{SOURCE}", content=body, headers=headers).status_code == 202


def test_the_context_is_hidden_by_default(client: TestClient) -> None:
    response = client.post(f"/webhooks/{SOURCE}", content=order(), headers=JSON)
    saga_id = response.json()["saga_ids"][0]
    terminal_state(client, saga_id)
    state = client.get(f"/webhooks/status/{saga_id}").json()
    assert "context" not in state or state["context"] is None
    assert "amount" not in json.dumps(state)


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\r\nSet-Cookie: x=1",
        "a" * 129,
        "id with spaces",
        "<script>",
        "../../etc/passwd",
        "ok\x00",
        "é",
    ],
)
def test_invalid_correlation_ids_never_reach_headers_or_logs(
    client: TestClient, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = [(b"content-type", b"application/json"), (b"x-correlation-id", hostile.encode())]
    response = client.post(f"/webhooks/{SOURCE}", content=b"{oops", headers=headers)
    assert response.status_code == 400
    echoed = response.headers["X-Correlation-ID"]
    assert echoed != hostile
    uuid.UUID(echoed)  # a fresh UUID4 replaced it
    assert response.json()["correlation_id"] == echoed
    assert hostile not in response.text
    for record in caplog.records:
        assert hostile not in record.getMessage()
        assert getattr(record, "correlation_id", None) != hostile
