"""The consumer inbox: each event id is handled once per consumer, even when delivered twice.

Redis (127.0.0.1:6379) and RabbitMQ (guest/guest on 127.0.0.1:5672) are real servers;
their tests skip when a server is unreachable, and fail instead when ``CI=true``.

The ``storage`` fixture chooses the backend: parametrise it (or move it to conftest.py)
to run these tests against SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

from sagaz.core import InMemorySagaStorage, Saga, SagaConfig
from sagaz.core.engine import emit_event
from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox import (
    HEADER_EVENT_ID,
    Inbox,
    InboxReader,
    OutboxRelay,
    RabbitMQBroker,
    RedisStreamsBroker,
    event_id_from_amqp,
    event_id_from_redis,
)
from sagaz.core.storage import SagaStorage

REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAZ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
async def storage() -> AsyncIterator[SagaStorage]:
    """The storage under test (parametrise here for SQLite / PostgreSQL)."""
    store = InMemorySagaStorage()
    await store.ensure_open()
    try:
        yield store
    finally:
        await store.close()


def require_server(url: str, what: str) -> None:
    """Skip (or, with CI=true, fail) when the server at ``url`` does not answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError as exc:
        message = f"{what} is not reachable at {host}:{port} ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(f"{message}; start it to run this test (CI=true makes this a failure)")


@dataclass
class Recorder:
    """A handler factory that counts what ran."""

    calls: Counter[str] = field(default_factory=Counter)

    def handler(self, event_id: str) -> Any:
        async def handle() -> None:
            self.calls[event_id] += 1

        return handle


# -- the inbox on its own ---------------------------------------------------------------


async def test_a_duplicate_is_dropped(storage: SagaStorage) -> None:
    inbox = Inbox(storage, "billing")
    rec = Recorder()
    assert await inbox.process_once("evt-1", rec.handler("evt-1")) is True
    assert await inbox.process_once("evt-1", rec.handler("evt-1")) is False
    assert await inbox.process_once("evt-2", rec.handler("evt-2")) is True
    assert rec.calls == {"evt-1": 1, "evt-2": 1}
    assert await inbox.seen("evt-1")
    assert not await inbox.seen("evt-3")


async def test_consumers_are_independent(storage: SagaStorage) -> None:
    rec = Recorder()
    assert await Inbox(storage, "billing").process_once("evt-1", rec.handler("billing"))
    assert await Inbox(storage, "shipping").process_once("evt-1", rec.handler("shipping"))
    assert not await Inbox(storage, "billing").process_once("evt-1", rec.handler("billing"))
    assert rec.calls == {"billing": 1, "shipping": 1}


async def test_a_failed_handler_runs_again_on_redelivery(storage: SagaStorage) -> None:
    """At least once: the event is recorded only after the handler succeeded."""
    inbox = Inbox(storage, "billing")
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("downstream is down")

    with pytest.raises(RuntimeError, match="downstream"):
        await inbox.process_once("evt-1", flaky)
    assert not await inbox.seen("evt-1")
    assert await inbox.process_once("evt-1", flaky) is True
    assert await inbox.process_once("evt-1", flaky) is False
    assert runs == 2


async def test_a_plain_function_handler(storage: SagaStorage) -> None:
    seen: list[str] = []
    inbox = Inbox(storage, "audit")
    assert await inbox.process_once("evt-1", lambda: seen.append("evt-1"))
    assert not await inbox.process_once("evt-1", lambda: seen.append("evt-1"))
    assert seen == ["evt-1"]


async def test_concurrent_deliveries_may_both_run(storage: SagaStorage) -> None:
    """Documented: two deliveries processed at the same time both run the handler."""
    inbox = Inbox(storage, "billing")
    rec = Recorder()

    async def slow() -> None:
        await asyncio.sleep(0.02)
        rec.calls["evt-1"] += 1

    results = await asyncio.gather(
        inbox.process_once("evt-1", slow), inbox.process_once("evt-1", slow)
    )
    assert results == [True, True]
    assert rec.calls["evt-1"] == 2
    assert not await inbox.process_once("evt-1", slow)


async def test_mark_before_is_at_most_once() -> None:
    """``mark="before"`` works on any storage; a failed handler loses the event."""
    storage = InMemorySagaStorage()
    inbox = Inbox(storage, "billing", mark="before")
    rec = Recorder()
    assert await inbox.process_once("evt-1", rec.handler("evt-1"))
    assert not await inbox.process_once("evt-1", rec.handler("evt-1"))

    async def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await inbox.process_once("evt-2", failing)
    assert not await inbox.process_once("evt-2", rec.handler("evt-2"))  # lost
    assert rec.calls == {"evt-1": 1}
    assert await inbox.seen("evt-1")


class BlindStorage(InMemorySagaStorage):
    """A storage that cannot answer "was this event processed?"."""

    inbox_seen = None


