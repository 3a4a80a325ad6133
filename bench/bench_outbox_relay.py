"""Outbox relay throughput: events/s from the in-memory storage to each broker.

The outbox is filled directly through the storage API (``create_saga`` with the
events of sagas of ``--per-saga`` events each, as the engine writes them), then
``OutboxRelay.drain()`` publishes everything and the time is taken. Each run checks
that every event is SENT and that the broker holds them (stream length, queue depth).

    python bench/bench_outbox_relay.py [--quick] [--events 10000] [--batch-size 100 ...]
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
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from _table import Row, print_table

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
class Run:
    broker: str
    batch_size: int
    events: int
    seconds: float
    floor_seconds: float | None = None

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
) -> Run:
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
    return Run(name, batch_size, events, seconds)


async def bench_memory(events: int, batch_size: int, per_saga: int) -> Run:
    broker = InMemoryBroker(max_messages=events)

    async def delivered() -> int:
        return len(broker.messages)

    return await run_one("memory", lambda: broker, delivered, events, batch_size, per_saga)


async def bench_redis(events: int, batch_size: int, per_saga: int) -> Run:
    import redis.asyncio

    stream = f"sagaz.bench.{uuid.uuid4().hex[:10]}"
    client = redis.asyncio.Redis.from_url(REDIS_URL)

    async def delivered() -> int:
        return int(await client.xlen(stream))

    try:
        run = await run_one(
            "redis-streams",
            lambda: RedisStreamsBroker(REDIS_URL, stream=stream),
            delivered,
            events,
            batch_size,
            per_saga,
        )
        run.floor_seconds = await floor_redis(client, f"{stream}.floor", events, batch_size)
        return run
    finally:
        await client.delete(stream, f"{stream}.floor")
        await client.aclose()


async def bench_rabbitmq(events: int, batch_size: int, per_saga: int) -> Run:
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
        run = await run_one(
            "rabbitmq",
            lambda: RabbitMQBroker(AMQP_URL, exchange=name),
            delivered,
            events,
            batch_size,
            per_saga,
        )
        run.floor_seconds = await floor_rabbitmq(events, batch_size)
        return run
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await connection.close()


def _floor_bodies(events: int) -> list[tuple[str, bytes]]:
    return [
        (uuid.uuid4().hex, json.dumps({"saga_id": "s", "saga_name": "bench", "n": n}).encode())
        for n in range(events)
    ]


async def floor_redis(client: Any, stream: str, events: int, batch_size: int) -> float:
    """By hand: XADD the same number of events, ``batch_size`` per pipeline."""
    bodies = _floor_bodies(events)
    started = time.perf_counter()
    for i in range(0, events, batch_size):
        async with client.pipeline(transaction=False) as pipe:
            for event_id, body in bodies[i : i + batch_size]:
                pipe.xadd(stream, {"sagaz-event-id": event_id, "body": body})
            await pipe.execute()
    seconds = time.perf_counter() - started
    assert int(await client.xlen(stream)) == events
    return seconds


async def floor_rabbitmq(events: int, batch_size: int) -> float:
    """By hand: persistent publishes with confirms, ``batch_size`` awaited together."""
    import aio_pika

    name = f"sagaz.bench.floor.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange, "#")
        bodies = _floor_bodies(events)
        started = time.perf_counter()
        for i in range(0, events, batch_size):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body,
                            message_id=event_id,
                            headers={"sagaz-event-id": event_id},
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key="saga.bench",
                    )
                    for event_id, body in bodies[i : i + batch_size]
                )
            )
        seconds = time.perf_counter() - started
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        return seconds
    finally:
        await connection.close()


BENCHES = {"memory": bench_memory, "redis": bench_redis, "rabbitmq": bench_rabbitmq}


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 events, batch 100 only")
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, nargs="+", default=[100, 500])
    p.add_argument("--per-saga", type=int, default=5, help="events per saga")
    p.add_argument("--brokers", default="memory,redis,rabbitmq")
    return p


async def _runs(args: argparse.Namespace) -> tuple[list[Run], list[Row]]:
    if args.quick:
        args.events, args.batch_size = min(args.events, 2_000), args.batch_size[:1]
    if not 1 <= args.events <= MAX_EVENTS:
        sys.exit(f"--events must be between 1 and {MAX_EVENTS}")
    if args.per_saga < 1:
        sys.exit("--per-saga must be >= 1")
    check_loopback(REDIS_URL)
    check_loopback(AMQP_URL)
    runs: list[Run] = []
    skipped: list[Row] = []
    for broker in args.brokers.split(","):
        bench = BENCHES.get(broker.strip())
        if bench is None:
            sys.exit(f"unknown broker {broker!r}; choose from {', '.join(BENCHES)}")
        for batch_size in args.batch_size:
            try:
                runs.append(await bench(args.events, batch_size, args.per_saga))
            except (OSError, ConnectionError) as exc:
                skipped.append(Row("outbox", f"relay to {broker}", None, "events/s",
                                   notes=[f"skipped, not reachable ({exc})"]))  # fmt: skip
                break
            except Exception as exc:
                if type(exc).__name__.startswith(("Broker", "AMQPConnection")):
                    skipped.append(Row("outbox", f"relay to {broker}", None, "events/s",
                                       notes=[f"skipped, not reachable ({exc})"]))  # fmt: skip
                    break
                raise
    return runs, skipped


def rows(args: argparse.Namespace) -> list[Row]:
    """One row per broker and batch size; floor: the same publishes by hand."""
    runs, skipped = asyncio.run(_runs(args))
    out = [
        Row(
            "outbox",
            f"relay to {r.broker}, batch {r.batch_size}, {r.events:,} events",
            r.rate,
            "events/s",
            floor=r.events / r.floor_seconds if r.floor_seconds else None,
        )
        for r in runs
    ]
    return out + skipped


if __name__ == "__main__":
    print_table(rows(parser().parse_args()), "outbox relay: in-memory storage -> broker")
