"""The outbox relay end to end: real sagas write events, the relay publishes them to the
in-memory broker, Redis Streams and RabbitMQ, and a consumer checks what arrived.

Redis (127.0.0.1:6379) and RabbitMQ (guest/guest on 127.0.0.1:5672) are real servers;
their tests skip when a server is unreachable, and fail instead when ``CI=true``.
``SAGAZ_TEST_REDIS_URL`` / ``SAGAZ_TEST_AMQP_URL`` point them elsewhere.

The ``storage`` fixture is the only place that chooses the storage backend:
parametrise it (or move it to conftest.py) to run every test here against SQLite or
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from sagaz.core import InMemorySagaStorage, RetryPolicy, Saga, SagaConfig, SagaStatus
from sagaz.core.engine import emit_event
from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox import (
    BODY_FIELD,
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
    OutboxRelay,
    RabbitMQBroker,
    RedisStreamsBroker,
)
from sagaz.core.records import OutboxRecord, OutboxStatus
from sagaz.core.storage import SagaStorage

REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAZ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


# -- fixtures and helpers -----------------------------------------------------------


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


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_port(url: str, port: int) -> str:
    """``url`` with its host and port replaced by 127.0.0.1:``port``."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@dataclass
class Received:
    """One message as a consumer saw it."""

    event_id: str
    event_type: str
    saga_id: str
    correlation_id: str | None
    body: dict[str, Any]
    headers: dict[str, str]
    props: dict[str, Any] = field(default_factory=dict)


class Harness(ABC):
    """A broker under test and a consumer reading what was published to it."""

    kind: str
    broker: Broker

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Prepare the consumer side (before anything is published)."""

    def down_broker(self) -> Broker:
        """A broker of this kind (same topic) that cannot be reached."""
        return self.broker_at(closed_port())

    def broker_at(self, port: int) -> Broker:
        """A broker of this kind (same topic) whose server is at 127.0.0.1:``port``."""
        raise NotImplementedError(f"the {self.kind} broker has no server")

    @abstractmethod
    async def fetch(self) -> list[Received]:
        """Everything received so far, in arrival order."""

    async def cleanup(self) -> None:
        """Remove the stream / exchange and close connections."""
        await self.broker.close()

    async def received(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived (or ``timeout``); all of them."""
        deadline = time.monotonic() + timeout
        while True:
            got = await self.fetch()
            if len(got) >= count or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.02)


def _from_headers(headers: dict[str, str], body: bytes, **props: Any) -> Received:
    return Received(
        headers[HEADER_EVENT_ID],
        headers[HEADER_EVENT_TYPE],
        headers[HEADER_SAGA_ID],
        headers.get(HEADER_CORRELATION_ID),
        json.loads(body),
        headers,
        props,
    )


class MemoryHarness(Harness):
    kind = "memory"

    def __init__(self) -> None:
        self.broker = self.memory = InMemoryBroker(topic=unique("sagaz.test"))

    def down_broker(self) -> Broker:
        down = InMemoryBroker(topic=self.memory.topic)
        down.available = False
        return down

    async def fetch(self) -> list[Received]:
        return [
            _from_headers(dict(m.headers), m.body, topic=m.topic, key=m.key)
            for m in self.memory.messages
        ]


class RedisHarness(Harness):
    kind = "redis"

    def __init__(self) -> None:
        import redis.asyncio

        self.stream = unique("sagaz.test")
        self.broker = RedisStreamsBroker(REDIS_URL, stream=self.stream)
        self.client = redis.asyncio.Redis.from_url(REDIS_URL)

    def broker_at(self, port: int) -> Broker:
        return RedisStreamsBroker(with_port(REDIS_URL, port), stream=self.stream, timeout=1.0)

    async def fetch(self) -> list[Received]:
        entries = await self.client.xrange(self.stream)
        got = []
        for entry_id, fields in entries:
            text = {k.decode(): v for k, v in fields.items()}
            body = text.pop(BODY_FIELD)
            headers = {k: v.decode() for k, v in text.items()}
            got.append(_from_headers(headers, body, entry_id=entry_id.decode(), raw=fields))
        return got

    async def cleanup(self) -> None:
        await super().cleanup()
        await self.client.delete(self.stream)
        await self.client.aclose()


