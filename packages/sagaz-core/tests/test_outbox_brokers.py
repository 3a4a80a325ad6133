"""The brokers on their own: URLs, messages, missing extras, and each real server.

Redis (127.0.0.1:6379) and RabbitMQ (guest/guest on 127.0.0.1:5672) are real servers;
their tests skip when a server is unreachable, and fail instead when ``CI=true``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox import (
    BODY_FIELD,
    DEFAULT_TOPIC,
    HEADER_CORRELATION_ID,
    HEADER_CREATED_AT,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_SAGA_ID,
    Broker,
    BrokerError,
    BrokerMessage,
    BrokerUnavailableError,
    InMemoryBroker,
    RabbitMQBroker,
    RedisStreamsBroker,
    broker_from_url,
    is_outage,
)
from sagaz.core.records import OutboxEvent

REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAZ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def event(
    n: int = 1, *, saga_id: str = "saga-1", correlation_id: str | None = "req-1"
) -> OutboxEvent:
    return OutboxEvent(
        f"evt-{n}-{uuid.uuid4().hex[:6]}",
        saga_id,
        "order.created",
        {"n": n, "name": "caf\u00e9"},
        correlation_id,
        created_at=1_700_000_000.5,
    )


# -- messages and URLs ------------------------------------------------------------------


def test_message_from_event_carries_the_headers_and_json_body() -> None:
    e = event()
    m = BrokerMessage.from_event(e, "orders")
    assert m.topic == "orders"
    assert m.key == "saga-1"
    assert m.headers == {
        HEADER_EVENT_ID: e.event_id,
        HEADER_SAGA_ID: "saga-1",
        HEADER_EVENT_TYPE: "order.created",
        HEADER_CORRELATION_ID: "req-1",
        HEADER_CREATED_AT: "2023-11-14T22:13:20.500000+00:00",
    }
    assert m.event_id == e.event_id
    assert m.event_type == "order.created"
    assert m.correlation_id == "req-1"
    assert json.loads(m.body.decode("utf-8")) == {"n": 1, "name": "caf\u00e9"}
    assert m.json() == {"n": 1, "name": "caf\u00e9"}


def test_header_names_are_stable() -> None:
    assert HEADER_EVENT_ID == "sagaz-event-id"
    assert HEADER_SAGA_ID == "sagaz-saga-id"
    assert HEADER_EVENT_TYPE == "sagaz-event-type"
    assert HEADER_CORRELATION_ID == "sagaz-correlation-id"
    assert HEADER_CREATED_AT == "sagaz-created-at"
    assert BODY_FIELD == "body"
    assert DEFAULT_TOPIC == "sagaz.events"


def test_no_correlation_id_means_no_header() -> None:
    m = BrokerMessage.from_event(event(correlation_id=None))
    assert HEADER_CORRELATION_ID not in m.headers
    assert m.correlation_id is None
    assert m.topic == DEFAULT_TOPIC


def test_broker_from_url_memory() -> None:
    broker = broker_from_url("memory://")
    assert isinstance(broker, InMemoryBroker)
    assert broker.topic == DEFAULT_TOPIC
    named = broker_from_url("memory://?topic=orders")
    assert named.topic == "orders"
    assert "orders" in repr(named)


def test_broker_from_url_redis() -> None:
    broker = broker_from_url(
        "redis://:secret@redis.example:6380/2?stream=orders&maxlen=1000&approximate=false"
        "&timeout=2.5&health_check_interval=10"
    )
    assert isinstance(broker, RedisStreamsBroker)
    assert broker.topic == "orders"
    assert broker.maxlen == 1000
    assert broker.approximate is False
    assert broker.timeout == 2.5
    assert broker.url == "redis://:secret@redis.example:6380/2?health_check_interval=10"
    assert repr(broker) == "RedisStreamsBroker(redis.example:6380, stream='orders')"
    assert "secret" not in repr(broker)
    default = broker_from_url("rediss://127.0.0.1")
    assert isinstance(default, RedisStreamsBroker)
    assert (default.topic, default.maxlen, default.approximate) == (DEFAULT_TOPIC, None, True)


def test_broker_from_url_amqp() -> None:
    broker = broker_from_url(
        "amqp://u:p@rabbit.example:5673/vhost?exchange=orders&mandatory=true&timeout=3&heartbeat=30"
    )
    assert isinstance(broker, RabbitMQBroker)
    assert broker.topic == "orders"
    assert broker.mandatory is True
    assert broker.timeout == 3.0
    assert broker.exchange_type == "topic"
    assert broker.url == "amqp://u:p@rabbit.example:5673/vhost?heartbeat=30"
    assert repr(broker) == "RabbitMQBroker(rabbit.example:5673, exchange='orders')"
    default = broker_from_url("amqps://guest:guest@127.0.0.1/")
    assert isinstance(default, RabbitMQBroker)
    assert (default.topic, default.mandatory) == (DEFAULT_TOPIC, False)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("127.0.0.1:6379", "has no scheme"),
        ("kafka://127.0.0.1:9092", "unknown broker URL scheme 'kafka'"),
        ("redis://127.0.0.1?maxlen=lots", "maxlen must be an integer"),
        ("redis://127.0.0.1?maxlen=0", "maxlen must be >= 1"),
        ("redis://127.0.0.1?timeout=-1", "timeout must be > 0"),
        ("redis://127.0.0.1?approximate=maybe", "approximate must be true or false"),
        ("amqp://127.0.0.1?timeout=soon", "timeout must be a number"),
        ("amqp://127.0.0.1?mandatory=maybe", "mandatory must be true or false"),
        ("amqp://127.0.0.1?exchange_type=fanciful", "exchange_type 'fanciful'"),
        ("amqp://127.0.0.1?timeout=0", "timeout must be > 0"),
    ],
)
def test_bad_broker_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        broker_from_url(url)


def test_empty_names_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="stream name"):
        RedisStreamsBroker(stream="")
    with pytest.raises(ConfigurationError, match="exchange name"):
        RabbitMQBroker(exchange="")


@pytest.mark.parametrize(
    ("url", "modules", "extra"),
    [
        ("redis://127.0.0.1:6379/0", ("redis", "redis.asyncio"), "sagaz-core[redis]"),
        ("amqp://guest:guest@127.0.0.1/", ("aio_pika",), "sagaz-core[rabbitmq]"),
    ],
)
def test_a_missing_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, url: str, modules: tuple[str, ...], extra: str
) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigurationError, match=rf"pip install '{extra}'".replace("[", r"\[")):
        broker_from_url(url)


def test_outage_classification() -> None:
    assert is_outage(BrokerUnavailableError("down"))
    assert is_outage(ConnectionRefusedError())
    assert is_outage(TimeoutError())
    assert is_outage(OSError("network unreachable"))
    assert not is_outage(BrokerError("refused"))
    assert not is_outage(ValueError("bad"))


# -- the in-memory broker ---------------------------------------------------------------


async def test_in_memory_broker() -> None:
    broker = InMemoryBroker(max_messages=3)
    assert not broker.connected
    async with broker:
        assert broker.connected
        for n in range(4):
            await broker.publish(BrokerMessage.from_event(event(n), "a" if n % 2 else "b"))
        assert [m.json()["n"] for m in broker.messages] == [1, 2, 3]  # bounded
        assert [m.json()["n"] for m in broker.on_topic("a")] == [1, 3]
        outcomes = await broker.publish_batch([BrokerMessage.from_event(event(9))])
        assert outcomes == [None]
        broker.available = False
        assert not broker.connected
        outcomes = await broker.publish_batch([BrokerMessage.from_event(event(10))])
        assert isinstance(outcomes[0], BrokerUnavailableError)
        with pytest.raises(BrokerUnavailableError, match="simulated outage"):
            await broker.connect()
        broker.available = True
        await broker.connect()
    assert not broker.connected


async def test_default_publish_batch_reports_each_outcome() -> None:
    class Picky(InMemoryBroker):
        async def publish(self, message: BrokerMessage) -> None:
            if message.json() == {"n": 2, "name": "caf\u00e9"}:
                raise BrokerError("no twos")
            await super().publish(message)

    broker: Broker = Picky()
    outcomes = await broker.publish_batch([BrokerMessage.from_event(event(n)) for n in (1, 2, 3)])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], BrokerError)
    assert outcomes[2] is None


# -- Redis Streams ----------------------------------------------------------------------


@pytest.fixture
async def redis_stream() -> AsyncIterator[str]:
    """A fresh stream name on the real server, deleted afterwards."""
    require_server(REDIS_URL, "Redis")
    import redis.asyncio

    stream = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    yield stream
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await client.delete(stream)
    await client.aclose()


@pytest.mark.redis
async def test_redis_publish_and_batch(redis_stream: str) -> None:
    import redis.asyncio

    broker = RedisStreamsBroker(REDIS_URL, stream=redis_stream)
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        await broker.publish(broker.message_for(event()))
    async with broker:
        assert broker.connected
        await broker.connect()  # idempotent
        first = event(1)
        await broker.publish(broker.message_for(first))
        batch = [broker.message_for(event(n)) for n in (2, 3, 4)]
        assert await broker.publish_batch(batch) == [None, None, None]
        assert await broker.publish_batch([]) == []
    assert not broker.connected

    client = redis.asyncio.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        entries = await client.xrange(redis_stream)
    finally:
        await client.aclose()
    assert [json.loads(f[BODY_FIELD])["n"] for _, f in entries] == [1, 2, 3, 4]
    fields = entries[0][1]
    assert fields[HEADER_EVENT_ID] == first.event_id
    assert fields[HEADER_SAGA_ID] == "saga-1"
    assert fields[HEADER_EVENT_TYPE] == "order.created"
    assert fields[HEADER_CORRELATION_ID] == "req-1"


@pytest.mark.redis
async def test_redis_maxlen_trims_the_stream(redis_stream: str) -> None:
    import redis.asyncio

    broker = RedisStreamsBroker(REDIS_URL, stream=redis_stream, maxlen=5, approximate=False)
    async with broker:
        for n in range(8):
            await broker.publish(broker.message_for(event(n)))
        await broker.publish_batch([broker.message_for(event(n)) for n in range(8, 12)])
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert await client.xlen(redis_stream) == 5
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_refusal_is_a_message_error_not_an_outage(redis_stream: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await client.set(redis_stream, "not a stream")  # XADD now fails with WRONGTYPE
    await client.aclose()
    good = f"{redis_stream}.ok"
    broker = RedisStreamsBroker(REDIS_URL, stream=redis_stream)
    async with broker:
        with pytest.raises(BrokerError, match="WRONGTYPE") as info:
            await broker.publish(broker.message_for(event()))
        assert not is_outage(info.value)
        ok = BrokerMessage.from_event(event(2), good)
        outcomes = await broker.publish_batch([broker.message_for(event(1)), ok])
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        assert await client.xlen(good) == 1
        await client.delete(good)
    finally:
        await client.aclose()
    assert isinstance(outcomes[0], BrokerError)
    assert not is_outage(outcomes[0])
    assert outcomes[1] is None


async def test_redis_unreachable() -> None:
    pytest.importorskip("redis")
    broker = RedisStreamsBroker(f"redis://127.0.0.1:{closed_port()}/0", timeout=1)
    with pytest.raises(BrokerUnavailableError, match="cannot reach Redis"):
        await broker.connect()
    assert not broker.connected
    await broker.close()


# -- RabbitMQ ---------------------------------------------------------------------------


@pytest.fixture
async def rabbit() -> AsyncIterator[tuple[str, object]]:
    """A fresh exchange name and a queue bound to it with ``#``; both removed afterwards."""
    require_server(AMQP_URL, "RabbitMQ")
    import aio_pika

    name = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "order.*")
    try:
        yield name, queue
    finally:
        await exchange.delete()
        await connection.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_publish_and_batch(rabbit: tuple[str, object]) -> None:
    from aio_pika.abc import AbstractQueue

    name, queue = rabbit
    assert isinstance(queue, AbstractQueue)
    broker = RabbitMQBroker(AMQP_URL, exchange=name)
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        await broker.publish(broker.message_for(event()))
    async with broker:
        assert broker.connected
        await broker.connect()  # idempotent
        first = event(1)
        await broker.publish(broker.message_for(first))
        outcomes = await broker.publish_batch([broker.message_for(event(n)) for n in (2, 3)])
        assert outcomes == [None, None]
        assert await broker.publish_batch([]) == []
    assert not broker.connected

    got = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        got.append(message)
    assert sorted(json.loads(m.body)["n"] for m in got) == [1, 2, 3]
    m = next(m for m in got if m.message_id == first.event_id)
    assert m.routing_key == "order.created"
    assert m.type == "order.created"
    assert m.correlation_id == "req-1"
    assert m.content_type == "application/json"
    assert int(m.delivery_mode) == 2
    assert m.app_id == "sagaz"
    assert m.timestamp is not None
    assert m.headers[HEADER_EVENT_ID] == first.event_id
    assert m.headers[HEADER_SAGA_ID] == "saga-1"
    assert m.headers[HEADER_EVENT_TYPE] == "order.created"


