"""Webhook security in the core: timestamped signatures, secrets, authorisation hooks."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest

from sagaz.core import Saga, SagaConfig, action, trigger
from sagaz.core.runner import get_runner
from sagaz.core.signatures import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    lookup_secret,
    secret_env_var,
    sign_body,
    signature_headers,
    verify_signature,
)
from sagaz.core.web import (
    WebhookService,
    WebhookSettings,
    check_authorization,
    check_authorization_async,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

SECRET = "whsec-" + "k" * 24


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def signed_source() -> str:
    source = unique("sec")

    class SignedSaga(Saga):
        saga_name = unique("sec-saga")

        @trigger(source=source, idempotency_key="order_id")
        def on_event(self, payload: dict[str, Any]) -> dict[str, Any]:
            return {"order_id": payload["order_id"]}

        @action("noop")
        async def noop(self, ctx: dict[str, Any]) -> None:
            return None

    return source


async def post(service: WebhookService, source: str, body: bytes, **headers: Any) -> Any:
    return await service.handle_webhook(
        source,
        body,
        content_type="application/json",
        correlation_id=unique("cid"),
        signature=headers.get("signature"),
        timestamp=headers.get("timestamp"),
    )


BODY = json.dumps({"order_id": "A-1"}).encode()


def test_sign_body_covers_the_timestamp_and_the_body() -> None:
    with_ts = sign_body(BODY, SECRET, 1700000000)
    assert with_ts.startswith("sha256=")
    assert len(with_ts) == 7 + 64
    assert with_ts != sign_body(BODY, SECRET, 1700000001)
    assert with_ts != sign_body(BODY, SECRET)  # the legacy scheme signs the body alone
    headers = signature_headers(BODY, SECRET, timestamp=1700000000)
    assert headers == {TIMESTAMP_HEADER: "1700000000", SIGNATURE_HEADER: with_ts}
    assert abs(int(signature_headers(BODY, SECRET)[TIMESTAMP_HEADER]) - time.time()) < 5


@pytest.mark.parametrize(
    ("signature", "timestamp", "code"),
    [
        (None, "1700000000", "missing_signature"),
        ("  ", "1700000000", "missing_signature"),
        ("sha256=00", None, "missing_timestamp"),
        ("sha256=00", "", "missing_timestamp"),
        ("sha256=00", "-5", "invalid_timestamp"),
        ("sha256=00", "1.7e9", "invalid_timestamp"),
        ("sha256=00", "9" * 13, "invalid_timestamp"),
        ("sha256=00", str(1700000000 - 301), "stale_timestamp"),
        ("sha256=00", str(1700000000 + 301), "future_timestamp"),
        ("sha256=00", "1700000000", "invalid_signature"),
        ("sha256=é\u2028\x00", "1700000000", "invalid_signature"),  # not ASCII: no TypeError
    ],
)
def test_verify_signature_names_each_problem(
    signature: str | None, timestamp: str | None, code: str
) -> None:
    problem = verify_signature(BODY, SECRET, signature=signature, timestamp=timestamp, now=1.7e9)
    assert problem is not None
    assert problem.code == code
    assert TIMESTAMP_HEADER in problem.detail or SIGNATURE_HEADER in problem.detail
    assert SECRET not in problem.detail


def test_verify_signature_accepts_inside_the_window_only() -> None:
    now = 1_700_000_000.0
    for offset in (-300, 0, 300):
        ts = str(int(now) + offset)
        good = sign_body(BODY, SECRET, ts)
        assert verify_signature(BODY, SECRET, signature=good, timestamp=ts, now=now) is None
    ts = str(int(now) - 60)
    good = sign_body(BODY, SECRET, ts)
    problem = verify_signature(BODY, SECRET, signature=good, timestamp=ts, tolerance=30, now=now)
    assert problem is not None
    assert problem.code == "stale_timestamp"
    # A signature made for another timestamp does not transfer (no replay with a new stamp).
    fresh = str(int(now))
    problem = verify_signature(BODY, SECRET, signature=good, timestamp=fresh, now=now)
    assert problem is not None
    assert problem.code == "invalid_signature"


def test_legacy_body_only_signatures_need_opting_in() -> None:
    legacy = sign_body(BODY, SECRET)
    problem = verify_signature(BODY, SECRET, signature=legacy, timestamp=None)
    assert problem is not None
    assert problem.code == "missing_timestamp"
    assert verify_signature(BODY, SECRET, signature=legacy, timestamp=None, legacy=True) is None
    wrong = verify_signature(BODY, "other", signature=legacy, timestamp=None, legacy=True)
    assert wrong is not None
    assert wrong.code == "invalid_signature"


def test_secrets_come_from_settings_then_the_environment() -> None:
    assert secret_env_var("stripe.events-v2:eu") == "SAGAZ_WEBHOOK_SECRET_STRIPE_EVENTS_V2_EU"
    env = {"SAGAZ_WEBHOOK_SECRET_PAYMENTS": "from-env", "SAGAZ_WEBHOOK_SECRET_EMPTY": ""}
    assert lookup_secret("payments", {}, env) == "from-env"
    assert lookup_secret("payments", {"payments": "from-settings"}, env) == "from-settings"
    assert lookup_secret("payments", {}, env, from_env=False) is None
    assert lookup_secret("empty", {}, env) is None
    assert lookup_secret("other", {}, env) is None


def test_settings_repr_hides_secrets_and_validates() -> None:
    settings = WebhookSettings(secrets={"payments": SECRET})
    assert SECRET not in repr(settings)
    with pytest.raises(ValueError, match="signature_tolerance"):
        WebhookSettings(signature_tolerance=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        WebhookSettings(max_body_bytes=-1)
    with pytest.raises(TypeError, match="authorize"):
        WebhookSettings(authorize="not callable")  # type: ignore[arg-type]


async def test_the_service_refuses_each_bad_signature_and_stores_nothing(
    isolated_config: SagaConfig,
) -> None:
    source = signed_source()
    service = WebhookService(isolated_config, WebhookSettings(secrets={source: SECRET}))
    now = int(time.time())
    cases = {
        "missing_signature": {"timestamp": str(now)},
        "missing_timestamp": {"signature": sign_body(BODY, SECRET)},
        "invalid_timestamp": {"signature": sign_body(BODY, SECRET, "x"), "timestamp": "x"},
        "stale_timestamp": {
            "signature": sign_body(BODY, SECRET, now - 3600),
            "timestamp": str(now - 3600),
        },
        "future_timestamp": {
            "signature": sign_body(BODY, SECRET, now + 3600),
            "timestamp": str(now + 3600),
        },
        "invalid_signature": {"signature": sign_body(BODY, "guess", now), "timestamp": str(now)},
    }
    for code, headers in cases.items():
        refused = await post(service, source, BODY, **headers)
        assert refused.status == 401, code
        assert refused.body["error"] == code
        assert source in refused.body["detail"]
    assert await isolated_config.storage.list_sagas() == []

    ok = signature_headers(BODY, SECRET)
    accepted = await post(
        service, source, BODY, signature=ok[SIGNATURE_HEADER], timestamp=ok[TIMESTAMP_HEADER]
    )
    assert accepted.status == 202
    await get_runner().drain()
    assert len(await isolated_config.storage.list_sagas()) == 1


async def test_a_secret_from_the_environment_protects_its_source(
    isolated_config: SagaConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = signed_source()
    monkeypatch.setenv(secret_env_var(source), SECRET)
    service = WebhookService(isolated_config)
    refused = await post(service, source, BODY)
    assert (refused.status, refused.body["error"]) == (401, "missing_signature")
    ok = signature_headers(BODY, SECRET)
    accepted = await post(
        service, source, BODY, signature=ok[SIGNATURE_HEADER], timestamp=ok[TIMESTAMP_HEADER]
    )
    assert accepted.status == 202
    no_env = WebhookService(isolated_config, WebhookSettings(secrets_from_env=False))
    body = json.dumps({"order_id": "A-2"}).encode()
    assert (await post(no_env, source, body)).status == 202
    await get_runner().drain()


async def test_secrets_and_signatures_never_reach_the_log(
    isolated_config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    source = signed_source()
    service = WebhookService(isolated_config, WebhookSettings(secrets={source: SECRET}))
    caplog.set_level(logging.DEBUG)
    now = int(time.time())
    good = sign_body(BODY, SECRET, now)
    sent = [
        {"signature": sign_body(BODY, "guess", now), "timestamp": str(now)},
        {"signature": good, "timestamp": str(now - 3600)},
        {"signature": good, "timestamp": str(now)},
    ]
    statuses = [(await post(service, source, BODY, **headers)).status for headers in sent]
    await get_runner().drain()
    assert statuses == [401, 401, 202]
    assert any("invalid_signature" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert SECRET not in text
    for headers in sent:
        assert headers["signature"] not in text
        assert headers["signature"].removeprefix("sha256=") not in text


async def test_source_status_does_not_echo_unsafe_names(isolated_config: SagaConfig) -> None:
    service = WebhookService(isolated_config)
    bad_source = await service.source_status("../etc\r\nX-Injected: 1", "cid-1")
    assert bad_source.status == 404
    assert "X-Injected" not in json.dumps(bad_source.body)
    bad_id = await service.source_status("orders", "' OR 1=1 --\n")
    assert bad_id.status == 404
    assert "(invalid id)" in bad_id.body["detail"]
    assert bad_id.body["correlation_id"] is None


class Req:
    """A stand-in for a framework request: the hooks only look at its headers."""

    def __init__(self, token: str | None) -> None:
        self.headers = {"Authorization": token} if token else {}


def bearer_hook(request: Req) -> bool:
    return request.headers.get("Authorization") == "Bearer ok"


def test_check_authorization_allows_and_refuses(caplog: pytest.LogCaptureFixture) -> None:
    assert check_authorization(None, Req(None)) is None
    assert check_authorization(bearer_hook, Req("Bearer ok"), "c1") is None
    refused = check_authorization(bearer_hook, Req("Bearer no"), "c1")
    assert refused is not None
    assert (refused.status, refused.body["error"]) == (403, "forbidden")
    assert refused.body["correlation_id"] == "c1"

    def explains(request: Req) -> bool:
        raise PermissionError("token expired; get a new one")

    refused = check_authorization(explains, Req(None))
    assert refused is not None
    assert refused.body["detail"] == "token expired; get a new one"

    def broken(request: Req) -> bool:
        raise KeyError("oops")

    def vague(request: Req) -> Any:
        return "yes"

    async def asynchronous(request: Req) -> bool:
        return True

    with caplog.at_level(logging.ERROR, logger="sagaz.web"):
        for hook in (broken, vague, asynchronous):
            refused = check_authorization(hook, Req("Bearer ok"))
            assert refused is not None, hook
            assert refused.status == 403
            assert "see its log" in refused.body["detail"]
    assert len(caplog.records) == 3


async def test_check_authorization_async_awaits_the_hook() -> None:
    async def allow(request: Req) -> bool:
        return bearer_hook(request)

    assert await check_authorization_async(allow, Req("Bearer ok")) is None
    assert await check_authorization_async(bearer_hook, Req("Bearer ok")) is None
    refused = await check_authorization_async(allow, Req(None))
    assert refused is not None
    assert refused.status == 403

    async def broken(request: Req) -> bool:
        raise RuntimeError("down")

    async def explains(request: Req) -> bool:
        raise PermissionError("no")

    assert (await check_authorization_async(broken, Req(None))).status == 403  # type: ignore[union-attr]
    assert (await check_authorization_async(explains, Req(None))).body["detail"] == "no"  # type: ignore[union-attr]
    assert await check_authorization_async(None, Req(None)) is None