def test_the_default_inbox_needs_inbox_seen() -> None:
    storage = BlindStorage()
    assert not isinstance(storage, InboxReader)
    with pytest.raises(ConfigurationError, match="mark='before'"):
        Inbox(storage, "billing")
    assert Inbox(storage, "billing", mark="before").mark == "before"


async def test_bad_arguments(storage: SagaStorage) -> None:
    with pytest.raises(ConfigurationError, match="consumer name"):
        Inbox(storage, "")
    with pytest.raises(ConfigurationError, match="mark must be"):
        Inbox(storage, "billing", mark="sometimes")  # type: ignore[arg-type]
    inbox = Inbox(storage, "billing")
    assert repr(inbox) == "Inbox('billing', mark='after')"
    with pytest.raises(ValueError, match="event id"):
        await inbox.process_once("", lambda: None)


def test_event_id_from_redis_fields() -> None:
    assert event_id_from_redis({HEADER_EVENT_ID: "e-1", "body": "{}"}) == "e-1"
    assert event_id_from_redis({HEADER_EVENT_ID.encode(): b"e-2", b"body": b"{}"}) == "e-2"
    with pytest.raises(ValueError, match=HEADER_EVENT_ID):
        event_id_from_redis({b"body": b"{}"})


@dataclass
class FakeAmqpMessage:
    message_id: str | None
    headers: Mapping[str, Any]


def test_event_id_from_amqp_message() -> None:
    assert event_id_from_amqp(FakeAmqpMessage("e-1", {HEADER_EVENT_ID: "other"})) == "e-1"
    assert event_id_from_amqp(FakeAmqpMessage(None, {HEADER_EVENT_ID: b"e-2"})) == "e-2"
    assert event_id_from_amqp(FakeAmqpMessage(None, {HEADER_EVENT_ID: "e-3"})) == "e-3"
    with pytest.raises(ValueError, match="message_id"):
        event_id_from_amqp(FakeAmqpMessage(None, {}))


# -- duplicates delivered by real brokers ---------------------------------------------


def emitting_saga(config: SagaConfig) -> Saga:
    async def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        emit_event("order.charged", {"amount": 42})
        return {"charged": True}

    async def ship(ctx: dict[str, Any]) -> None:
        return None

    return Saga(name="order", config=config).add_step("charge", charge).add_step("ship", ship)


@pytest.mark.redis
async def test_redis_duplicate_delivery_is_handled_once(storage: SagaStorage) -> None:
    require_server(REDIS_URL, "Redis")
    import redis.asyncio

    stream = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    group = "billing"
    config = SagaConfig(storage=storage, outbox=True)
    await emitting_saga(config).run({})
    broker = RedisStreamsBroker(REDIS_URL, stream=stream)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        relay = OutboxRelay(storage, broker)
        assert await relay.drain() == 5
        # The same events again, as after a relay crash between publish and mark.
        await broker.connect()
        for record in await storage.list_outbox():
            await broker.publish(broker.message_for(record.event))

        inbox = Inbox(storage, "billing")
        rec = Recorder()
        outcomes = []
        while True:
            batch = await client.xreadgroup(group, "worker-1", {stream: ">"}, count=3)
            if not batch:
                break
            for entry_id, fields in batch[0][1]:
                event_id = event_id_from_redis(fields)
                outcomes.append(await inbox.process_once(event_id, rec.handler(event_id)))
                await client.xack(stream, group, entry_id)
        assert len(outcomes) == 10
        assert outcomes.count(True) == 5
        assert set(rec.calls.values()) == {1}
        assert set(rec.calls) == {r.event.event_id for r in await storage.list_outbox()}
    finally:
        await relay.close()
        await client.delete(stream)
        await client.aclose()


@pytest.mark.rabbitmq
async def test_rabbitmq_duplicate_delivery_is_handled_once(storage: SagaStorage) -> None:
    require_server(AMQP_URL, "RabbitMQ")
    import aio_pika

    exchange_name = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    config = SagaConfig(storage=storage, outbox=True)
    await emitting_saga(config).run({})
    connection = await aio_pika.connect(AMQP_URL)
    broker = RabbitMQBroker(AMQP_URL, exchange=exchange_name)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "#")
        relay = OutboxRelay(storage, broker)
        assert await relay.drain() == 5
        await broker.connect()
        for record in await storage.list_outbox():
            await broker.publish(broker.message_for(record.event))

        inbox = Inbox(storage, "billing")
        rec = Recorder()
        outcomes = []
        while (message := await queue.get(fail=False)) is not None:
            async with message.process():
                event_id = event_id_from_amqp(message)
                outcomes.append(await inbox.process_once(event_id, rec.handler(event_id)))
        assert len(outcomes) == 10
        assert outcomes.count(True) == 5
        assert set(rec.calls.values()) == {1}
        assert set(rec.calls) == {r.event.event_id for r in await storage.list_outbox()}
        await exchange.delete()
    finally:
        await broker.close()
        await connection.close()
