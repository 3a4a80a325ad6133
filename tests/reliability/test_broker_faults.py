"""Broker faults: a PRIVATE Redis and a PRIVATE RabbitMQ node are stopped for some seconds
in the middle of a load.

Sagas keep running meanwhile (outbox on, PostgreSQL storage): their events wait in the
outbox; after the broker is back the relay publishes every one, and a consumer behind the
inbox (``sagaz.core.outbox.Inbox``) handles each exactly once, however often the broker
delivered it. The shared servers on 6379/5672 are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sagaz_reliability_sagas import RelOrderSaga
from sagaz_reliability_support import (
    PrivateRabbitMQ,
    PrivateRedis,
    pg_database,
    pg_problem,
    record,
    scaled,
    skip_or_fail,
)

from sagaz.core import SagaConfig
from sagaz.core.outbox import (
    DEFAULT_TOPIC,
    Inbox,
    OutboxRelay,
    broker_from_url,
    event_id_from_amqp,
    event_id_from_redis,
)
from sagaz.core.records import OutboxStatus

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

OUTAGE_SECONDS = 4.0


class Consumer:
    """Counts deliveries and handler runs per event id (the handler runs via the inbox)."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self.delivered: Counter[str] = Counter()
        self.handled: Counter[str] = Counter()
        self.reconnects = 0

    async def deliver(self, event_id: str) -> None:
        self.delivered[event_id] += 1

        def handle() -> None:
            self.handled[event_id] += 1

        await self.inbox.process_once(event_id, handle)


async def consume_redis(url: str, consumer: Consumer, stop: asyncio.Event) -> None:
    """XREAD the stream from the start; reconnect whenever Redis is gone."""
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    last = "0"
    while not stop.is_set():
        client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        try:
            while not stop.is_set():
                answer = await client.xread({DEFAULT_TOPIC: last}, count=200, block=200)
                for _, entries in answer:
                    for entry_id, fields in entries:
                        await consumer.deliver(event_id_from_redis(fields))
                        last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        except (RedisConnectionError, RedisTimeoutError, OSError):
            consumer.reconnects += 1
            await asyncio.sleep(0.3)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


async def declare_rabbit_queue(url: str) -> None:
    """The consumer's durable queue, bound to every event type, before anything is sent."""
    import aio_pika

    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            DEFAULT_TOPIC, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue("rel-consumer", durable=True)
        await queue.bind(exchange, routing_key="#")


async def consume_rabbit(url: str, consumer: Consumer, stop: asyncio.Event) -> None:
    """Consume the durable queue with acks after handling; reconnect when the node is gone."""
    import aio_pika

    while not stop.is_set():
        try:
            connection = await aio_pika.connect(url, timeout=3)
        except Exception:
            consumer.reconnects += 1
            await asyncio.sleep(0.3)
            continue
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=100)
            queue = await channel.declare_queue("rel-consumer", durable=True)
            async with queue.iterator() as messages:
                while not stop.is_set():
                    try:
                        message = await asyncio.wait_for(messages.__anext__(), 0.3)
                    except TimeoutError:
                        if connection.is_closed:
                            break
                        continue
                    async with message.process():
                        await consumer.deliver(event_id_from_amqp(message))
        except Exception:
            consumer.reconnects += 1
            await asyncio.sleep(0.3)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()


class _Broker:
    """What the test needs of a private broker server."""

    url: str

    def start(self) -> Any: ...
    def stop(self) -> None: ...
    def teardown(self) -> None: ...


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A private broker server, started; torn down (files removed) after the test."""
    kind = request.param
    try:
        server: Any = (
            PrivateRedis(tmp_path / kind) if kind == "redis" else PrivateRabbitMQ(tmp_path / kind)
        )
        server.start()
    except Exception as exc:
        skip_or_fail(f"cannot start a private {kind} server: {exc}")
    try:
        yield server
    finally:
        server.teardown()


async def _wait(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not await check():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def test_events_wait_in_the_outbox_and_each_is_handled_once(broker_server: Any) -> None:
    if problem := pg_problem():
        skip_or_fail(problem)
    kind = "redis" if isinstance(broker_server, PrivateRedis) else "rabbitmq"
    per_phase = scaled(100, minimum=10)
    if kind == "rabbitmq":
        await declare_rabbit_queue(broker_server.url)
    with pg_database(f"sagaz_rel_broker_{kind}") as (_, url):
        config = SagaConfig(storage_url=f"{url}?pool_max=6", outbox=True)
        storage = config.storage
        await storage.ensure_open()
        stop = asyncio.Event()
        relay = OutboxRelay(
            storage,
            broker_from_url(broker_server.url + ("?timeout=2" if kind == "redis" else "")),
            poll_interval=0.1,
            backoff_base=0.2,
            backoff_max=2.0,
            publish_timeout=5.0,
        )
        consumer = Consumer(Inbox(storage, f"rel-{kind}"))
        consume = consume_redis if kind == "redis" else consume_rabbit
        tasks = [
            asyncio.create_task(relay.run(stop)),
            asyncio.create_task(consume(broker_server.url, consumer, stop)),
        ]
        saga = RelOrderSaga(config=config)
        orders = iter(range(1_000_000))

        async def load(n: int) -> None:
            results = await asyncio.gather(
                *(saga.run({"order_id": f"b-{next(orders)}", "sleep": 0.0}) for _ in range(n))
            )
            assert {r.status.value for r in results} == {"COMPLETED"}

        try:
            await load(per_phase)
            await asyncio.to_thread(broker_server.stop)
            outage_began = time.monotonic()
            await load(per_phase)  # the sagas go on; their events wait
            await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_began)))
            pending_in_outage = (await storage.outbox_counts())[OutboxStatus.PENDING]
            await asyncio.to_thread(broker_server.start)
            outage = time.monotonic() - outage_began
            await load(per_phase)

            async def all_handled() -> bool:
                counts = await storage.outbox_counts()
                return counts[OutboxStatus.PENDING] == 0 and len(consumer.handled) >= sum(
                    counts.values()
                )

            drained = await _wait(all_handled, 90, "every event to be published and handled")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        sent = await storage.list_outbox(limit=1_000_000)
        await storage.close()

    ids = {rec.event.event_id for rec in sent}
    statuses = Counter(rec.status for rec in sent)
    twice = {i: n for i, n in consumer.handled.items() if n != 1}
    duplicates = sum(consumer.delivered.values()) - sum(consumer.handled.values())
    record(
        f"broker faults: private {kind} stopped {outage:.0f}s",
        sagas=3 * per_phase,
        events=len(ids),
        pending_during_outage=pending_in_outage,
        duplicates_dropped=duplicates,
        consumer_reconnects=consumer.reconnects,
        delivered_after_s=round(drained, 1),
        lost=len(ids - set(consumer.handled)),
    )
    assert pending_in_outage > 0, "no event waited in the outbox during the outage"
    assert statuses == {OutboxStatus.SENT: len(ids)}, statuses
    assert set(consumer.handled) == ids, f"{len(ids - set(consumer.handled))} events not handled"
    assert not twice, f"events handled more than once: {list(twice.items())[:5]}"
