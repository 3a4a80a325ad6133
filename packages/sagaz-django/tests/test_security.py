"""Security of the Django views: the authorisation hook (sync and async views),
timestamped signatures, the settings that drive them, validated correlation ids."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest
from django.test import AsyncClient, Client, override_settings
from sagaz_django_helpers import with_webhooks
from sagaz_django_testproject.hooks import TOKEN

from sagaz.core.runner import get_runner
from sagaz.core.web import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_body, signature_headers
from sagaz.integrations.django import checks
from sagaz.integrations.django.conf import get_settings

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"
ALLOWED = {"Authorization": TOKEN}
GUARDED = with_webhooks(AUTHORIZE="sagaz_django_testproject.hooks.bearer_only")


def order() -> str:
    return json.dumps({"order_id": str(uuid.uuid4()), "amount": 5})


@override_settings(SAGAZ=GUARDED)
def test_the_hook_guards_the_sync_views(client: Client) -> None:
    refused = client.post("/sagaz/order_created", data=order(), content_type=JSON)
    assert refused.status_code == 403
    assert refused.json()["error"] == "forbidden"
    assert refused.json()["correlation_id"] == refused["X-Correlation-ID"]
    accepted = client.post("/sagaz/order_created", data=order(), content_type=JSON, headers=ALLOWED)
    assert accepted.status_code == 202
    saga_id = accepted.json()["saga_ids"][0]
    cid = accepted.json()["correlation_id"]
    for path in (
        f"/sagaz/status/{saga_id}",
        f"/sagaz/status/{saga_id}/diagram",
        f"/sagaz/order_created/status/{cid}",
    ):
        assert client.get(path).status_code == 403, path
        assert client.get(path, headers=ALLOWED).status_code == 200, path
    assert client.get("/sagaz/health").status_code == 200
    # The method check still comes first.
    assert client.get("/sagaz/order_created").status_code == 405


@pytest.mark.parametrize("hook", ["bearer_only", "async_bearer_only"])
async def test_the_hook_guards_the_async_views(async_client: AsyncClient, hook: str) -> None:
    with override_settings(SAGAZ=with_webhooks(AUTHORIZE=f"sagaz_django_testproject.hooks.{hook}")):
        refused = await async_client.post("/sagaz/order_created", data=order(), content_type=JSON)
        assert refused.status_code == 403
        accepted = await async_client.post(
            "/sagaz/order_created", data=order(), content_type=JSON, headers=ALLOWED
        )
        assert accepted.status_code == 202
        saga_id = accepted.json()["saga_ids"][0]
        await get_runner().drain()
        assert (await async_client.get(f"/sagaz/status/{saga_id}")).status_code == 403
        ok = await async_client.get(f"/sagaz/status/{saga_id}/diagram", headers=ALLOWED)
        assert ok.status_code == 200


async def test_async_views_check_timestamped_signatures(async_client: AsyncClient) -> None:
    body = order().encode()
    now = int(time.time())
    stale = {
        TIMESTAMP_HEADER: str(now - 900),
        SIGNATURE_HEADER: sign_body(body, "s3cret", now - 900),
    }
    response = await async_client.post(
        "/sagaz/signed_order", data=body, content_type=JSON, headers=stale
    )
    assert response.status_code == 401
    assert response.json()["error"] == "stale_timestamp"
    good = await async_client.post(
        "/sagaz/signed_order",
        data=body,
        content_type=JSON,
        headers=signature_headers(body, "s3cret"),
    )
    assert good.status_code == 202
    await get_runner().drain()


def test_security_settings_are_validated() -> None:
    bad = with_webhooks(
        AUTHORIZE="no_such_module_xyz.hook", SIGNATURE_TOLERANCE=0, LEGACY_SIGNATURES="yes"
    )
    with override_settings(SAGAZ=bad):
        found = {m.obj: m.msg for m in checks.check_settings()}
    assert "cannot be imported" in found["SAGAZ['WEBHOOKS']['AUTHORIZE']"]
    assert "> 0" in found["SAGAZ['WEBHOOKS']['SIGNATURE_TOLERANCE']"]
    assert "True or False" in found["SAGAZ['WEBHOOKS']['LEGACY_SIGNATURES']"]
    with override_settings(SAGAZ={"WEBHOOKS": {"AUTHORIZE": 42}}):
        found = {m.obj: m.msg for m in checks.check_settings()}
    assert "must be a function" in found["SAGAZ['WEBHOOKS']['AUTHORIZE']"]
    with override_settings(SAGAZ=with_webhooks(SIGNATURE_TOLERANCE=60, LEGACY_SIGNATURES=True)):
        values = get_settings()
        assert values.signature_tolerance == 60.0
        assert values.legacy_signatures is True
        assert "s3cret" not in repr(values)
        assert values.webhook_settings().legacy_signatures is True


@override_settings(SAGAZ=with_webhooks(LEGACY_SIGNATURES=True))
def test_legacy_signatures_when_enabled(client: Client) -> None:
    body = order().encode()
    response = client.post(
        "/sagaz/signed_order",
        data=body,
        content_type=JSON,
        headers={SIGNATURE_HEADER: sign_body(body, "s3cret")},
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    "hostile", ["abc\r\nSet-Cookie: x=1", "a" * 129, "with space", "<b>", "x\x00y", "é"]
)
def test_invalid_correlation_ids_never_reach_headers_or_logs(
    client: Client, hostile: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = client.post(
        "/sagaz/order_created", data="{oops", content_type=JSON, HTTP_X_CORRELATION_ID=hostile
    )
    assert response.status_code == 400
    echoed = response["X-Correlation-ID"]
    uuid.UUID(echoed)
    assert response.json()["correlation_id"] == echoed
    assert hostile not in response.content.decode()
    for record in caplog.records:
        assert hostile not in record.getMessage()
