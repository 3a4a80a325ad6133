"""The transactional outbox end to end, on SQLite and PostgreSQL, with real brokers.

- 100 sagas with ``SagaConfig(outbox=True)`` complete while the broker is unreachable
  (a closed port): their events wait PENDING; a relay to the real Redis (a stream of
  this test's own) then delivers every one, checked on the consumer side (XRANGE)
  against ``list_outbox``; the same once with RabbitMQ (an exchange and queue of this
  test's own).
- A storage write that fails (forced by a database trigger) leaves neither the state
  change nor its events; a step result that is not JSON completes nothing and emits
  nothing.
- ``sagaz worker`` writes outbox events when ``SAGAZ_OUTBOX=1`` and relays them with
  ``--broker-url``.

Servers on loopback: PostgreSQL 5432 (this module's own database, dropped after), Redis
6379, RabbitMQ 5672 (guest/guest). Missing servers skip their cases, except under
``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.core import (
    OutboxRelay,
    OutboxStatus,
    RetryPolicy,
    SagaConfig,
    SagaQuery,
    SagaStatus,
    StorageError,
    broker_from_url,
    start_saga,
)
from sagaz.core.records import OutboxRecord, TransitionKind
from sagaz.core.status import StepStatus
from sagaz.core.storage.base import SagaStorage

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from sagaz_durable_test_sagas import (  # noqa: E402
    AMQP_URL,
    EMITTING_EVENTS,
    REDIS_URL,
    EmittingSaga,
    Worker,
    closed_port,
    pg_create_database,
    pg_drop_database,
    pg_reachable,
    pg_truncate,
    pg_url_for,
    skip_or_fail,
    workers_cleanup,
)

pytestmark = pytest.mark.slow

N_SAGAS = 100


def report(message: str) -> None:
    print(f"[durable] {message}")
    path = os.environ.get("SAGAZ_DURABLE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def pg_database() -> Iterator[tuple[str, str]]:
    reason = pg_reachable()
    if reason:
        skip_or_fail(reason)
    name = pg_create_database("sagaz_durable_outbox")
    url = pg_url_for(name)

    async def migrate() -> None:
        config = SagaConfig(storage_url=url)
        try:
            await config.storage.ensure_open()
        finally:
            await config.storage.close()

    try:
        asyncio.run(migrate())
        yield name, url
    finally:
        pg_drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagas.db'}"
    _, url = request.getfixturevalue("pg_database")
    pg_truncate(url)
    return str(url)


@pytest.fixture
async def config(storage_url: str) -> AsyncIterator[SagaConfig]:
    url = storage_url + ("?pool_max=5" if storage_url.startswith("postgresql") else "")
    cfg = SagaConfig(storage_url=url, outbox=True, compensation_retry=RetryPolicy(max_attempts=1))
    await cfg.storage.ensure_open()
    try:
        yield cfg
    finally:
        await cfg.storage.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[Any]:
    redis = pytest.importorskip("redis.asyncio")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        skip_or_fail(f"Redis is not reachable at {REDIS_URL} ({exc})")
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def amqp_connection() -> AsyncIterator[Any]:
    aio_pika = pytest.importorskip("aio_pika")
    try:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:
        skip_or_fail(f"RabbitMQ is not reachable at {AMQP_URL} ({exc})")
    try:
        yield connection
    finally:
        await connection.close()


# --------------------------------------------------------------------------- helpers


async def run_sagas_with_the_broker_down(
    config: SagaConfig, broker_url: str
) -> tuple[list[str], OutboxRelay]:
    """Run N_SAGAS EmittingSagas while a relay keeps failing to reach ``broker_url``."""
    storage = config.storage
    down = OutboxRelay(
        storage,
        broker_from_url(broker_url),
        poll_interval=0.02,
        backoff_base=0.02,
        backoff_max=0.1,
        publish_timeout=2,
    )
    stop = asyncio.Event()
    relay_task = asyncio.create_task(down.run(stop))
    saga = EmittingSaga(config=config)
    sem = asyncio.Semaphore(25)

    async def one(n: int) -> tuple[str, SagaStatus]:
        async with sem:
            result = await saga.run({"n": n})
            return result.saga_id, result.status

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(N_SAGAS))), 90)
        # Let the relay fail at least one full round on the last events.
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(relay_task, 15)
    assert Counter(status for _, status in outcomes) == {SagaStatus.COMPLETED: N_SAGAS}
    counts = await storage.outbox_counts()
    total = N_SAGAS * len(EMITTING_EVENTS)
    assert counts == {OutboxStatus.PENDING: total, OutboxStatus.SENT: 0, OutboxStatus.DEAD: 0}
    assert down.published == 0
    assert down.failed > 0, "the relay never tried to publish"
    assert down.dead_lettered == 0
    return [saga_id for saga_id, _ in outcomes], down


async def deliver_all(storage: SagaStorage, broker_url: str, timeout: float = 60) -> OutboxRelay:
    """Relay until no event is PENDING (failed ones become due within ~0.1 s)."""
    relay = OutboxRelay(storage, broker_from_url(broker_url), backoff_base=0.02, backoff_max=0.1)
    deadline = time.monotonic() + timeout
    try:
        while (await storage.outbox_counts())[OutboxStatus.PENDING]:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"events still pending after {timeout}s: {await storage.outbox_counts()}"
                )
            if not await relay.run_once():
                await asyncio.sleep(0.05)
    finally:
        await relay.close()
    return relay


def check_order_per_saga(outbox: list[OutboxRecord], delivered: list[str]) -> None:
    """Per saga, the consumer saw the events in outbox (seq) order."""
    saga_of = {r.event.event_id: r.event.saga_id for r in outbox}
    expected: dict[str, list[str]] = defaultdict(list)
    for rec in sorted(outbox, key=lambda r: r.seq):
        expected[rec.event.saga_id].append(rec.event.event_id)
    seen: dict[str, list[str]] = defaultdict(list)
    for event_id in delivered:
        seen[saga_of[event_id]].append(event_id)
    assert seen == expected


# --------------------------------------------------------------------------- Redis


@pytest.mark.redis
async def test_events_wait_while_the_broker_is_down_then_redis_gets_every_one(
    config: SagaConfig, storage_url: str, redis_client: Any
) -> None:
    storage = config.storage
    stream = f"sagaz.test.durable.{uuid.uuid4().hex}"
    port = closed_port()
    try:
        saga_ids, down = await run_sagas_with_the_broker_down(
            config, f"redis://127.0.0.1:{port}/0?stream={stream}&timeout=1"
        )
        pending = await storage.list_outbox(OutboxStatus.PENDING, limit=10_000)
        assert any(r.attempts > 0 for r in pending)
        assert {r.event.saga_id for r in pending} == set(saga_ids)
        began = time.monotonic()
        relay = await deliver_all(storage, f"{REDIS_URL}?stream={stream}")
        took = time.monotonic() - began
        entries = await redis_client.xrange(stream, "-", "+")
        outbox = await storage.list_outbox(limit=10_000)
    finally:
        await redis_client.delete(stream)
    total = N_SAGAS * len(EMITTING_EVENTS)
    assert len(outbox) == total
    assert all(r.status is OutboxStatus.SENT for r in outbox)
    delivered = [fields["sagaz-event-id"] for _, fields in entries]
    assert len(entries) == total, f"{len(entries)} entries on the stream for {total} events"
    assert set(delivered) == {r.event.event_id for r in outbox}
    assert len(set(delivered)) == len(delivered), "an event was delivered twice"
    for _, fields in entries:
        assert fields["sagaz-saga-id"] in saga_ids
    check_order_per_saga(outbox, delivered)
    types = Counter(fields["sagaz-event-type"] for _, fields in entries)
    assert types == Counter({t: N_SAGAS * n for t, n in Counter(EMITTING_EVENTS).items()})
    report(
        f"outbox/redis {storage_url.split(':')[0]}: {total} events PENDING through "
        f"{down.failed} failed publications, then {relay.published} delivered in {took:.1f}s"
    )


# --------------------------------------------------------------------------- RabbitMQ


@pytest.mark.rabbitmq
async def test_events_wait_while_the_broker_is_down_then_rabbitmq_gets_every_one(
    tmp_path: Path, amqp_connection: Any
) -> None:
    import aio_pika

    config = SagaConfig(
        storage_url=f"sqlite:///{tmp_path / 'sagas.db'}",
        outbox=True,
        compensation_retry=RetryPolicy(max_attempts=1),
    )
    storage = config.storage
    exchange_name = f"sagaz.test.durable.{uuid.uuid4().hex}"
    channel = await amqp_connection.channel()
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(f"{exchange_name}.q", exclusive=True)
    await queue.bind(exchange, routing_key="#")
    total = N_SAGAS * len(EMITTING_EVENTS)
    received: list[aio_pika.abc.AbstractIncomingMessage] = []
    try:
        saga_ids, _ = await run_sagas_with_the_broker_down(
            config,
            f"amqp://guest:guest@127.0.0.1:{closed_port()}/?exchange={exchange_name}&timeout=1",
        )
        relay = await deliver_all(storage, f"{AMQP_URL}?exchange={exchange_name}")
        deadline = time.monotonic() + 30
        while len(received) < total and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False, timeout=5)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            received.append(message)
        # Nothing more arrives (no duplicates).
        await asyncio.sleep(0.2)
        extra = await queue.get(no_ack=True, fail=False, timeout=5)
        outbox = await storage.list_outbox(limit=10_000)
    finally:
        with contextlib.suppress(Exception):
            await queue.delete(if_unused=False, if_empty=False)
        with contextlib.suppress(Exception):
            await exchange.delete()
        await channel.close()
        await storage.close()
    assert extra is None, "more messages than events"
    assert len(received) == total == len(outbox)
    assert all(r.status is OutboxStatus.SENT for r in outbox)
    delivered = [m.message_id for m in received]
    assert set(delivered) == {r.event.event_id for r in outbox}
    assert all(m.headers["sagaz-event-id"] == m.message_id for m in received)
    assert {m.headers["sagaz-saga-id"] for m in received} == set(saga_ids)
    check_order_per_saga(outbox, [str(d) for d in delivered])
    report(f"outbox/rabbitmq sqlite: {total} events PENDING, then {relay.published} delivered")


# --------------------------------------------------------------------------- atomicity


def install_failing_trigger(storage_url: str, table: str, condition: str) -> None:
    """Make the database refuse inserts into ``table`` matching ``condition``."""
    if storage_url.startswith("sqlite"):
        path = storage_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            conn.execute(
                f"CREATE TRIGGER sagaz_test_refuse BEFORE INSERT ON {table} WHEN {condition} "
                "BEGIN SELECT RAISE(ABORT, 'forced failure of the test'); END"
            )
            conn.commit()
        return
    import psycopg

    with psycopg.connect(storage_url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION sagaz_test_refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'forced failure of the test'; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER sagaz_test_refuse BEFORE INSERT ON {table} FOR EACH ROW "
            f"WHEN ({condition}) EXECUTE FUNCTION sagaz_test_refuse()"
        )


def drop_failing_trigger(storage_url: str, table: str) -> None:
    if storage_url.startswith("sqlite"):
        path = storage_url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            conn.execute("DROP TRIGGER IF EXISTS sagaz_test_refuse")
            conn.commit()
        return
    import psycopg

    with psycopg.connect(storage_url, autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER IF EXISTS sagaz_test_refuse ON {table}")
        conn.execute("DROP FUNCTION IF EXISTS sagaz_test_refuse()")


def _events_of(outbox: list[OutboxRecord], saga_id: str) -> list[tuple[str, Any]]:
    return [
        (r.event.event_type, r.event.payload.get("step"))
        for r in outbox
        if r.event.saga_id == saga_id
    ]


@pytest.mark.parametrize(
    ("table", "condition"),
    [
        # The event's insert fails: the state change written with it must not stay.
        ("sagaz_outbox", "NEW.event_type = 'test.poison'"),
        # The state change fails: the events written with it must not stay.
        ("sagaz_history", "NEW.kind = 'step_completed' AND NEW.step = 'charge'"),
    ],
    ids=["event-fails", "transition-fails"],
)
async def test_a_failed_write_leaves_neither_the_transition_nor_its_events(
    config: SagaConfig, storage_url: str, table: str, condition: str
) -> None:
    storage = config.storage
    saga_id = str(uuid.uuid4())
    install_failing_trigger(storage_url, table, condition)
    try:
        with pytest.raises(StorageError, match="forced failure of the test"):
            await asyncio.wait_for(
                EmittingSaga(config=config).run({"n": 7, "poison": True}, saga_id=saga_id), 30
            )
        record = await storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.RUNNING
        assert record.steps["reserve"].status is StepStatus.COMPLETED
        assert record.steps["charge"].status is StepStatus.RUNNING
        assert "notify" not in record.steps
        assert "charged" not in record.context
        kinds = [(h.kind, h.step) for h in record.history]
        assert (TransitionKind.STEP_COMPLETED, "charge") not in kinds
        assert (TransitionKind.STEP_STARTED, "notify") not in kinds
        events = _events_of(await storage.list_outbox(limit=1000), saga_id)
        assert events == [("saga.started", None), ("saga.step_completed", "reserve")]
    finally:
        drop_failing_trigger(storage_url, table)
    # Once the database accepts the write again, the saga resumes: charge runs again
    # (it was in flight), and its events are written once, with its completion.
    result = await EmittingSaga(config=config).resume(saga_id)
    assert result.status is SagaStatus.COMPLETED
    events = _events_of(await storage.list_outbox(limit=1000), saga_id)
    assert events == [
        ("saga.started", None),
        ("saga.step_completed", "reserve"),
        ("saga.step_completed", "charge"),
        ("test.charged", None),
        ("test.poison", None),
        ("saga.step_completed", "notify"),
        ("saga.completed", None),
    ]


async def test_a_step_result_that_is_not_json_completes_nothing_and_emits_nothing(
    config: SagaConfig,
) -> None:
    storage = config.storage
    result = await EmittingSaga(config=config).run({"n": 1, "bad_result": True})
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "charge"
    assert "receipt" in (result.error or "")
    record = await storage.load(result.saga_id)
    assert record is not None
    assert record.steps["charge"].status is StepStatus.FAILED
    assert record.steps["charge"].result is None
    assert "receipt" not in record.context
    assert (TransitionKind.STEP_COMPLETED, "charge") not in [
        (h.kind, h.step) for h in record.history
    ]
    events = _events_of(await storage.list_outbox(limit=1000), result.saga_id)
    assert events == [
        ("saga.started", None),
        ("saga.step_completed", "reserve"),
        ("saga.compensated", None),
    ]


# --------------------------------------------------------------------------- the worker


@pytest.mark.redis
async def test_a_worker_writes_and_relays_outbox_events_with_SAGAZ_OUTBOX(
    tmp_path: Path, redis_client: Any
) -> None:
    """``sagaz worker`` builds its config from the SAGAZ_* variables: with
    SAGAZ_OUTBOX=1 the sagas it runs write their events, and --broker-url relays them."""
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    config = SagaConfig(storage_url=url, outbox=True)
    storage = config.storage
    stream = f"sagaz.test.durable.{uuid.uuid4().hex}"
    n = 5
    try:
        saga = EmittingSaga(config=config)
        ids = [(await start_saga(saga, {"n": i}, run=False))[0] for i in range(n)]
        with workers_cleanup() as started:
            worker = Worker(
                url,
                tmp_path,
                tmp_path / "run.log",
                name="worker",
                env={"SAGAZ_OUTBOX": "1"},
                extra=["--broker-url", f"{REDIS_URL}?stream={stream}"],
            )
            started.append(worker)
            deadline = time.monotonic() + 30
            while await storage.list_sagas(
                SagaQuery(status=(SagaStatus.PENDING, SagaStatus.RUNNING), limit=1)
            ):
                assert worker.alive(), worker.output()
                assert time.monotonic() < deadline, worker.output()
                await asyncio.sleep(0.1)
            outbox = await storage.list_outbox(limit=1000)
            assert len(outbox) == n * len(EMITTING_EVENTS), (
                f"{len(outbox)} outbox events for {n} sagas run by `sagaz worker` with "
                "SAGAZ_OUTBOX=1: the worker ignores SAGAZ_OUTBOX"
            )
            while (await storage.outbox_counts())[OutboxStatus.PENDING]:
                assert time.monotonic() < deadline + 15, worker.output()
                await asyncio.sleep(0.1)
            assert worker.stop() == 0, worker.output()
        entries = await redis_client.xrange(stream, "-", "+")
    finally:
        await redis_client.delete(stream)
        await storage.close()
    assert {f["sagaz-event-id"] for _, f in entries} == {r.event.event_id for r in outbox}
    assert {f["sagaz-saga-id"] for _, f in entries} == set(ids)