@pytest.mark.rabbitmq
async def test_rabbitmq_declares_a_durable_topic_exchange() -> None:
    require_server(AMQP_URL, "RabbitMQ")
    import aio_pika

    name = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    broker = RabbitMQBroker(AMQP_URL, exchange=name)
    await broker.connect()
    await broker.close()
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        # A passive declaration with other attributes would close the channel.
        exchange = await channel.declare_exchange(
            name, aio_pika.ExchangeType.TOPIC, durable=True, passive=True
        )
        await exchange.delete()
    finally:
        await connection.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_unroutable_with_mandatory_is_a_message_error() -> None:
    require_server(AMQP_URL, "RabbitMQ")
    name = f"sagaz.test.{uuid.uuid4().hex[:12]}"
    broker = RabbitMQBroker(AMQP_URL, exchange=name, mandatory=True)
    async with broker:
        try:
            with pytest.raises(BrokerError, match="did not accept") as info:
                await broker.publish(broker.message_for(event()))
            assert not is_outage(info.value)
            assert broker.connected  # a refusal does not drop the connection
        finally:
            exchange = await broker._exchange(name)
            await exchange.delete()


async def test_rabbitmq_lost_channel_during_publish_is_an_outage() -> None:
    pytest.importorskip("aio_pika")
    from aiormq.exceptions import ChannelInvalidStateError

    class Open:
        is_closed = False

        async def close(self) -> None:
            return None

    class DeadExchange:
        async def publish(self, *args: object, **kwargs: object) -> None:
            raise ChannelInvalidStateError("channel closed")

    broker = RabbitMQBroker(exchange="orders")
    broker._connection = Open()  # type: ignore[assignment]
    broker._channel = Open()  # type: ignore[assignment]
    broker._exchanges["orders"] = DeadExchange()  # type: ignore[assignment]
    assert broker.connected
    outcomes = await broker.publish_batch([broker.message_for(event(1))])
    assert isinstance(outcomes[0], BrokerUnavailableError)
    assert is_outage(outcomes[0])
    assert not broker.connected  # the relay reconnects next time
    with pytest.raises(BrokerUnavailableError, match="not connected"):
        await broker._exchange("other")