class RabbitHarness(Harness):
    kind = "rabbitmq"

    def __init__(self) -> None:
        self.exchange_name = unique("sagaz.test")
        self.broker = RabbitMQBroker(AMQP_URL, exchange=self.exchange_name)
        self.got: list[Received] = []

    async def setup(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(AMQP_URL)
        channel = await self.connection.channel()
        self.exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self.queue = await channel.declare_queue(exclusive=True)
        await self.queue.bind(self.exchange, "#")

    def broker_at(self, port: int) -> Broker:
        return RabbitMQBroker(with_port(AMQP_URL, port), exchange=self.exchange_name, timeout=2.0)

    async def fetch(self) -> list[Received]:
        while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
            headers = {k: str(v) for k, v in message.headers.items()}
            self.got.append(
                _from_headers(
                    headers,
                    message.body,
                    message_id=message.message_id,
                    delivery_mode=int(message.delivery_mode),
                    type=message.type,
                    routing_key=message.routing_key,
                    content_type=message.content_type,
                    correlation_id=message.correlation_id,
                    exchange=message.exchange,
                    message=message,
                )
            )
        return list(self.got)

    async def cleanup(self) -> None:
        await super().cleanup()
        try:
            await self.exchange.delete()
        finally:
            await self.connection.close()


async def _harness(kind: str) -> Harness:
    h: Harness
    if kind == "redis":
        require_server(REDIS_URL, "Redis")
        h = RedisHarness()
    elif kind == "rabbitmq":
        require_server(AMQP_URL, "RabbitMQ")
        h = RabbitHarness()
    else:
        h = MemoryHarness()
    await h.setup()
    return h


REDIS = pytest.param("redis", marks=pytest.mark.redis)
RABBITMQ = pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)


@pytest.fixture(params=["memory", REDIS, RABBITMQ])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Each broker kind with a consumer attached."""
    h = await _harness(request.param)
    try:
        yield h
    finally:
        await h.cleanup()


@pytest.fixture(params=[REDIS, RABBITMQ])
async def server_harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The brokers that have a server (which a test can take away)."""
    h = await _harness(request.param)
    try:
        yield h
    finally:
        await h.cleanup()


