"""Outbox relay throughput: events/s from the in-memory storage to each broker.

The outbox is filled directly through the storage API (``create_saga`` with the
events of sagas of ``--per-saga`` events each, as the engine writes them), then
``OutboxRelay.drain()`` publishes everything and the time is taken. Each run checks
that every event is SENT and that the broker holds them (stream length, queue depth).

    python bench/bench_outbox_relay.py [--events 10000] [--batch-size 100 ...]
        [--per-saga 5] [--brokers memory,redis,rabbitmq]

Loopback only: Redis on 127.0.0.1:6379, RabbitMQ (guest/guest) on 127.0.0.1:5672
(``SAGAZ_BENCH_REDIS_URL`` / ``SAGAZ_BENCH_AMQP_URL`` may name other loopback
ports). A broker that is not reachable is reported and skipped. Streams, exchanges
and queues are created under unique names and deleted afterwards.

Note: storage hands out one event per saga per claim (events of a saga go out in
order), so a batch holds at most one event of each saga and a saga of N events needs
N claims; with many sagas pending this does not limit the batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sagaz.core.outbox import (
    Broker,
    InMemoryBroker,
    OutboxRelay,
    RabbitMQBroker,
    RedisStreamsBroker,
)
from sagaz.core.records import NewSaga, OutboxEvent, OutboxStatus, Transition, TransitionKind
from sagaz.core.status import SagaStatus
from sagaz.core.storage import InMemorySagaStorage

REDIS_URL = os.environ.get("SAGAZ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAZ_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MAX_EVENTS = 200_000
RUN_TIMEOUT = 300.0
TYPES = ["saga.started", "saga.step_completed", "saga.step_completed", "saga.completed"]


@dataclass
class Row:
    broker: str
    batch_size: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        sys.exit(f"refusing {url!r}: the benchmark only talks to loopback servers")


async def filled_storage(events: int, per_saga: int) -> InMemorySagaStorage:
    """An in-memory storage whose outbox holds ``events`` PENDING events."""
    storage = InMemorySagaStorage(max_finished=events * 2)
    await storage.ensure_open()
    written = 0
    n = 0
    while written < events:
        count = min(per_saga, events - written)
        saga_id = uuid.uuid4().hex
        batch = [
            OutboxEvent(
                uuid.uuid4().hex,
                saga_id,
                TYPES[min(i, len(TYPES) - 1)] if i < count - 1 else "saga.completed",
                {"saga_id": saga_id, "saga_name": "bench", "step": f"s{i}", "n": n},
                f"corr-{n}",
            )
            for i in range(count)
        ]
        await storage.create_saga(
            NewSaga(saga_id, "bench", {"n": n}, SagaStatus.RUNNING),
            [Transition(TransitionKind.SAGA_STARTED)],
            batch,
        )
        written += count
        n += 1
    return storage


async def run_one(
    name: str,
    make_broker: Callable[[], Broker],
    delivered: Callable[[], Awaitable[int]],
    events: int,
    batch_size: int,
    per_saga: int,
) -> Row:
    storage = await filled_storage(events, per_saga)
    broker = make_broker()
    await broker.connect()  # connect outside the timed part
    relay = OutboxRelay(storage, broker, batch_size=batch_size)
    try:
        started = time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT):
            sent = await relay.drain()
        seconds = time.perf_counter() - started
    finally:
        await relay.close()
    counts = await storage.outbox_counts()
    if sent != events or counts[OutboxStatus.SENT] != events or relay.failed:
        raise RuntimeError(
            f"{name}: sent {sent} of {events}, counts {counts}, {relay.failed} failed"
        )
    got = await delivered()
    if got < events:
        raise RuntimeError(f"{name}: the broker holds {got} of {events} events")
    return Row(name, batch_size, events, seconds)


async def bench_memory(events: int, batch_size: int, per_saga: int) -> Row:
    broker = InMemoryBroker(max_messages=events)

    async def delivered() -> int:
        return len(broker.messages)

    return await run_one("memory", lambda: broker, delivered, events, batch_size, per_saga)


async def bench_redis(events: int, batch_size: int, per_saga: int) -> Row:
    import redis.asyncio

    stream = f"sagaz.bench.{uuid.uuid4().hex[:10]}"
    client = redis.asyncio.Redis.from_url(REDIS_URL)

    async def delivered() -> int:
        return int(await client.xlen(stream))

    try:
        return await run_one(
            "redis-streams",
            lambda: RedisStreamsBroker(REDIS_URL, stream=stream),
            delivered,
            events,
            batch_size,
            per_saga,
        )
    finally:
        await client.delete(stream)
        await client.aclose()


async def bench_rabbitmq(events: int, batch_size: int, per_saga: int) -> Row:
    import aio_pika

    name = f"sagaz.bench.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(name, durable=True)  # persistent, as in production
    await queue.bind(exchange, "#")

    async def delivered() -> int:
        declared = await channel.declare_queue(name, durable=True, passive=True)
        return int(declared.declaration_result.message_count or 0)

    try:
        return await run_one(
            "rabbitmq",
            lambda: RabbitMQBroker(AMQP_URL, exchange=name),
            delivered,
            events,
            batch_size,
            per_saga,
        )
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()


BENCHES = {"memory": bench_memory, "redis": bench_redis, "rabbitmq": bench_rabbitmq}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--per-saga", type=int, default=5, help="events per saga")
    parser.add_argument("--brokers", default="memory,redis,rabbitmq")
    args = parser.parse_args()
    if not 1 <= args.events <= MAX_EVENTS:
        sys.exit(f"--events must be between 1 and {MAX_EVENTS}")
    if args.per_saga < 1:
        sys.exit("--per-saga must be >= 1")
    check_loopback(REDIS_URL)
    check_loopback(AMQP_URL)

    rows: list[Row] = []
    for broker in args.brokers.split(","):
        bench = BENCHES.get(broker.strip())
        if bench is None:
            sys.exit(f"unknown broker {broker!r}; choose from {', '.join(BENCHES)}")
        for batch_size in args.batch_size:
            try:
                rows.append(await bench(args.events, batch_size, args.per_saga))
            except (OSError, ConnectionError) as exc:
                print(f"{broker}: skipped, not reachable ({exc})")
                break
            except Exception as exc:
                if type(exc).__name__.startswith(("Broker", "AMQPConnection")):
                    print(f"{broker}: skipped, not reachable ({exc})")
                    break
                raise

    print()
    print(f"outbox relay: in-memory storage -> broker, {args.events} events, {args.per_saga}/saga")
    print(f"{'broker':<15} {'batch':>6} {'events':>8} {'seconds':>9} {'events/s':>10}")
    for row in rows:
        print(
            f"{row.broker:<15} {row.batch_size:>6} {row.events:>8} {row.seconds:>9.3f} "
            f"{row.rate:>10,.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