async def test_rabbitmq_unreachable() -> None:
    pytest.importorskip("aio_pika")
    broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{closed_port()}/", timeout=1)
    with pytest.raises(BrokerUnavailableError, match="cannot reach RabbitMQ"):
        await broker.connect()
    assert not broker.connected
    await broker.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_bad_credentials_are_an_outage() -> None:
    require_server(AMQP_URL, "RabbitMQ")
    parts = urlsplit(AMQP_URL)
    url = f"amqp://nobody:wrong@{parts.hostname}:{parts.port}/"
    broker = RabbitMQBroker(url, timeout=5)
    with pytest.raises(BrokerUnavailableError):
        await broker.connect()


@pytest.mark.rabbitmq
async def test_rabbitmq_lost_connection_is_an_outage_then_reconnects(
    rabbit: tuple[str, object],
) -> None:
    name, _ = rabbit
    broker = RabbitMQBroker(AMQP_URL, exchange=name)
    await broker.connect()
    try:
        assert broker._connection is not None
        await broker._connection.close()  # as if the server went away
        assert not broker.connected
        with pytest.raises(BrokerUnavailableError):
            await broker.publish(broker.message_for(event()))
        await broker.connect()
        assert broker.connected
        await broker.publish(broker.message_for(event()))
    finally:
        await broker.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_exchange_type_clash_is_reported(rabbit: tuple[str, object]) -> None:
    name, _ = rabbit  # declared as a topic exchange
    broker = RabbitMQBroker(AMQP_URL, exchange=name, exchange_type="fanout")
    with pytest.raises(BrokerUnavailableError, match="declare exchange"):
        await broker.connect()
    assert not broker.connected