def fast_relay(storage: SagaStorage, broker: Broker, **kwargs: Any) -> OutboxRelay:
    """A relay with short backoffs (tests must not wait seconds for a retry)."""
    options: dict[str, Any] = {
        "poll_interval": 0.02,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    options.update(kwargs)
    return OutboxRelay(storage, broker, **options)


async def wait_due(storage: SagaStorage) -> None:
    """Sleep until every PENDING event's retry time has passed."""
    pending = await storage.list_outbox(OutboxStatus.PENDING, limit=10_000)
    due = max((r.next_attempt_at for r in pending), default=0.0)
    await asyncio.sleep(max(0.0, due - time.time()) + 0.005)


async def outbox_of(storage: SagaStorage, saga_id: str) -> list[OutboxRecord]:
    return [r for r in await storage.list_outbox(limit=10_000) if r.event.saga_id == saga_id]


def by_saga(received: Sequence[Received]) -> dict[str, list[Received]]:
    groups: dict[str, list[Received]] = {}
    for r in received:
        groups.setdefault(r.saga_id, []).append(r)
    return groups


class TcpProxy:
    """A loopback TCP proxy to a server that the test can cut, as if the server died."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.listen_port = 0

    async def start(self) -> None:
        """Listen (again, on the same port after :meth:`cut`)."""
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.listen_port, reuse_address=True
        )
        self.listen_port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        """Stop listening and drop every connection."""
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        if self.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        await asyncio.sleep(0.05)


# -- sagas used by the tests ----------------------------------------------------------


def order_saga(config: SagaConfig, *, fail_at: str | None = None) -> Saga:
    """reserve -> charge (emits order.charged) -> ship; ``fail_at`` names a step that fails."""

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        if fail_at == "reserve":
            raise RuntimeError("no stock")
        return {"reservation": "r-1"}

    async def release(ctx: dict[str, Any]) -> None:
        return None

    async def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        emit_event("order.charged", {"order_id": ctx["order_id"], "amount": 42})
        if fail_at == "charge":
            raise RuntimeError("card declined")
        return {"payment": "p-1"}

    async def refund(ctx: dict[str, Any]) -> None:
        return None

    def ship(ctx: dict[str, Any]) -> dict[str, Any]:  # a plain function: runs in a thread
        if fail_at == "ship":
            raise RuntimeError("no courier")
        return {"shipment": "s-1"}

    return (
        Saga(name="order", config=config)
        .add_step("reserve", reserve, release)
        .add_step("charge", charge, refund)
        .add_step("ship", ship)
    )


COMPLETED_TYPES = [
    "saga.started",
    "saga.step_completed",
    "saga.step_completed",
    "order.charged",
    "saga.step_completed",
    "saga.completed",
]


# -- end to end, every broker ---------------------------------------------------------


async def test_completed_saga_events_reach_the_consumer(
    storage: SagaStorage, harness: Harness
) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    result = await order_saga(config).run({"order_id": 7}, correlation_id="req-42")
    assert result.status is SagaStatus.COMPLETED

    relay = fast_relay(storage, harness.broker)
    assert await relay.drain() == 6
    got = await harness.received(6)

    records = await outbox_of(storage, result.saga_id)
    assert [r.status for r in records] == [OutboxStatus.SENT] * 6
    assert [g.event_id for g in got] == [r.event.event_id for r in records]
    assert len({g.event_id for g in got}) == 6
    assert [g.event_type for g in got] == COMPLETED_TYPES
    for g in got:
        assert g.saga_id == result.saga_id
        assert g.correlation_id == "req-42"
        assert g.headers[HEADER_CREATED_AT].endswith("+00:00")
        if g.event_type != "order.charged":  # an emitted event's body is what the step gave
            assert g.body["saga_id"] == result.saga_id
    steps = [g.body["step"] for g in got if g.event_type == "saga.step_completed"]
    assert steps == ["reserve", "charge", "ship"]
    charged = got[3]
    assert charged.body == {"order_id": 7, "amount": 42}
    assert got[2].body["result"] == {"payment": "p-1"}
    assert got[-1].body == {"saga_id": result.saga_id, "saga_name": "order", "status": "COMPLETED"}
    counts = await storage.outbox_counts()
    assert counts == {OutboxStatus.PENDING: 0, OutboxStatus.SENT: 6, OutboxStatus.DEAD: 0}
    assert relay.published == 6
    assert relay.failed == 0

    if harness.kind == "rabbitmq":
        for g in got:
            assert g.props["message_id"] == g.event_id
            assert g.props["delivery_mode"] == 2  # persistent
            assert g.props["type"] == g.event_type
            assert g.props["routing_key"] == g.event_type
            assert g.props["correlation_id"] == "req-42"
            assert g.props["content_type"] == "application/json"
            assert g.props["exchange"] == harness.broker.topic
    if harness.kind == "redis":
        assert set(got[0].props["raw"]) == {
            HEADER_EVENT_ID.encode(),
            HEADER_SAGA_ID.encode(),
            HEADER_EVENT_TYPE.encode(),
            HEADER_CORRELATION_ID.encode(),
            HEADER_CREATED_AT.encode(),
            BODY_FIELD.encode(),
        }


async def test_compensated_saga_does_not_publish_the_failed_steps_events(
    storage: SagaStorage, harness: Harness
) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    result = await order_saga(config, fail_at="charge").run({"order_id": 8})
    assert result.status is SagaStatus.COMPENSATED

    relay = fast_relay(storage, harness.broker)
    assert await relay.drain() == 3
    got = await harness.received(3)
    await asyncio.sleep(0.05)
    got = await harness.fetch()

    assert [g.event_type for g in got] == [
        "saga.started",
        "saga.step_completed",
        "saga.compensated",
    ]
    assert "order.charged" not in {g.event_type for g in got}
    assert got[1].body["step"] == "reserve"
    assert got[2].body["status"] == "COMPENSATED"
    assert "card declined" in got[2].body["error"]
    assert all(g.correlation_id is None for g in got)
    assert all(HEADER_CORRELATION_ID not in g.headers for g in got)
    records = await outbox_of(storage, result.saga_id)
    assert [g.event_id for g in got] == [r.event.event_id for r in records]
    assert {r.event.event_type for r in records} == {g.event_type for g in got}


async def test_failed_saga_publishes_saga_failed(storage: SagaStorage, harness: Harness) -> None:
    async def step(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"done": True}

    async def broken_undo(ctx: dict[str, Any]) -> None:
        raise RuntimeError("undo failed")

    async def boom(ctx: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    config = SagaConfig(
        storage=storage, outbox=True, compensation_retry=RetryPolicy(max_attempts=1)
    )
    saga = Saga(name="fragile", config=config).add_step("a", step, broken_undo)
    saga.add_step("b", boom)
    result = await saga.run({})
    assert result.status is SagaStatus.FAILED

    relay = fast_relay(storage, harness.broker)
    assert await relay.drain() == 3
    got = await harness.received(3)
    assert [g.event_type for g in got] == ["saga.started", "saga.step_completed", "saga.failed"]
    assert got[-1].body["status"] == "FAILED"
    assert "undo failed" in got[-1].body["error"]


async def test_many_sagas_keep_their_order(storage: SagaStorage, harness: Harness) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    results = await asyncio.gather(*(saga.run({"order_id": n}) for n in range(12)))
    failing = order_saga(config, fail_at="ship")
    results += await asyncio.gather(*(failing.run({"order_id": n}) for n in range(4)))
    total = 12 * 6 + 4 * 5

    relay = fast_relay(storage, harness.broker, batch_size=7)
    assert await relay.drain() == total
    got = await harness.received(total)
    assert len(got) == total
    groups = by_saga(got)
    assert set(groups) == {r.saga_id for r in results}
    for r in results:
        records = await outbox_of(storage, r.saga_id)
        assert [g.event_id for g in groups[r.saga_id]] == [rec.event.event_id for rec in records]
        types = [g.event_type for g in groups[r.saga_id]]
        if r.status is SagaStatus.COMPLETED:
            assert types == COMPLETED_TYPES
        else:
            assert types[0] == "saga.started"
            assert types[-1] == "saga.compensated"


async def test_outage_keeps_events_pending_then_delivers_them(
    storage: SagaStorage, harness: Harness
) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    results = [await saga.run({"order_id": n}) for n in range(3)]
    relay = fast_relay(storage, harness.down_broker(), max_attempts=2)

    history: list[tuple[int, float]] = []
    for _ in range(4):  # more rounds than max_attempts: an outage never dead-letters
        assert await relay.run_once() == 0
        pending = await storage.list_outbox(OutboxStatus.PENDING)
        assert len(pending) == 18
        first = next(r for r in pending if r.attempts)
        assert first.last_error is not None
        history.append((first.attempts, first.next_attempt_at))
        await wait_due(storage)
    attempts = [a for a, _ in history]
    assert attempts == sorted(attempts)
    assert attempts[-1] == 4
    next_times = [t for _, t in history]
    assert next_times == sorted(next_times)
    assert len(set(next_times)) == 4
    counts = await storage.outbox_counts()
    assert counts[OutboxStatus.DEAD] == 0
    assert counts[OutboxStatus.PENDING] == 18
    assert relay.published == 0
    assert relay.dead_lettered == 0
    assert await harness.fetch() == []

    await relay.close()
    relay.broker = harness.broker  # the broker is back
    await wait_due(storage)
    assert await relay.drain() == 18
    got = await harness.received(18)
    assert len(got) == 18
    groups = by_saga(got)
    for r in results:
        assert [g.event_type for g in groups[r.saga_id]] == COMPLETED_TYPES
    counts = await storage.outbox_counts()
    assert counts == {OutboxStatus.PENDING: 0, OutboxStatus.SENT: 18, OutboxStatus.DEAD: 0}


async def test_run_loop_publishes_as_sagas_finish(storage: SagaStorage, harness: Harness) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    relay = fast_relay(storage, harness.broker)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        saga = order_saga(config)
        for n in range(3):
            await saga.run({"order_id": n})
            await asyncio.sleep(0.01)
        got = await harness.received(18)
        assert len(got) == 18
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert not harness.broker.connected
    assert (await storage.outbox_counts())[OutboxStatus.SENT] == 18


async def test_run_loop_survives_an_outage_and_reconnects(
    storage: SagaStorage, harness: Harness
) -> None:
    """The loop keeps going on a dead broker and delivers once a live one is there."""
    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    relay = fast_relay(storage, harness.down_broker())
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.sleep(0.3)
        assert not task.done()
        assert relay.published == 0
        assert relay.failed >= 2  # retried, with backoff
        relay.broker = harness.broker
        got = await harness.received(6)
        assert [g.event_type for g in got] == COMPLETED_TYPES
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert relay.dead_lettered == 0


async def test_server_going_away_mid_run(storage: SagaStorage, server_harness: Harness) -> None:
    """The server vanishes under a running relay (connections cut), then comes back."""
    harness = server_harness
    target = REDIS_URL if harness.kind == "redis" else AMQP_URL
    proxy = TcpProxy(target)
    await proxy.start()
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    relay = fast_relay(
        storage, harness.broker_at(proxy.listen_port), backoff_max=0.2, max_attempts=2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        first = await saga.run({"order_id": 1})
        assert len(await harness.received(6)) == 6
        await proxy.cut()
        second = await saga.run({"order_id": 2})
        await asyncio.sleep(0.5)
        assert not task.done()
        assert len(await harness.fetch()) == 6
        pending = await outbox_of(storage, second.saga_id)
        assert all(r.status is OutboxStatus.PENDING for r in pending)
        assert pending[0].attempts >= 1
        await proxy.start()  # the server is back, on the same port
        got = await harness.received(12, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await proxy.cut()
    groups = by_saga(got)
    assert [g.event_type for g in groups[first.saga_id]] == COMPLETED_TYPES
    # At least once: an event whose confirm was lost in the cut may arrive twice, but
    # the first arrivals are every event, in order.
    expected = [r.event.event_id for r in await outbox_of(storage, second.saga_id)]
    assert list(dict.fromkeys(g.event_id for g in groups[second.saga_id])) == expected
    assert relay.dead_lettered == 0
    counts = await storage.outbox_counts()
    assert counts[OutboxStatus.SENT] == 12


# -- relay behaviour with the in-memory broker -----------------------------------------


class FlakyBroker(InMemoryBroker):
    """Refuses messages matching ``refuse`` (a BrokerError, not an outage) ``times`` times."""

    def __init__(
        self,
        refuse: Callable[[BrokerMessage], bool],
        times: int = 1_000_000,
        error: type[Exception] = BrokerError,
    ) -> None:
        super().__init__()
        self.refuse = refuse
        self.times = times
        self.error = error
        self.attempted: list[str] = []

    async def publish(self, message: BrokerMessage) -> None:
        self.attempted.append(message.event_id)
        if self.times > 0 and self.refuse(message):
            self.times -= 1
            raise self.error(f"refused {message.event_type}")
        await super().publish(message)


async def test_a_flaky_broker_delivers_after_retries(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    result = await order_saga(config).run({"order_id": 1})
    broker = FlakyBroker(lambda m: m.event_type == "order.charged", times=3)
    relay = fast_relay(storage, broker)

    for _ in range(10):
        await relay.run_once()
        await wait_due(storage)
    assert [m.event_type for m in broker.messages] == COMPLETED_TYPES
    charged = next(
        r for r in await outbox_of(storage, result.saga_id) if r.event.event_type == "order.charged"
    )
    assert charged.status is OutboxStatus.SENT
    assert charged.attempts == 4  # three refusals, then sent
    assert charged.last_error == "BrokerError: refused order.charged"
    assert relay.failed == 3


async def test_dead_letter_after_max_attempts(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    result = await order_saga(config).run({"order_id": 1})
    broker = FlakyBroker(lambda m: m.event_type == "order.charged")
    relay = fast_relay(storage, broker, max_attempts=3)

    for _ in range(3 + 3):  # one event of the saga per claim: 3 before it, 3 attempts
        await relay.run_once()
        await wait_due(storage)
    dead = await storage.list_outbox(OutboxStatus.DEAD)
    assert [r.event.event_type for r in dead] == ["order.charged"]
    assert dead[0].attempts == 3
    assert dead[0].last_error == "BrokerError: refused order.charged"
    assert dead[0].to_dict()["status"] == "DEAD"
    assert relay.dead_lettered == 1
    # Nothing after the refused event was published while it was pending.
    assert [m.event_type for m in broker.messages] == COMPLETED_TYPES[:3]
    counts = await storage.outbox_counts()
    assert counts[OutboxStatus.DEAD] == 1

    # A dead event is never retried; the saga's later events go on (storage contract:
    # only PENDING events hold back later ones).
    await relay.drain()
    attempted = broker.attempted.count(dead[0].event.event_id)
    await relay.drain()
    assert broker.attempted.count(dead[0].event.event_id) == attempted == 3
    assert [m.event_type for m in broker.messages] == [
        t for t in COMPLETED_TYPES if t != "order.charged"
    ]
    assert await storage.outbox_counts() == {
        OutboxStatus.PENDING: 0,
        OutboxStatus.SENT: 5,
        OutboxStatus.DEAD: 1,
    }
    assert (await outbox_of(storage, result.saga_id))[3].status is OutboxStatus.DEAD


async def test_connection_errors_from_publish_are_outages(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    broker = FlakyBroker(lambda m: True, times=5, error=ConnectionResetError)
    relay = fast_relay(storage, broker, max_attempts=1)
    for _ in range(5):
        await relay.run_once()
        await wait_due(storage)
    assert relay.dead_lettered == 0
    await relay.drain()
    assert [m.event_type for m in broker.messages] == COMPLETED_TYPES


async def test_publish_timeout_counts_as_outage(storage: SagaStorage) -> None:
    class Hanging(InMemoryBroker):
        async def publish(self, message: BrokerMessage) -> None:
            await asyncio.sleep(10)

    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    relay = fast_relay(storage, Hanging(), publish_timeout=0.05, max_attempts=1)
    started = time.monotonic()
    assert await relay.run_once() == 0
    assert time.monotonic() - started < 2
    (pending,) = [r for r in await storage.list_outbox() if r.attempts]
    assert pending.status is OutboxStatus.PENDING
    assert "took longer than" in (pending.last_error or "")


class GreedyStorage(InMemorySagaStorage):
    """Claims every due PENDING event, several per saga (what a looser backend might do)."""

    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        now = time.time()
        return [
            r
            for r in self._outbox.values()
            if r.status is OutboxStatus.PENDING and r.next_attempt_at <= now
        ][:limit]


async def test_a_failed_event_holds_back_later_events_of_its_saga_in_the_batch() -> None:
    storage = GreedyStorage()
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    first = await saga.run({"order_id": 1})
    second = await saga.run({"order_id": 2})
    broker = FlakyBroker(
        lambda m: m.key == first.saga_id and m.event_type == "saga.step_completed", times=1
    )
    relay = fast_relay(storage, broker)
    assert await relay.run_once() == 6 + 1
    published = by_saga([_from_headers(dict(m.headers), m.body) for m in broker.messages])
    assert [g.event_type for g in published[second.saga_id]] == COMPLETED_TYPES
    assert [g.event_type for g in published[first.saga_id]] == ["saga.started"]
    # Only the failed event was attempted for the first saga after it.
    assert len(broker.attempted) == 6 + 2


async def test_an_outage_mid_batch_fails_the_rest_without_trying_them() -> None:
    storage = GreedyStorage()
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    first = await saga.run({"order_id": 1})
    second = await saga.run({"order_id": 2})
    # The first saga's first event meets a dropped connection; the second's goes out.
    broker = FlakyBroker(lambda m: m.key == first.saga_id, times=1, error=ConnectionResetError)
    relay = fast_relay(storage, broker, max_attempts=1)
    assert await relay.run_once() == 1
    assert [m.key for m in broker.messages] == [second.saga_id]
    assert len(broker.attempted) == 2  # nothing after the outage was tried
    later = (await outbox_of(storage, second.saga_id))[1:]
    assert all(r.attempts == 1 and r.status is OutboxStatus.PENDING for r in later)
    assert "ConnectionResetError" in (later[0].last_error or "")
    assert relay.dead_lettered == 0


async def test_an_event_that_cannot_be_encoded_is_refused(storage: SagaStorage) -> None:
    class Strict(InMemoryBroker):
        def message_for(self, event: Any) -> BrokerMessage:
            if event.event_type == "order.charged":
                raise ValueError("cannot encode")
            return super().message_for(event)

    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    broker = Strict()
    relay = fast_relay(storage, broker, max_attempts=1)
    for _ in range(6):
        await relay.run_once()
    assert relay.dead_lettered == 1
    (dead,) = await storage.list_outbox(OutboxStatus.DEAD)
    assert dead.last_error == "ValueError: cannot encode"
    assert [m.event_type for m in broker.messages] == [
        t for t in COMPLETED_TYPES if t != "order.charged"
    ]


async def test_a_broker_whose_batch_raises_or_close_fails(storage: SagaStorage) -> None:
    class Broken(InMemoryBroker):
        async def publish_batch(
            self, messages: Sequence[BrokerMessage]
        ) -> list[BaseException | None]:
            raise BrokerError("batch exploded")

        async def close(self) -> None:
            raise RuntimeError("close exploded")

    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    relay = fast_relay(storage, Broken())
    assert await relay.run_once() == 0
    (failed,) = [r for r in await storage.list_outbox() if r.attempts]
    assert failed.last_error == "BrokerError: batch exploded"
    await relay.close()  # a failing close is logged, not raised
    assert "OutboxRelay(storage=" in repr(relay)


async def test_any_connect_failure_is_an_outage(storage: SagaStorage) -> None:
    class Misconfigured(InMemoryBroker):
        async def connect(self) -> None:
            raise ValueError("no such vhost")

    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    relay = fast_relay(storage, Misconfigured(), max_attempts=1)
    for _ in range(3):
        assert await relay.run_once() == 0
        await wait_due(storage)
    assert relay.dead_lettered == 0
    (pending,) = [r for r in await storage.list_outbox() if r.attempts]
    assert pending.attempts == 3
    assert pending.last_error == "BrokerUnavailableError: ValueError: no such vhost"


async def test_a_storage_failure_does_not_stop_the_loop(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    real_claim = storage.claim_outbox
    calls = 0

    async def failing_claim(limit: int) -> list[OutboxRecord]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("database is away")
        return await real_claim(limit)

    storage.claim_outbox = failing_claim  # type: ignore[method-assign]
    broker = InMemoryBroker()
    relay = fast_relay(storage, broker, poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        deadline = time.monotonic() + 5
        while len(broker.messages) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert calls > 2
    assert [m.event_type for m in broker.messages] == COMPLETED_TYPES


async def test_an_idle_or_failing_loop_does_not_spin(storage: SagaStorage) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    real_claim = storage.claim_outbox
    calls = 0

    async def counting_claim(limit: int) -> list[OutboxRecord]:
        nonlocal calls
        calls += 1
        return await real_claim(limit)

    storage.claim_outbox = counting_claim  # type: ignore[method-assign]
    down = InMemoryBroker()
    down.available = False
    relay = OutboxRelay(storage, down, poll_interval=0.05, backoff_base=0.01, backoff_max=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert 3 <= calls <= 15  # about one claim per poll_interval, not a tight loop


async def test_run_stops_promptly_and_can_be_cancelled(storage: SagaStorage) -> None:
    relay = OutboxRelay(storage, InMemoryBroker(), poll_interval=30)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)

    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nothing_to_publish_does_not_touch_the_broker(storage: SagaStorage) -> None:
    broker = InMemoryBroker()
    broker.available = False
    relay = OutboxRelay(storage, broker)
    assert await relay.run_once() == 0
    assert relay.failed == 0


async def test_events_are_written_only_with_outbox_on(storage: SagaStorage) -> None:
    await order_saga(SagaConfig(storage=storage)).run({"order_id": 1})
    assert await storage.list_outbox() == []
    assert await fast_relay(storage, InMemoryBroker()).drain() == 0


async def test_retry_of_a_step_publishes_its_event_once(storage: SagaStorage) -> None:
    attempts = 0

    async def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        nonlocal attempts
        attempts += 1
        emit_event("order.charged", {"attempt": attempts})
        if attempts == 1:
            raise RuntimeError("flaky")
        return {}

    config = SagaConfig(storage=storage, outbox=True)
    saga = Saga(name="retrying", config=config).add_step(
        "charge", charge, retry=RetryPolicy(max_attempts=2, backoff_base=0)
    )
    assert (await saga.run({})).status is SagaStatus.COMPLETED
    broker = InMemoryBroker()
    await fast_relay(storage, broker).drain()
    charged = [m for m in broker.messages if m.event_type == "order.charged"]
    assert [m.json() for m in charged] == [{"attempt": 2}]


def test_retry_delay_grows_with_jitter_and_is_capped() -> None:
    relay = OutboxRelay(InMemorySagaStorage(), InMemoryBroker(), backoff_base=1, backoff_max=300)
    for attempts, nominal in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (500, 300)]:
        delays = [relay.retry_delay(attempts) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 0),
        ("poll_interval", 0),
        ("max_attempts", 0),
        ("backoff_base", 0),
        ("backoff_max", 0.5),
        ("publish_timeout", 0),
    ],
)
def test_relay_options_are_checked(option: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=option):
        OutboxRelay(InMemorySagaStorage(), InMemoryBroker(), **{option: value})  # type: ignore[arg-type]


async def test_logs_go_to_the_sagaz_outbox_logger(
    storage: SagaStorage, caplog: pytest.LogCaptureFixture
) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    down = InMemoryBroker()
    down.available = False
    relay = fast_relay(storage, down)
    with caplog.at_level(logging.DEBUG, logger="sagaz.outbox"):
        await relay.run_once()
        relay.broker = InMemoryBroker()
        await wait_due(storage)
        await relay.drain()
    names = {r.name for r in caplog.records}
    assert names == {"sagaz.outbox"}
    text = caplog.text
    assert "unavailable" in text
    assert "reachable again" in text


async def test_an_outage_logs_one_warning_not_one_per_event(
    storage: SagaStorage, caplog: pytest.LogCaptureFixture
) -> None:
    config = SagaConfig(storage=storage, outbox=True)
    saga = order_saga(config)
    for n in range(5):
        await saga.run({"order_id": n})
    broker = FlakyBroker(lambda m: True, error=ConnectionResetError)
    relay = fast_relay(storage, broker)
    with caplog.at_level(logging.WARNING, logger="sagaz.outbox"):
        for _ in range(3):
            await relay.run_once()
            await wait_due(storage)
    assert relay.failed == 15
    assert len(caplog.records) == 1
    assert "unavailable" in caplog.records[0].getMessage()


async def test_broker_returning_wrong_outcome_count_fails_the_batch(storage: SagaStorage) -> None:
    class Broken(InMemoryBroker):
        async def publish_batch(
            self, messages: Sequence[BrokerMessage]
        ) -> list[BaseException | None]:
            return []

    config = SagaConfig(storage=storage, outbox=True)
    await order_saga(config).run({"order_id": 1})
    relay = fast_relay(storage, Broken())
    assert await relay.run_once() == 0
    (failed,) = [r for r in await storage.list_outbox() if r.attempts]
    assert "outcomes" in (failed.last_error or "")


async def test_unavailable_error_type(storage: SagaStorage) -> None:
    broker = InMemoryBroker()
    broker.available = False
    with pytest.raises(BrokerUnavailableError):
        await broker.connect()
    assert isinstance(BrokerUnavailableError("x"), ConnectionError)
