"""@trigger and fire_event: recording events, starting sagas, idempotency, errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    ContextNotSerializableError,
    Saga,
    SagaConfig,
    SagaContextManager,
    SagaStatus,
    SagaStorage,
    TriggerPayloadError,
    UnknownSourceError,
    action,
    compensate,
    fire_event,
    get_runner,
    resume_saga,
    storage_from_url,
    trigger,
)
from sagaz.core.records import NewSaga
from sagaz.core.web import WebhookService, WebhookSettings, error_response, sign_body

pytestmark = pytest.mark.usefixtures("isolated_config")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def order_saga(source: str, calls: list[str], *, key: str | None = "order_id") -> type[Saga]:
    """A two-step saga started by ``source``; its trigger skips payloads with skip=True."""

    class OrderSaga(Saga):
        saga_name = unique("trg-order")

        @trigger(source=source, idempotency_key=key)
        def on_order(self, payload: dict[str, Any]) -> dict[str, Any] | None:
            if payload.get("skip"):
                return None
            return {"order_id": payload["order_id"], "amount": payload.get("amount", 0)}

        @action("reserve")
        async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
            calls.append(f"reserve {ctx['order_id']}")
            return {"reservation": f"R-{ctx['order_id']}"}

        @compensate("reserve")
        async def release(self, ctx: dict[str, Any]) -> None:
            calls.append(f"release {ctx['order_id']}")

        @action("charge")
        def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
            calls.append(f"charge {ctx['order_id']}")
            if ctx["amount"] > 100:
                raise ValueError("declined")
            return {"payment": f"P-{ctx['order_id']}"}

    return OrderSaga


async def test_fire_event_records_the_event_and_runs_the_saga(any_storage: SagaStorage) -> None:
    source = unique("order-created")
    calls: list[str] = []
    saga_class = order_saga(source, calls)
    config = fast_config(any_storage)

    fired = await fire_event(
        source, {"order_id": "A1", "amount": 10}, config=config, wait=True, correlation_id="cid-1"
    )

    assert fired.source == source
    assert fired.correlation_id == "cid-1"
    assert len(fired.saga_ids) == 1
    assert fired.created == [True]
    assert not fired.duplicate
    assert calls == ["reserve A1", "charge A1"]
    record = await any_storage.load(fired.saga_ids[0])
    assert record is not None
    assert record.saga_name == saga_class.saga_name_of()
    assert record.status is SagaStatus.COMPLETED
    assert record.correlation_id == "cid-1"
    assert record.idempotency_key == f"{source}:A1"
    assert record.context == {
        "order_id": "A1",
        "amount": 10,
        "reservation": "R-A1",
        "payment": "P-A1",
    }
    events = await any_storage.find_trigger_events("cid-1")
    assert len(events) == 1
    event = events[0]
    assert event.event_id == fired.event_id
    assert event.source == source
    assert dict(event.payload) == {"order_id": "A1", "amount": 10}
    assert event.saga_ids == fired.saga_ids
    assert event.correlation_id == "cid-1"
    assert await any_storage.find_trigger_events("cid-1", source="other") == []
    assert [e.event_id for e in await any_storage.find_trigger_events("cid-1", source=source)] == [
        fired.event_id
    ]


async def test_fired_sagas_run_in_the_background_until_drained(
    sqlite_config: SagaConfig,
) -> None:
    source = unique("order-bg")
    calls: list[str] = []
    order_saga(source, calls)

    ok = await fire_event(source, {"order_id": "B1", "amount": 5}, config=sqlite_config)
    declined = await fire_event(source, {"order_id": "B2", "amount": 500}, config=sqlite_config)
    # Recorded before fire_event returned, so visible at once (as PENDING or later).
    for fired in (ok, declined):
        assert await sqlite_config.storage.load(fired.saga_ids[0]) is not None
    await get_runner().drain()

    assert len(get_runner()) == 0
    done = await sqlite_config.storage.load(ok.saga_ids[0])
    failed = await sqlite_config.storage.load(declined.saga_ids[0])
    assert done is not None
    assert done.status is SagaStatus.COMPLETED
    assert failed is not None
    assert failed.status is SagaStatus.COMPENSATED
    assert failed.failed_step == "charge"
    assert failed.error == "ValueError: declined"
    assert sorted(calls) == sorted(
        ["reserve B1", "charge B1", "reserve B2", "charge B2", "release B2"]
    )


async def test_fire_event_uses_the_global_config_by_default(isolated_config: SagaConfig) -> None:
    source = unique("order-global")
    calls: list[str] = []
    order_saga(source, calls)
    fired = await fire_event(source, {"order_id": "G1"}, wait=True)
    record = await isolated_config.storage.load(fired.saga_ids[0])
    assert record is not None
    assert record.status is SagaStatus.COMPLETED


async def test_a_trigger_returning_none_starts_nothing(config: SagaConfig) -> None:
    source = unique("order-skip")
    calls: list[str] = []
    order_saga(source, calls)

    fired = await fire_event(
        source, {"order_id": "S1", "skip": True}, config=config, wait=True, correlation_id="cid-s"
    )

    assert fired.saga_ids == []
    assert fired.created == []
    assert not fired.duplicate
    assert calls == []
    assert await config.storage.list_sagas() == []
    events = await config.storage.find_trigger_events("cid-s")
    assert [e.saga_ids for e in events] == [[]]


@pytest.mark.parametrize(
    "payload",
    [{"amount": 1}, {"order_id": None}, {"order_id": ""}],
    ids=["absent", "none", "empty"],
)
async def test_a_payload_missing_the_idempotency_field_raises_and_records_nothing(
    any_storage: SagaStorage, payload: dict[str, Any]
) -> None:
    source = unique("order-missing")
    calls: list[str] = []
    order_saga(source, calls)
    config = fast_config(any_storage)

    with pytest.raises(TriggerPayloadError, match="'order_id'") as info:
        await fire_event(source, payload, config=config, correlation_id="cid-missing")

    assert info.value.field == "order_id"
    assert source in str(info.value)
    assert calls == []
    await any_storage.ensure_open()
    assert await any_storage.list_sagas() == []
    assert await any_storage.find_trigger_events("cid-missing") == []


async def test_an_idempotency_value_must_be_a_string_or_integer(config: SagaConfig) -> None:
    source = unique("order-type")
    order_saga(source, [])
    with pytest.raises(TriggerPayloadError, match="must be a string or an integer") as info:
        await fire_event(source, {"order_id": True}, config=config)
    assert info.value.field == "order_id"
    fired = await fire_event(source, {"order_id": 7}, config=config, wait=True)
    record = await config.storage.load(fired.saga_ids[0])
    assert record is not None
    assert record.idempotency_key == f"{source}:7"


async def test_a_duplicate_event_returns_the_same_sagas(any_storage: SagaStorage) -> None:
    source = unique("order-dup")
    calls: list[str] = []
    order_saga(source, calls)
    config = fast_config(any_storage)

    first = await fire_event(
        source, {"order_id": "D1"}, config=config, wait=True, correlation_id="cid-d1"
    )
    second = await fire_event(
        source, {"order_id": "D1", "amount": 3}, config=config, wait=True, correlation_id="cid-d2"
    )

    assert second.saga_ids == first.saga_ids
    assert first.created == [True]
    assert second.created == [False]
    assert second.duplicate
    assert not first.duplicate
    assert second.event_id != first.event_id
    assert calls == ["reserve D1", "charge D1"]  # nothing ran twice
    records = await any_storage.list_sagas()
    assert [r.saga_id for r in records] == first.saga_ids
    # The duplicate event is recorded too, pointing at the first saga.
    dup_events = await any_storage.find_trigger_events("cid-d2")
    assert [e.saga_ids for e in dup_events] == [first.saga_ids]


async def test_concurrent_duplicate_events_start_one_saga(any_storage: SagaStorage) -> None:
    source = unique("order-race")
    calls: list[str] = []
    order_saga(source, calls)
    config = fast_config(any_storage)

    results = await asyncio.gather(
        *(fire_event(source, {"order_id": "R1"}, config=config, wait=True) for _ in range(20))
    )
    assert len({r.saga_ids[0] for r in results}) == 1
    assert sum(r.created[0] for r in results) == 1
    assert calls == ["reserve R1", "charge R1"]
    assert len(await any_storage.list_sagas()) == 1


async def test_an_unknown_source_raises(config: SagaConfig) -> None:
    known = unique("order-known")
    order_saga(known, [])
    with pytest.raises(
        UnknownSourceError, match="no saga is triggered by source 'nobody-here'"
    ) as info:
        await fire_event("nobody-here", {"order_id": "X"}, config=config)
    assert info.value.source == "nobody-here"
    assert known in str(info.value)
    assert await config.storage.list_sagas() == []


async def test_async_trigger_methods_and_several_sagas_per_source(config: SagaConfig) -> None:
    source = unique("user-signed-up")
    calls: list[str] = []

    class WelcomeSaga(Saga):
        saga_name = unique("trg-welcome")

        @trigger(source=source)
        async def on_signup(self, payload: dict[str, Any]) -> dict[str, Any]:
            await asyncio.sleep(0)
            return {"email": payload["email"].lower()}

        @action("send_mail")
        async def send_mail(self, ctx: dict[str, Any]) -> dict[str, Any]:
            calls.append(f"mail {ctx['email']}")
            return {"sent": True}

    class CrmSaga(Saga):
        saga_name = unique("trg-crm")

        @trigger(source=source, idempotency_key="email")
        def on_signup(self, payload: dict[str, Any]) -> dict[str, Any]:
            return {"contact": payload["email"]}

        @action("create_contact")
        def create_contact(self, ctx: dict[str, Any]) -> None:
            calls.append(f"crm {ctx['contact']}")

    fired = await fire_event(source, {"email": "Ann@Example.com"}, config=config, wait=True)

    assert len(fired.saga_ids) == 2
    assert fired.created == [True, True]
    assert sorted(calls) == ["crm Ann@Example.com", "mail ann@example.com"]
    names = set()
    for saga_id in fired.saga_ids:
        record = await config.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.COMPLETED
        names.add(record.saga_name)
    assert names == {WelcomeSaga.saga_name_of(), CrmSaga.saga_name_of()}


async def test_run_false_records_pending_sagas_for_later(config: SagaConfig) -> None:
    source = unique("order-later")
    calls: list[str] = []
    order_saga(source, calls)

    fired = await fire_event(source, {"order_id": "L1"}, config=config, run=False)
    await get_runner().drain()
    record = await config.storage.load(fired.saga_ids[0])
    assert record is not None
    assert record.status is SagaStatus.PENDING
    assert calls == []

    result = await resume_saga(fired.saga_ids[0], config)
    assert result.status is SagaStatus.COMPLETED
    assert calls == ["reserve L1", "charge L1"]


async def test_fire_event_in_a_scope_uses_its_correlation_id(config: SagaConfig) -> None:
    source = unique("order-scope")
    order_saga(source, [])
    with SagaContextManager.scope(correlation_id="req-77"):
        fired = await fire_event(source, {"order_id": "C1"}, config=config, wait=True)
    assert fired.correlation_id == "req-77"
    record = await config.storage.load(fired.saga_ids[0])
    assert record is not None
    assert record.correlation_id == "req-77"
    # Outside any scope a correlation id is generated.
    other = await fire_event(source, {"order_id": "C2"}, config=config, wait=True)
    uuid.UUID(other.correlation_id)


async def test_payload_checks(sqlite_config: SagaConfig, config: SagaConfig) -> None:
    source = unique("order-payload")
    order_saga(source, [], key=None)
    with pytest.raises(TriggerPayloadError, match="must be a JSON object"):
        await fire_event(source, ["order_id", "X"], config=config)  # type: ignore[arg-type]
    # Durable storage: the payload is recorded as JSON, so it must be JSON.
    with pytest.raises(TriggerPayloadError, match="'when'") as info:
        await fire_event(
            source, {"order_id": "X", "when": dt.datetime(2030, 1, 1)}, config=sqlite_config
        )
    assert info.value.field == "when"
    # In memory, anything goes.
    fired = await fire_event(
        source, {"order_id": "X", "when": dt.datetime(2030, 1, 1)}, config=config, wait=True
    )
    assert fired.created == [True]


async def test_trigger_results_are_checked(sqlite_config: SagaConfig) -> None:
    source = unique("order-result")

    class BadTriggerSaga(Saga):
        saga_name = unique("trg-bad")

        @trigger(source=source)
        def on_event(self, payload: dict[str, Any]) -> Any:
            if payload["kind"] == "list":
                return ["not", "a", "dict"]
            return {"at": dt.date(2030, 1, 1)}

        @action("a")
        async def a(self, ctx: dict[str, Any]) -> None: ...

    with pytest.raises(TypeError, match="return a dict"):
        await fire_event(source, {"kind": "list"}, config=sqlite_config)
    with pytest.raises(ContextNotSerializableError, match="'at'"):
        await fire_event(source, {"kind": "date"}, config=sqlite_config)
    await sqlite_config.storage.ensure_open()
    assert await sqlite_config.storage.list_sagas() == []


def test_trigger_needs_a_source() -> None:
    with pytest.raises(TypeError, match="non-empty source"):
        trigger(source="")


async def test_redefining_a_saga_replaces_its_triggers(config: SagaConfig) -> None:
    source = unique("order-redefined")
    name = unique("trg-redefined")
    calls: list[str] = []

    class FirstVersion(Saga):
        saga_name = name

        @trigger(source=source)
        def on_event(self, payload: dict[str, Any]) -> dict[str, Any]:
            return {"version": 1}

        @action("a")
        async def a(self, ctx: dict[str, Any]) -> None:
            calls.append(f"v{ctx['version']}")

    class SecondVersion(Saga):  # e.g. the module was reloaded
        saga_name = name

        @trigger(source=source)
        def on_event(self, payload: dict[str, Any]) -> dict[str, Any]:
            return {"version": 2}

        @action("a")
        async def a(self, ctx: dict[str, Any]) -> None:
            calls.append(f"v{ctx['version']}")

    fired = await fire_event(source, {}, config=config, wait=True)
    assert len(fired.saga_ids) == 1
    assert calls == ["v2"]


# -- the framework-neutral HTTP surface (sagaz.core.web) -----------------------------------


def web_saga(source: str, calls: list[str]) -> type[Saga]:
    class SignupSaga(Saga):
        saga_name = unique("trg-web")

        @trigger(source=source, idempotency_key="user_id")
        def on_signup(self, payload: dict[str, Any]) -> dict[str, Any] | None:
            if payload.get("ignore"):
                return None
            return {"user_id": payload["user_id"], "email": payload.get("email", "")}

        @action("create_account")
        async def create_account(self, ctx: dict[str, Any]) -> dict[str, Any]:
            calls.append(ctx["user_id"])
            if ctx["email"] == "bad@example.com":
                raise ValueError("rejected address")
            return {"account_email": ctx["email"]}

        @compensate("create_account")
        async def delete_account(self, ctx: dict[str, Any]) -> None:
            return None

    return SignupSaga


async def post(service: WebhookService, source: str, payload: Any, **kwargs: Any) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    kwargs.setdefault("content_type", "application/json")
    kwargs.setdefault("correlation_id", unique("cid"))
    return await service.handle_webhook(source, body, **kwargs)


async def test_webhook_accepts_an_event_and_reports_its_sagas(any_storage: SagaStorage) -> None:
    source = unique("signup")
    calls: list[str] = []
    web_saga(source, calls)
    service = WebhookService(fast_config(any_storage))

    accepted = await post(
        service, source, {"user_id": "u1", "email": "a@example.com"}, correlation_id="web-1"
    )
    await get_runner().drain()

    assert accepted.status == 202
    assert accepted.body["status"] == "accepted"
    assert accepted.body["source"] == source
    assert accepted.body["correlation_id"] == "web-1"
    assert accepted.body["message"] == "Event queued for processing"
    assert accepted.body["duplicate"] is False
    (saga_id,) = accepted.body["saga_ids"]
    assert calls == ["u1"]

    status = await service.source_status(source, "web-1")
    assert status.status == 200
    assert status.body["status"] == "completed"
    assert status.body["saga_ids"] == [saga_id]
    assert status.body["sagas"][0]["state"] == "COMPLETED"
    assert status.body["sagas"][0]["completed_steps"] == ["create_account"]

    one = await service.saga_status(saga_id)
    assert one.status == 200
    assert one.body["saga_id"] == saga_id
    assert one.body["state"] == "COMPLETED"
    assert "context" not in one.body
    assert "history" not in one.body

    diagram = await service.saga_diagram(saga_id)
    assert diagram.status == 200
    assert diagram.body["mermaid"].startswith("flowchart TD")
    assert "class " in diagram.body["mermaid"]
    assert " completed" in diagram.body["mermaid"]

    duplicate = await post(service, source, {"user_id": "u1"}, correlation_id="web-2")
    assert duplicate.status == 202
    assert duplicate.body["duplicate"] is True
    assert duplicate.body["saga_ids"] == [saga_id]
    assert duplicate.body["message"].startswith("Duplicate event")
    await get_runner().drain()
    assert calls == ["u1"]

    health = await service.health()
    assert health.status == 200
    assert health.body["status"] == "ok"


async def test_webhook_status_of_failed_ignored_and_unknown_events(config: SagaConfig) -> None:
    source = unique("signup-states")
    web_saga(source, [])
    service = WebhookService(config, WebhookSettings(expose_context=True))

    await post(service, source, {"user_id": "u2", "email": "bad@example.com"}, correlation_id="f")
    ignored = await post(service, source, {"user_id": "u3", "ignore": True}, correlation_id="i")
    await get_runner().drain()

    assert ignored.status == 202
    assert ignored.body["saga_ids"] == []
    assert ignored.body["message"] == "Event accepted; no saga was started for it"
    failed = await service.source_status(source, "f")
    assert failed.body["status"] == "compensated"
    assert failed.body["sagas"][0]["error"] == "ValueError: rejected address"
    assert failed.body["sagas"][0]["context"]["email"] == "bad@example.com"  # exposed
    assert (await service.source_status(source, "i")).body["status"] == "ignored"
    missing = await service.source_status(source, "never-seen")
    assert missing.status == 404
    assert missing.body["error"] == "not_found"
    assert (await service.saga_status("no-such-id")).status == 404
    bad_id = await service.saga_status("../../etc/passwd")
    assert bad_id.status == 404
    assert "(invalid id)" in bad_id.body["detail"]
    assert (await service.saga_diagram("no-such-id")).status == 404


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"user_id": ', "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_payload"),
        (b'{"email": "x@example.com"}', "application/json", 400, "missing_field"),
        (b'{"user_id": "u"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"user_id": "u"}', None, 415, "unsupported_media_type"),
        (b'{"user_id": "' + b"x" * 2000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
)
async def test_webhook_rejects_bad_requests(
    config: SagaConfig, body: bytes, content_type: str | None, status: int, code: str
) -> None:
    source = unique("signup-bad")
    web_saga(source, [])
    service = WebhookService(config, WebhookSettings(max_body_bytes=1000))
    response = await post(service, source, body, content_type=content_type, correlation_id="bad")
    assert response.status == status
    assert response.body["error"] == code
    assert response.body["correlation_id"] == "bad"
    if code == "missing_field":
        assert "'user_id'" in response.body["detail"]
    assert await config.storage.list_sagas() == []
    assert await config.storage.find_trigger_events("bad") == []


async def test_webhook_unknown_source_and_json_suffix_types(config: SagaConfig) -> None:
    source = unique("signup-types")
    web_saga(source, [])
    service = WebhookService(config)
    unknown = await post(service, "no-such-source", {"user_id": "u"})
    assert unknown.status == 404
    assert unknown.body["error"] == "unknown_source"
    weird = await post(service, "bad source\r\n", {"user_id": "u"})
    assert weird.status == 404
    assert "(invalid name)" in weird.body["detail"]
    cloud_events = "application/cloudevents+json; charset=utf-8"
    ok = await post(service, source, {"user_id": "u9"}, content_type=cloud_events)
    assert ok.status == 202
    await get_runner().drain()


async def test_webhook_signatures(config: SagaConfig) -> None:
    source = unique("signup-signed")
    web_saga(source, [])
    service = WebhookService(config, WebhookSettings(secrets={source: "s3cret"}))
    body = json.dumps({"user_id": "u5"}).encode()

    ts = str(int(time.time()))
    for signature, code in (
        (None, "missing_signature"),
        ("sha256=deadbeef", "invalid_signature"),
        (sign_body(body, "wrong", ts), "invalid_signature"),
    ):
        denied = await post(service, source, body, signature=signature, timestamp=ts)
        assert denied.status == 401
        assert denied.body["error"] == code
    assert await config.storage.list_sagas() == []
    good = sign_body(body, "s3cret", ts)
    accepted = await post(service, source, body, signature=good, timestamp=ts)
    assert accepted.status == 202
    assert good.startswith("sha256=")
    await get_runner().drain()


async def test_webhook_run_in_process_off_leaves_sagas_pending(config: SagaConfig) -> None:
    source = unique("signup-queued")
    calls: list[str] = []
    web_saga(source, calls)
    service = WebhookService(config, WebhookSettings(run_in_process=False))
    accepted = await post(service, source, {"user_id": "u6"}, correlation_id="q")
    await get_runner().drain()
    assert calls == []
    status = await service.source_status(source, "q")
    assert status.body["status"] == "processing"
    assert status.body["sagas"][0]["state"] == "PENDING"
    assert accepted.body["saga_ids"] == status.body["saga_ids"]


async def test_webhook_status_does_not_leak_the_context_unless_exposed(
    config: SagaConfig,
) -> None:
    # expose_context is off by default because the context may hold personal data;
    # what steps returned is part of that context.
    source = unique("signup-private")
    web_saga(source, [])
    service = WebhookService(config)
    accepted = await post(
        service, source, {"user_id": "u7", "email": "private@example.com"}, correlation_id="p"
    )
    await get_runner().drain()
    (saga_id,) = accepted.body["saga_ids"]
    one = await service.saga_status(saga_id)
    by_source = await service.source_status(source, "p")
    assert "private@example.com" not in json.dumps(one.body)
    assert "private@example.com" not in json.dumps(by_source.body)


async def test_webhook_health_reports_unreachable_storage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "not-a-db").write_text("this is not an sqlite file" * 100)
    storage = storage_from_url(f"sqlite:///{tmp_path / 'not-a-db'}")
    try:
        health = await WebhookService(fast_config(storage)).health()
    finally:
        await storage.close()
    assert health.status == 503
    assert health.body["status"] == "unavailable"
    assert health.body["storage"] == "SQLiteSagaStorage"
    assert any(r.name == "sagaz.web" for r in caplog.records)


async def test_webhook_diagram_of_a_saga_nobody_defines(config: SagaConfig) -> None:
    await config.storage.create_saga(NewSaga("web-orphan", "trg-undefined-saga", {}))
    service = WebhookService(config)
    response = await service.saga_diagram("web-orphan")
    assert response.status == 404
    assert response.body["error"] == "unknown_saga"
    assert error_response(418, "teapot", "short and stout").body == {
        "error": "teapot",
        "detail": "short and stout",
        "correlation_id": None,
    }
