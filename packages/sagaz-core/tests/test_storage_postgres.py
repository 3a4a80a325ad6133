"""The PostgreSQL storage backend, on a real server (127.0.0.1:5432, user postgres).

The session creates its own database (``sagaz_test_<random>``) next to ``test`` and drops it
at the end, and every test starts from empty tables, so nothing here touches data of other
users of the server. Tests that need a fresh, unmigrated database create (and drop) one
more. Without a reachable server the tests skip, except under ``CI=true``, where they
fail. ``SAGAZ_TEST_POSTGRES_URL`` points them at another server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from copy import deepcopy
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

from sagaz.core import Saga, SagaConfig  # noqa: E402
from sagaz.core.errors import ConfigurationError, StorageError  # noqa: E402
from sagaz.core.records import (  # noqa: E402
    NewSaga,
    OutboxEvent,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
)
from sagaz.core.status import SagaStatus, StepStatus  # noqa: E402
from sagaz.core.storage import InMemorySagaStorage, SagaStorage, storage_from_url  # noqa: E402
from sagaz.core.storage.base import LeaseLostError  # noqa: E402
from sagaz.core.storage.migrations_postgres import MIGRATIONS, SCHEMA_VERSION  # noqa: E402
from sagaz.core.storage.postgres import PostgresSagaStorage  # noqa: E402

pytestmark = pytest.mark.postgres

K = TransitionKind
RUNNING = SagaStatus.RUNNING
PENDING = SagaStatus.PENDING
EPOCH = 1_700_000_000.0
ADMIN_URL = os.environ.get("SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = (
    "sagaz_sagas",
    "sagaz_steps",
    "sagaz_history",
    "sagaz_trigger_events",
    "sagaz_outbox",
    "sagaz_inbox",
)


# --------------------------------------------------------------------------- the server


def _url_for(dbname: str) -> str:
    params = conninfo_to_dict(ADMIN_URL)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _admin() -> Any:
    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def create_database(prefix: str = "sagaz_test") -> str:
    """A new empty database on the test server; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL, once the server answers; skip (or fail under CI=true) otherwise."""
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = (
            f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip()}); start it "
            "(see 'Services the tests use' in README.md) or set SAGAZ_TEST_POSTGRES_URL"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ADMIN_URL


@pytest.fixture(scope="session")
def database(pg_server: str) -> Iterator[tuple[str, str]]:
    """(name, url) of this session's database, migrated once."""
    name = create_database()
    url = _url_for(name)

    async def migrate() -> None:
        async with PostgresSagaStorage(url) as storage:
            assert await storage.migrate() == [m.version for m in MIGRATIONS]

    asyncio.run(migrate())
    try:
        yield name, url
    finally:
        drop_database(name)


@pytest.fixture
def db_url(database: tuple[str, str]) -> str:
    """The session database's URL, its tables emptied."""
    _, url = database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    return url


@pytest.fixture
async def storage(db_url: str) -> AsyncIterator[PostgresSagaStorage]:
    store = PostgresSagaStorage(db_url, pool_min=1, pool_max=4)
    await store.ensure_open()
    try:
        yield store
    finally:
        await store.close()


def acting_as(storage: SagaStorage, owner: str) -> SagaStorage:
    """Make ``storage`` act as another lease owner (another worker process)."""
    storage._owner = (os.getpid(), owner)
    return storage


@pytest.fixture
async def other(db_url: str) -> AsyncIterator[PostgresSagaStorage]:
    """A second storage on the same database, as another worker process."""
    store = acting_as(PostgresSagaStorage(db_url, pool_min=1, pool_max=4), "worker-b")
    assert isinstance(store, PostgresSagaStorage)
    try:
        yield store
    finally:
        await store.close()


def backends_of(conn: Any, dbname: str) -> list[tuple[int, str, str | None]]:
    """(pid, state, wait_event_type) of the sessions connected to ``dbname``."""
    rows = conn.execute(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


# --------------------------------------------------------------------------- helpers


class Clock:
    """Transitions with explicit, increasing timestamps (the same on every backend)."""

    def __init__(self, start: float = EPOCH) -> None:
        self.now = start

    def __call__(
        self,
        kind: TransitionKind,
        step: str | None = None,
        attempt: int = 0,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Transition:
        self.now += 0.125
        return Transition(kind, step, attempt, result, error, at=self.now)


def new_saga(
    saga_id: str,
    *,
    name: str = "Order",
    status: SagaStatus = RUNNING,
    key: str | None = None,
    correlation_id: str | None = None,
    created_at: float = EPOCH,
    context: dict[str, Any] | None = None,
) -> NewSaga:
    return NewSaga(
        saga_id,
        name,
        {"order_id": saga_id} if context is None else context,
        status,
        correlation_id,
        key,
        created_at=created_at,
    )


def normalised(value: Any, storage: SagaStorage) -> Any:
    """``value`` with what legitimately differs between two storages made equal: this
    storage's owner id reads ``<me>``, a wall-clock lease expiry reads -1."""
    if isinstance(value, SagaRecord):
        owner = value.lease_owner
        return dataclasses.replace(
            value,
            lease_owner="<me>" if owner == storage.owner_id else owner,
            lease_expires_at=None if value.lease_expires_at is None else -1.0,
        )
    if isinstance(value, list | tuple):
        return type(value)(normalised(v, storage) for v in value)
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value).replace(storage.owner_id, "<me>"))
    return value


async def outcome(call: Any) -> Any:
    """The value of awaiting ``call``, or the exception it raised."""
    try:
        return await call
    except Exception as exc:
        return exc


# --------------------------------------------------------------------------- URL and options


def test_from_url_takes_pool_options_and_passes_the_rest_to_libpq() -> None:
    s = PostgresSagaStorage.from_url(
        "postgresql://app:s3cret@db.internal:6543/sagas"
        "?sslmode=prefer&pool_min=2&pool_max=20&pool_timeout=7.5&application_name=api"
        "&migrate_on_open=false"
    )
    assert (s.pool_min, s.pool_max, s.pool_timeout, s.migrate_on_open) == (2, 20, 7.5, False)
    params = conninfo_to_dict(s._conninfo)
    assert params == {
        "user": "app",
        "password": "s3cret",
        "host": "db.internal",
        "port": "6543",
        "dbname": "sagas",
        "sslmode": "prefer",
        "application_name": "api",
    }
    assert "s3cret" not in s.dsn
    assert "s3cret" not in repr(s)
    defaults = PostgresSagaStorage.from_url("postgres://localhost/x")
    assert (defaults.pool_min, defaults.pool_max, defaults.pool_timeout) == (1, 10, 30.0)
    assert defaults.migrate_on_open is True
    assert conninfo_to_dict(defaults._conninfo) == {"host": "localhost", "dbname": "x"}
    driver = PostgresSagaStorage.from_url("postgresql+psycopg://u@h/d?migrate_on_open=1")
    assert conninfo_to_dict(driver._conninfo) == {"user": "u", "host": "h", "dbname": "d"}
    assert isinstance(storage_from_url("postgresql://u@h/d?pool_max=3"), PostgresSagaStorage)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/d?pool_max=many",
        "postgresql://h/d?pool_timeout=soon",
        "postgresql://h/d?migrate_on_open=maybe",
        "postgresql://h/d?pool_min=5&pool_max=2",
        "postgresql://h/d?pool_max=0",
        "postgresql://h/d?pool_timeout=0",
        "mysql://h/d",
    ],
)
def test_bad_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        PostgresSagaStorage.from_url(url)


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ConfigurationError, match="pool_min"):
        PostgresSagaStorage("", pool_min=-1)
    with pytest.raises(ConfigurationError, match="pool_timeout"):
        PostgresSagaStorage("", pool_timeout=-3)


async def test_unreachable_server_is_a_storage_error() -> None:
    # A port nothing listens on: connecting fails at once, with the reason and a hint.
    store = PostgresSagaStorage("postgresql://postgres@127.0.0.1:9/x", pool_timeout=5)
    with pytest.raises(StorageError, match="could not connect"):
        await store.load("x")
    assert not store.is_open


# --------------------------------------------------------------------------- same as memory


async def scenario_happy_path(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    new = new_saga("saga-1", key="order-1", correlation_id="corr-1", created_at=t.now)
    out.append(await s.create_saga(new, [t(K.SAGA_STARTED), t(K.STEP_STARTED, "reserve", 1)]))
    out.append(await s.load("saga-1"))
    ctx = {"order_id": "saga-1", "reservation": "r-1", "amount": 12.5, "tags": ["a", "é"]}
    res = {"reservation": "r-1", "nested": {"x": [1, 2.25, None, True]}}
    out.append(
        await s.record(
            "saga-1",
            [t(K.STEP_COMPLETED, "reserve", 1, result=res), t(K.STEP_STARTED, "charge", 1)],
            ctx,
        )
    )
    out.append(await s.load("saga-1"))
    out.append(
        await s.record(
            "saga-1", [t(K.STEP_COMPLETED, "charge", 1, result={}), t(K.STEP_STARTED, "ship", 1)]
        )
    )
    out.append(await s.record("saga-1", [t(K.STEP_COMPLETED, "ship", 1), t(K.SAGA_COMPLETED)]))
    out.append(await s.load("saga-1"))
    out.append(await outcome(s.record("saga-1", [t(K.SAGA_RESUMED)])))  # lease released
    return out


async def scenario_retries_and_compensation(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-2", created_at=t.now), [t(K.SAGA_STARTED)])
    await s.record("saga-2", [t(K.STEP_STARTED, "a", 1)])
    await s.record("saga-2", [t(K.STEP_COMPLETED, "a", 1, result={"a": 1})])
    await s.record("saga-2", [t(K.STEP_STARTED, "b", 1)])
    await s.record("saga-2", [t(K.STEP_FAILED, "b", 1, error="TimeoutError: slow")])
    await s.record("saga-2", [t(K.STEP_STARTED, "b", 2)])
    out.append(await s.load("saga-2"))
    await s.record(
        "saga-2",
        [
            t(K.STEP_FAILED, "b", 2, error="ValueError: it's 'declined'"),
            t(K.SAGA_COMPENSATING, "b", error="ValueError: it's 'declined'"),
            t(K.COMPENSATION_STARTED, "a", 1),
        ],
    )
    out.append(await s.load("saga-2"))
    await s.record("saga-2", [t(K.COMPENSATION_FAILED, "a", 1, error="IOError: down")])
    await s.record("saga-2", [t(K.COMPENSATION_STARTED, "a", 2)])
    await s.record("saga-2", [t(K.COMPENSATION_COMPLETED, "a", 2), t(K.SAGA_COMPENSATED)])
    out.append(await s.load("saga-2"))
    return out


async def scenario_compensation_fails(s: SagaStorage, t: Clock) -> list[Any]:
    await s.create_saga(
        new_saga("saga-3", created_at=t.now),
        [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1), t(K.STEP_STARTED, "b", 1)],
    )
    await s.record(
        "saga-3",
        [
            t(K.STEP_COMPLETED, "a", 1, result={"x": [1, 2, {"y": None}]}),
            t(K.STEP_FAILED, "b", 1, error="RuntimeError: boom"),
            t(K.SAGA_COMPENSATING, "b", error="RuntimeError: boom"),
        ],
    )
    await s.record(
        "saga-3",
        [
            t(K.COMPENSATION_STARTED, "a", 1),
            t(K.COMPENSATION_FAILED, "a", 1, error="IOError: refund failed"),
            t(K.SAGA_FAILED, "a", error="IOError: refund failed"),
        ],
    )
    return [await s.load("saga-3"), await s.list_sagas()]


async def scenario_recovery_and_cancelled_steps(s: SagaStorage, t: Clock) -> list[Any]:
    await s.create_saga(
        new_saga("saga-4", created_at=t.now),
        [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1), t(K.STEP_STARTED, "b", 1)],
    )
    await s.record("saga-4", [t(K.SAGA_RESUMED), t(K.STEP_STARTED, "a", 1)])
    await s.record(
        "saga-4",
        [
            t(K.STEP_COMPLETED, "a", 1, result={"a": "done"}),
            t(K.STEP_FAILED, "b", 1, error="KeyError: 'sku'"),
            t(K.STEP_STARTED, "c", 1),
            t(K.STEP_CANCELLED, "c", 1, error="CancelledError: sibling failed"),
            t(K.SAGA_COMPENSATING, "b", error="KeyError: 'sku'"),
        ],
    )
    await s.record("saga-4", [t(K.SAGA_RESUMED), t(K.COMPENSATION_STARTED, "a", 1)])
    first = await s.load("saga-4")
    await s.record("saga-4", [t(K.COMPENSATION_COMPLETED, "a", 1), t(K.SAGA_COMPENSATED)])
    return [first, await s.load("saga-4")]


async def scenario_context_and_empty_writes(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-6", created_at=t.now), [t(K.SAGA_STARTED)])
    out.append(await s.record("saga-6", [], {"nested": {"é": "ünïcode ✓", "n": [1.5, None]}}))
    out.append(await s.load("saga-6"))
    out.append(await s.record("saga-6", []))  # nothing but a lease renewal
    out.append(await s.load("saga-6"))
    out.append(await s.record("unknown", [t(K.SAGA_STARTED)], {"a": 1}))
    out.append(await s.load("unknown"))
    return out


async def scenario_pending_then_claimed(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-7", status=PENDING, created_at=t.now))
    out.append(await s.load("saga-7"))
    out.append(await outcome(s.record("saga-7", [t(K.SAGA_STARTED)])))  # unleased: fenced
    out.append(await s.claim("saga-7"))
    out.append(await s.record("saga-7", [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)]))
    out.append(await s.load("saga-7"))
    return out


async def scenario_finished_at_creation(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = [
        await s.create_saga(
            new_saga("saga-5", created_at=t.now),
            [
                t(K.SAGA_STARTED),
                t(K.STEP_STARTED, "only", 1),
                t(K.STEP_COMPLETED, "only", 1, result={"ok": True}),
                t(K.SAGA_COMPLETED),
            ],
        )
    ]
    out.append(await s.load("saga-5"))
    out.append(await outcome(s.record("saga-5", [t(K.SAGA_RESUMED)])))
    return out


async def scenario_reopen(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-8", created_at=t.now), [t(K.SAGA_STARTED)])
    out.append(await s.reopen("saga-8", t(K.SAGA_RETRIED, "a")))  # not FAILED: None
    await s.record(
        "saga-8",
        [
            t(K.STEP_STARTED, "a", 1),
            t(K.STEP_FAILED, "a", 1, error="E: x"),
            t(K.SAGA_COMPENSATING, "a", error="E: x"),
            t(K.SAGA_FAILED, "a", error="F: y"),
        ],
    )
    out.append(await s.reopen("saga-8", t(K.SAGA_RETRIED, "a")))
    out.append(await s.record("saga-8", [t(K.STEP_STARTED, "a", 2)]))
    out.append(await s.reopen("nope", t(K.SAGA_RETRIED)))
    return out


async def scenario_outbox(s: SagaStorage, t: Clock) -> list[Any]:
    def ev(saga_id: str, n: int) -> OutboxEvent:
        return OutboxEvent(f"{saga_id}-e{n}", saga_id, f"type.{n}", {"n": n}, "corr", EPOCH + n)

    await s.create_saga(new_saga("o-1", created_at=t.now), [t(K.SAGA_STARTED)], [ev("o-1", 1)])
    await s.create_saga(new_saga("o-2", created_at=t.now), [t(K.SAGA_STARTED)], [ev("o-2", 1)])
    await s.record("o-1", [t(K.STEP_STARTED, "a", 1)], None, [ev("o-1", 2), ev("o-1", 3)])
    await s.record("o-2", [t(K.STEP_STARTED, "a", 1)], None, [ev("o-2", 2)])
    # The in-memory backend returns its live records: observe copies.
    out: list[Any] = [deepcopy(await s.list_outbox()), await s.outbox_counts()]
    out.append(deepcopy(await s.claim_outbox(10)))
    out.append(deepcopy(await s.claim_outbox(10)))  # claimed, and later ones wait for them
    await s.outbox_sent(["o-1-e1"])
    out.append(deepcopy(await s.claim_outbox(10)))
    await s.outbox_failed("o-2-e1", "ConnectionError: broker down", None)  # dead-lettered
    out.append(deepcopy(await s.claim_outbox(10)))  # a DEAD event does not block its saga
    out.append(deepcopy(await s.list_outbox(OutboxStatus.DEAD)))
    out.append(await s.outbox_counts())
    return out


SCENARIOS = [
    scenario_happy_path,
    scenario_retries_and_compensation,
    scenario_compensation_fails,
    scenario_recovery_and_cancelled_steps,
    scenario_context_and_empty_writes,
    scenario_pending_then_claimed,
    scenario_finished_at_creation,
    scenario_reopen,
    scenario_outbox,
]


def _without_outbox_times(value: Any) -> Any:
    # sent_at is the wall clock of the call; equal up to that.
    if isinstance(value, list):
        return [_without_outbox_times(v) for v in value]
    if hasattr(value, "sent_at") and hasattr(value, "event"):
        return dataclasses.replace(value, sent_at=None if value.sent_at is None else -1.0)
    return value


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
async def test_same_as_memory(storage: PostgresSagaStorage, scenario: Any) -> None:
    memory = InMemorySagaStorage()
    expected = normalised(await scenario(memory, Clock()), memory)
    got = normalised(await scenario(storage, Clock()), storage)
    assert _without_outbox_times(got) == _without_outbox_times(expected)


def _random_writes(rng: random.Random) -> list[tuple[list[Transition], Any, list[OutboxEvent]]]:
    """A random sequence of writes of one saga: any transitions, in any order."""
    clock = Clock(EPOCH + rng.randrange(10**6) / 64)
    kinds = [k for k in TransitionKind if k.value not in {"saga_completed", "saga_compensated"}]
    writes = []
    for n in range(rng.randint(1, 7)):
        transitions = []
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(kinds)
            step = rng.choice(["a", "b", "c", "d", None])
            result = None
            if kind is K.STEP_COMPLETED and rng.random() < 0.7:
                result = {
                    "n": rng.randint(-(2**40), 2**40),
                    "f": rng.choice([0.1, -2.5, 1e-7, 123456.789012, 3.0]),
                    "s": rng.choice(["", "x", "ünï 'q' \"dq\" ✓", "a; b"]),
                    "l": [None, True, {"k": [1, 2]}],
                }
            error = rng.choice([None, None, "E: one", "F: 'two'; three", ""])
            transitions.append(clock(kind, step, rng.randint(0, 3), result, error))
        context = rng.choice([None, {"k": n, "nested": {"v": [n, "s"]}}])
        events = [
            OutboxEvent(f"ev-{uuid.uuid4().hex}", "r", f"t{i}", {"i": i}, None, clock.now)
            for i in range(rng.choice([0, 0, 1, 2]))
        ]
        writes.append((transitions, context, events))
    return writes


async def _replay(
    s: SagaStorage, writes: list[tuple[list[Transition], Any, list[OutboxEvent]]]
) -> list[Any]:
    out: list[Any] = []
    for i, (transitions, context, events) in enumerate(writes):
        if i == 0:
            new = new_saga("r", created_at=EPOCH, context=context or {})
            out.append(await s.create_saga(new, transitions, events))
        else:
            out.append(await outcome(s.record("r", transitions, context, events)))
        out.append(await s.load("r"))
    out.append(await s.list_sagas())
    out.append([(r.seq, r.event, r.status) for r in await s.list_outbox()])
    return out


async def test_random_writes_read_back_as_in_memory(storage: PostgresSagaStorage) -> None:
    rng = random.Random(20240611)
    for _ in range(80):
        writes = _random_writes(rng)
        memory = InMemorySagaStorage()
        expected = normalised(await _replay(memory, writes), memory)
        async with storage._connection("empty the tables") as conn:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
        got = normalised(await _replay(storage, writes), storage)
        assert got == expected, writes


async def test_concurrent_writes_of_one_saga_apply_in_call_order(
    storage: PostgresSagaStorage,
) -> None:
    # The engine may call record() for one saga from several tasks at once (steps that
    # run in parallel); the writes must land in the order they were called.
    memory = InMemorySagaStorage()
    t = Clock()
    batches = [[t(K.SAGA_STARTED)]]
    for i in range(30):
        step = f"s{i % 4}"
        batches.append([t(K.STEP_STARTED, step, i + 1)])
        batches.append([t(K.STEP_COMPLETED, step, i + 1, result={"i": i})])
    batches.append([t(K.SAGA_COMPLETED)])
    for s in (memory, storage):
        await s.create_saga(new_saga("c-1"), batches[0])
        await asyncio.gather(*(s.record("c-1", b) for b in batches[1:]))
    got, expected = await storage.load("c-1"), await memory.load("c-1")
    assert normalised(got, storage) == normalised(expected, memory)
    assert got is not None
    assert [h.seq for h in got.history] == list(range(1, 63))


# --------------------------------------------------------------------------- creating sagas


async def test_fifty_concurrent_creates_with_one_key_make_one_saga(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()

    def start(i: int, s: PostgresSagaStorage) -> Any:
        new = new_saga(f"dup-{i}", key="order-42")
        event = OutboxEvent(f"dup-ev-{i}", f"dup-{i}", "saga.started", {"i": i})
        return s.create_saga(new, [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)], [event])

    # Two pools (two "processes") racing, 25 creates each.
    results = await asyncio.gather(*(start(i, storage if i % 2 else other) for i in range(50)))
    ids = {saga_id for saga_id, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    (winner,) = ids
    assert len(await storage.list_sagas()) == 1
    record = await storage.load(winner)
    assert record is not None
    assert len(record.history) == 2
    assert [r.event.saga_id for r in await storage.list_outbox()] == [winner]


async def test_a_repeated_start_writes_nothing(storage: PostgresSagaStorage) -> None:
    t = Clock()
    first = await storage.create_saga(new_saga("k-1", key="k"), [t(K.SAGA_STARTED)])
    again = await storage.create_saga(
        new_saga("k-2", key="k"),
        [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)],
        [OutboxEvent("k-ev", "k-2", "saga.started", {})],
    )
    assert first == ("k-1", True)
    assert again == ("k-1", False)
    assert await storage.load("k-2") is None
    record = await storage.load("k-1")
    assert record is not None
    assert len(record.history) == 1
    assert not record.steps
    assert await storage.list_outbox() == []
    # Keys are per saga name; sagas without a key never collide.
    assert await storage.create_saga(new_saga("k-3", name="Other", key="k")) == ("k-3", True)
    assert await storage.create_saga(new_saga("k-4")) == ("k-4", True)
    assert await storage.create_saga(new_saga("k-5")) == ("k-5", True)


async def test_reusing_a_saga_id_is_an_error(storage: PostgresSagaStorage) -> None:
    await storage.create_saga(new_saga("same"))
    with pytest.raises(StorageError, match="already recorded"):
        await storage.create_saga(new_saga("same", name="Another"))


async def test_leases_at_creation(storage: PostgresSagaStorage) -> None:
    t = Clock()
    before = time.time()
    await storage.create_saga(new_saga("run"), [t(K.SAGA_STARTED)])
    await storage.create_saga(new_saga("pend", status=PENDING))
    await storage.create_saga(new_saga("done"), [t(K.SAGA_STARTED), t(K.SAGA_FAILED, error="E: x")])
    run, pend, done = [await storage.load(i) for i in ("run", "pend", "done")]
    assert run is not None
    assert run.lease_owner == storage.owner_id
    assert run.lease_expires_at is not None
    assert before + storage.lease_seconds <= run.lease_expires_at <= time.time() + 31
    assert pend is not None
    assert pend.lease_owner is None
    assert pend.lease_expires_at is None
    assert done is not None
    assert done.lease_owner is None
    assert done.status is SagaStatus.FAILED


async def test_values_that_are_not_json_are_refused_with_their_name(
    storage: PostgresSagaStorage,
) -> None:
    t = Clock()
    with pytest.raises(StorageError, match="context of saga 'j'"):
        await storage.create_saga(new_saga("j", context={"when": object()}))
    with pytest.raises(StorageError, match="context of saga 'j'"):
        await storage.create_saga(new_saga("j", context={"x": float("nan")}))
    await storage.create_saga(new_saga("j"), [t(K.SAGA_STARTED)])
    with pytest.raises(StorageError, match="result of step 'a' of saga 'j'"):
        await storage.record("j", [t(K.STEP_COMPLETED, "a", 1, result={"s": {1, 2}})])
    with pytest.raises(StorageError, match="payload of outbox event 'bad'"):
        await storage.record("j", [], None, [OutboxEvent("e", "j", "bad", {"b": b"x"})])
    # PostgreSQL's jsonb refuses NUL characters: a StorageError that says so.
    with pytest.raises(StorageError, match="NUL"):
        await storage.record("j", [], {"s": "a\x00b"})
    record = await storage.load("j")
    assert record is not None
    assert record.context == {"order_id": "j"}
    assert len(record.history) == 1


async def test_nul_characters_in_error_messages_are_replaced(storage: PostgresSagaStorage) -> None:
    # PostgreSQL text cannot hold NUL; an exception message with one must not make the
    # write (and so the saga) fail.
    t = Clock()
    await storage.create_saga(new_saga("nul"), [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)])
    await storage.record(
        "nul",
        [t(K.STEP_FAILED, "a", 1, error="E: a\x00b"), t(K.SAGA_FAILED, "a", error="F: \x00")],
    )
    record = await storage.load("nul")
    assert record is not None
    assert record.steps["a"].error == "E: a\ufffdb"
    assert record.error == "F: \ufffd"
    assert record.history[-1].error == "F: \ufffd"


# --------------------------------------------------------------------------- leases


async def test_claim_is_exclusive_until_the_lease_expires(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()
    await storage.create_saga(new_saga("l-1", status=PENDING))
    mine = await storage.claim("l-1")
    assert mine is not None
    assert mine.lease_owner == storage.owner_id
    assert await other.claim("l-1") is None
    assert await storage.claim("l-1") is not None  # already ours: renewed
    assert await other.claim("unknown") is None
    # A crashed owner's lease expires; another worker takes the saga over.
    storage.lease_seconds = 0.2
    await storage.claim("l-1")
    await asyncio.sleep(0.3)
    taken = await other.claim("l-1")
    assert taken is not None
    assert taken.lease_owner == other.owner_id
    # The old owner is fenced: nothing it writes lands.
    with pytest.raises(LeaseLostError, match="leased by worker-b"):
        await storage.record(
            "l-1",
            [t(K.STEP_STARTED, "a", 1)],
            {"x": 1},
            [OutboxEvent("fenced", "l-1", "saga.step", {})],
        )
    after = await other.load("l-1")
    assert after is not None
    assert after.history == []
    assert after.context == {"order_id": "l-1"}
    assert await other.list_outbox() == []
    assert await other.record("l-1", [t(K.SAGA_STARTED)]) is False


async def test_record_renews_and_terminal_record_releases(storage: PostgresSagaStorage) -> None:
    now = time.time()
    await storage.create_saga(new_saga("l-2"), [Transition(K.SAGA_STARTED, at=now)])
    await storage.record("l-2", [Transition(K.STEP_STARTED, "a", 1, at=now + 100)])
    record = await storage.load("l-2")
    assert record is not None
    assert record.lease_expires_at == now + 100 + storage.lease_seconds
    await storage.record("l-2", [Transition(K.SAGA_COMPLETED, at=now + 101)])
    record = await storage.load("l-2")
    assert record is not None
    assert record.lease_owner is None
    assert record.lease_expires_at is None
    assert await storage.claim("l-2") is None  # finished


async def test_renew_and_release(storage: PostgresSagaStorage, other: PostgresSagaStorage) -> None:
    t = Clock()
    for i in range(3):
        await storage.create_saga(new_saga(f"r-{i}"), [t(K.SAGA_STARTED)])
    await other.create_saga(new_saga("theirs"), [t(K.SAGA_STARTED)])
    await storage.create_saga(new_saga("over"), [t(K.SAGA_STARTED), t(K.SAGA_COMPLETED)])
    storage.lease_seconds = 0.2
    assert await storage.renew_leases() == 3
    storage.lease_seconds = 30.0
    await asyncio.sleep(0.3)
    assert await storage.renew_leases() == 3  # renewal extends even an expired lease
    for i in range(3):
        assert await other.claim(f"r-{i}") is None
    assert await storage.release_leases(["r-0", "theirs", "unknown"]) == 1
    assert await other.claim("r-0") is not None
    assert await storage.release_leases() == 2
    assert await storage.release_leases() == 0
    record = await storage.load("r-1")
    assert record is not None
    assert record.lease_owner is None


async def test_request_cancel_is_returned_by_the_next_write(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()
    await storage.create_saga(new_saga("x-1"), [t(K.SAGA_STARTED)])
    assert await storage.record("x-1", [t(K.STEP_STARTED, "a", 1)]) is False
    assert await other.request_cancel("x-1") is True  # any process may ask
    assert await storage.record("x-1", [t(K.STEP_COMPLETED, "a", 1)]) is True
    record = await storage.load("x-1")
    assert record is not None
    assert record.cancel_requested is True
    await storage.record("x-1", [t(K.SAGA_COMPENSATED)])
    assert await other.request_cancel("x-1") is False  # finished
    assert await other.request_cancel("unknown") is False


async def test_reopen_leases_a_failed_saga_to_the_caller(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()
    await storage.create_saga(
        new_saga("f-1"),
        [t(K.SAGA_STARTED), t(K.SAGA_COMPENSATING, "a", error="E: a"), t(K.SAGA_FAILED, "a")],
    )
    record = await other.reopen("f-1", t(K.SAGA_COMPENSATING, "a"))
    assert record is not None
    assert record.status is SagaStatus.COMPENSATING
    assert record.lease_owner == other.owner_id
    assert record.history[-1].seq == 4
    assert record.error == "E: a"
    assert record.failed_step == "a"
    with pytest.raises(LeaseLostError):
        await storage.record("f-1", [t(K.SAGA_COMPENSATED)])
    assert await other.reopen("f-1", t(K.SAGA_RETRIED)) is None  # no longer FAILED


async def test_claim_runnable_takes_oldest_free_sagas(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()
    for i in range(6):
        await other.create_saga(
            new_saga(f"q-{i}", status=PENDING, created_at=EPOCH + i, name="A" if i % 3 else "B")
        )
    await other.create_saga(new_saga("mine-b", created_at=EPOCH - 5), [t(K.SAGA_STARTED)])
    await other.create_saga(new_saga("done", created_at=EPOCH - 9, status=SagaStatus.COMPLETED))
    got = await storage.claim_runnable(3)
    assert [r.saga_id for r in got] == ["q-0", "q-1", "q-2"]  # other's live lease skipped
    assert all(r.lease_owner == storage.owner_id for r in got)
    assert [r.saga_id for r in await storage.claim_runnable(10, ["B"])] == ["q-3"]
    assert [r.saga_id for r in await storage.claim_runnable(10)] == ["q-4", "q-5"]
    assert await storage.claim_runnable(10) == []  # its own leases are not claimed again
    assert await storage.claim_runnable(0) == []
    # A crashed worker's running saga comes with its steps and history.
    await other.record("mine-b", [t(K.STEP_STARTED, "a", 1)])
    other.lease_seconds = 0.1
    await other.renew_leases()
    await asyncio.sleep(0.2)
    (taken,) = await storage.claim_runnable(10)
    assert taken.saga_id == "mine-b"
    assert taken.steps["a"].status is StepStatus.RUNNING
    assert [h.kind for h in taken.history] == [K.SAGA_STARTED, K.STEP_STARTED]


@pytest.mark.parametrize("claimers", [2, 4])
async def test_concurrent_claimers_never_get_the_same_saga(db_url: str, claimers: int) -> None:
    stores = [
        acting_as(PostgresSagaStorage(db_url, pool_min=1, pool_max=3), f"claimer-{i}")
        for i in range(claimers)
    ]
    try:
        seed = stores[0]
        sem = asyncio.Semaphore(16)

        async def create(i: int) -> None:
            async with sem:
                await seed.create_saga(
                    new_saga(f"w-{i:04}", status=PENDING, created_at=EPOCH + i / 1000)
                )

        await asyncio.gather(*(create(i) for i in range(1000)))
        claimed: list[list[str]] = [[] for _ in stores]

        async def drain(n: int) -> None:
            while True:
                batch = await stores[n].claim_runnable(17)
                if not batch:
                    return
                ids = [r.saga_id for r in batch]
                assert ids == sorted(ids)  # oldest first
                claimed[n].extend(ids)

        await asyncio.gather(*(drain(n) for n in range(claimers)))
        everything = [i for ids in claimed for i in ids]
        assert len(everything) == len(set(everything)) == 1000
        assert all(claimed)  # every claimer got work (SKIP LOCKED: nobody waited it out)
    finally:
        for s in stores:
            await s.close()


# --------------------------------------------------------------------------- outbox and inbox


async def test_outbox_publishes_each_saga_in_order(storage: PostgresSagaStorage) -> None:
    t = Clock()
    for saga in ("A", "B"):
        await storage.create_saga(
            new_saga(saga),
            [t(K.SAGA_STARTED)],
            [OutboxEvent(f"{saga}{n}", saga, "e", {"n": n}) for n in range(1, 4)],
        )
    published: list[str] = []
    for _ in range(20):
        batch = await storage.claim_outbox(10)
        if not batch:
            break
        assert len({r.event.saga_id for r in batch}) == len(batch)  # one per saga at a time
        published += [r.event.event_id for r in batch]
        await storage.outbox_sent([r.event.event_id for r in batch])
    assert published == ["A1", "B1", "A2", "B2", "A3", "B3"]
    counts = await storage.outbox_counts()
    assert counts == {OutboxStatus.PENDING: 0, OutboxStatus.SENT: 6, OutboxStatus.DEAD: 0}
    sent = await storage.list_outbox(OutboxStatus.SENT, limit=2)
    assert [r.event.event_id for r in sent] == ["A1", "A2"]
    assert all(r.attempts == 1 and r.sent_at is not None for r in sent)


async def test_outbox_retry_dead_letter_and_claim_expiry(storage: PostgresSagaStorage) -> None:
    t = Clock()
    events = [OutboxEvent(f"e{n}", "S", "e", {"n": n}) for n in range(3)]
    await storage.create_saga(new_saga("S"), [t(K.SAGA_STARTED)], events)
    storage.lease_seconds = 0.2
    (first,) = await storage.claim_outbox(10)
    assert first.event.event_id == "e0"
    assert await storage.claim_outbox(10) == []  # claimed; later events wait
    await asyncio.sleep(0.3)
    (again,) = await storage.claim_outbox(10)  # the relay died: the claim expired
    assert again.event.event_id == "e0"
    await storage.outbox_failed("e0", "ConnectionError: down", time.time() + 60)
    assert await storage.claim_outbox(10) == []  # not due, and it blocks e1
    (pending,) = [r for r in await storage.list_outbox() if r.event.event_id == "e0"]
    assert (pending.status, pending.attempts, pending.last_error) == (
        OutboxStatus.PENDING,
        1,
        "ConnectionError: down",
    )
    await storage.outbox_failed("e0", "ValueError: poison", None)
    (next_one,) = await storage.claim_outbox(10)  # DEAD does not block
    assert next_one.event.event_id == "e1"
    assert [r.event.event_id for r in await storage.list_outbox(OutboxStatus.DEAD)] == ["e0"]
    counts = await storage.outbox_counts()
    assert counts == {OutboxStatus.PENDING: 2, OutboxStatus.SENT: 0, OutboxStatus.DEAD: 1}
    assert await storage.claim_outbox(0) == []
    assert await storage.list_outbox(limit=0) == []
    await storage.outbox_sent([])


async def test_concurrent_relays_claim_disjoint_events(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    t = Clock()
    for i in range(60):
        await storage.create_saga(
            new_saga(f"s{i}"), [t(K.SAGA_STARTED)], [OutboxEvent(f"ev{i}", f"s{i}", "e", {})]
        )
    a, b = await asyncio.gather(storage.claim_outbox(40), other.claim_outbox(40))
    ids = [r.event.event_id for r in a + b]
    assert len(ids) == len(set(ids)) == 60


async def test_inbox_drops_duplicates(storage: PostgresSagaStorage) -> None:
    assert await storage.inbox_seen("billing", "ev-1") is False
    assert await storage.inbox_mark("billing", "ev-1") is True
    assert await storage.inbox_seen("billing", "ev-1") is True
    assert await storage.inbox_seen("shipping", "ev-1") is False
    assert await storage.inbox_mark("billing", "ev-1") is False
    assert await storage.inbox_mark("shipping", "ev-1") is True
    results = await asyncio.gather(*(storage.inbox_mark("race", "ev-2") for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]


# ------------------------------------------------------------------ trigger events, listing


async def test_trigger_events(storage: PostgresSagaStorage) -> None:
    event = TriggerEvent("t-1", "orders", {"order_id": 7}, "corr-9", created_at=EPOCH)
    sagas = [
        new_saga("ts-1", name="B", status=PENDING, key="7", correlation_id="corr-9"),
        new_saga("ts-2", name="A", status=PENDING, key="7", correlation_id="corr-9"),
        new_saga("ts-3", name="A", status=PENDING, key="7"),  # same key, same batch
    ]
    results = await storage.record_trigger_event(event, sagas)
    assert results == [("ts-1", True), ("ts-2", True), ("ts-2", False)]
    assert event.saga_ids == ["ts-1", "ts-2", "ts-2"]
    again = TriggerEvent("t-2", "orders", {"order_id": 7}, "corr-9", created_at=EPOCH + 1)
    await storage.record_trigger_event(again, [new_saga("ts-4", name="A", key="7")])
    assert again.saga_ids == ["ts-2"]
    await storage.record_trigger_event(TriggerEvent("t-3", "refunds", {}, "corr-9"), [])
    found = await storage.find_trigger_events("corr-9")
    assert [e.event_id for e in found] == ["t-1", "t-2", "t-3"]
    assert found[0].payload == {"order_id": 7}
    assert found[0].saga_ids == ["ts-1", "ts-2", "ts-2"]
    assert [e.event_id for e in await storage.find_trigger_events("corr-9", "refunds")] == ["t-3"]
    assert await storage.find_trigger_events("nope") == []
    # Re-recording an event replaces it in place.
    await storage.record_trigger_event(TriggerEvent("t-1", "orders", {"v": 2}, "corr-9"), [])
    found = await storage.find_trigger_events("corr-9")
    assert [e.event_id for e in found] == ["t-1", "t-2", "t-3"]
    assert found[0].payload == {"v": 2}
    record = await storage.load("ts-2")
    assert record is not None
    assert record.status is PENDING
    assert record.lease_owner is None


async def test_list_sagas_as_in_memory(storage: PostgresSagaStorage) -> None:
    memory = InMemorySagaStorage()
    for s in (memory, storage):
        acting_as(s, "lister")
        t = Clock()
        for i in range(12):
            name = "A" if i % 2 else "B"
            created = EPOCH + (i // 3)  # ties on created_at keep insertion order
            await s.create_saga(
                new_saga(f"ls-{i}", name=name, correlation_id=f"c{i % 3}", created_at=created),
                [
                    Transition(K.SAGA_STARTED, at=EPOCH),
                    Transition(K.STEP_STARTED, "a", 1, at=EPOCH),
                ],
            )
            if i % 4 == 0:
                await s.record(f"ls-{i}", [t(K.SAGA_FAILED, "a", error="E: x")])
            elif i % 4 == 1:
                await s.record(f"ls-{i}", [t(K.STEP_COMPLETED, "a", 1), t(K.SAGA_COMPLETED)])
    queries = [
        None,
        SagaQuery(limit=5),
        SagaQuery(limit=5, offset=4),
        SagaQuery(limit=0),
        SagaQuery(status=SagaStatus.FAILED),
        SagaQuery(status=[SagaStatus.RUNNING, SagaStatus.COMPLETED]),
        SagaQuery(saga_name="A"),
        SagaQuery(correlation_id="c1", saga_name="B"),
        SagaQuery(created_after=EPOCH + 1, created_before=EPOCH + 3),
    ]
    for query in queries:
        got = await storage.list_sagas(query)
        expected = await memory.list_sagas(query)
        assert normalised(got, storage) == normalised(expected, memory), query
        assert all(r.history == [] for r in got)


# --------------------------------------------------------------------------- the engine


async def test_the_engine_runs_durably_on_postgres(storage: PostgresSagaStorage) -> None:
    calls: list[str] = []

    async def step(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": ctx["n"] + 1}

    def sync_step(ctx: dict[str, Any]) -> None:
        calls.append("b")

    async def boom(ctx: dict[str, Any]) -> None:
        raise ValueError("declined")

    async def undo(ctx: dict[str, Any]) -> None:
        calls.append("undo")

    config = SagaConfig(storage=storage, outbox=True)
    ok = Saga(name="Ok", config=config).add_step("a", step).add_step("b", sync_step)
    result = await ok.run({"n": 1}, idempotency_key="k-1")
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"n": 1, "a": 2}
    again = await ok.run({"n": 1}, idempotency_key="k-1")
    assert again.saga_id == result.saga_id
    assert again.created is False
    record = await storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert record.completed_steps == ["a", "b"]
    assert record.lease_owner is None
    types = [r.event.event_type for r in await storage.list_outbox()]
    assert types[0] == "saga.started"
    assert types[-1] == "saga.completed"

    bad = Saga(name="Bad", config=config).add_step("a", step, undo).add_step("b", boom)
    failed = await bad.run({"n": 5})
    assert failed.status is SagaStatus.COMPENSATED
    assert failed.failed_step == "b"
    record = await storage.load(failed.saga_id)
    assert record is not None
    assert record.compensated_steps == ["a"]
    assert record.error is not None
    assert "declined" in record.error
    assert calls == ["a", "b", "a", "undo"]


# --------------------------------------------------------------------------- migrations


async def test_migrations_are_versioned_and_idempotent(pg_server: str) -> None:
    name = create_database()
    url = _url_for(name)
    try:
        manual = PostgresSagaStorage(url, migrate_on_open=False)
        with pytest.raises(StorageError, match="sagaz migrate"):
            await manual.load("x")  # no schema yet: the error says what to do
        assert await manual.migrate() == list(range(1, SCHEMA_VERSION + 1))
        assert await manual.migrate() == []
        assert await manual.load("x") is None
        await manual.close()
        async with PostgresSagaStorage(url) as auto:
            assert await auto.migrate() == []  # nothing was left to apply on open
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT version FROM sagaz_schema_version").fetchall()
            assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
            conn.execute("INSERT INTO sagaz_schema_version VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
        with pytest.raises(StorageError, match="newer than this sagaz-core"):
            await PostgresSagaStorage(url).ensure_open()
    finally:
        drop_database(name)


_MIGRATING_PROCESS = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from sagaz.core.storage.postgres import PostgresSagaStorage

    async def main():
        url, start = sys.argv[1], float(sys.argv[2])
        storage = PostgresSagaStorage(url)
        while time.time() < start:
            await asyncio.sleep(0.005)
        applied = await storage.migrate()
        await storage.close()
        print(json.dumps(applied))

    asyncio.run(main())
    """
)


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_server: str) -> None:
    name = create_database()
    url = _url_for(name)
    try:
        start = time.time() + 2.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _MIGRATING_PROCESS, url, str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outputs = [p.communicate(timeout=60) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err
        applied = sorted(json.loads(out) for out, _ in outputs)
        assert applied == [[]] * 5 + [list(range(1, SCHEMA_VERSION + 1))]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM sagaz_schema_version").fetchone() == (
                SCHEMA_VERSION,
            )
    finally:
        drop_database(name)


async def test_many_first_uses_open_one_pool_and_migrate_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresSagaStorage(db_url, pool_min=1, pool_max=3)
    opened: list[int] = []
    migrations: list[int] = []
    real_open, real_migrate = store._open, store._migrate

    async def counting_open() -> None:
        opened.append(1)
        await real_open()

    async def counting_migrate(conn: Any) -> list[int]:
        migrations.append(1)
        return await real_migrate(conn)

    monkeypatch.setattr(store, "_open", counting_open)
    monkeypatch.setattr(store, "_migrate", counting_migrate)
    try:
        results = await asyncio.gather(*(store.load(f"x{i}") for i in range(40)))
        assert results == [None] * 40
        assert opened == [1]
        assert migrations == [1]
    finally:
        await store.close()
    # Closed and opened again: a new pool.
    await store.ping()
    assert len(opened) == 2
    await store.close()


# --------------------------------------------------------------------------- connections


async def test_a_cancelled_write_leaves_no_transaction_and_no_connection_out(
    storage: PostgresSagaStorage, database: tuple[str, str]
) -> None:
    dbname, url = database
    t = Clock()
    await storage.create_saga(new_saga("cx"), [t(K.SAGA_STARTED)])
    with psycopg.connect(url) as blocker, _admin() as admin:
        # Hold the saga's row lock so the write blocks inside PostgreSQL.
        blocker.execute("SELECT 1 FROM sagaz_sagas WHERE saga_id = 'cx' FOR UPDATE")
        task = asyncio.create_task(storage.record("cx", [t(K.STEP_STARTED, "a", 1)], {"v": 1}))
        for _ in range(200):
            await asyncio.sleep(0.02)
            if any(w == "Lock" for _, _, w in backends_of(admin, dbname)):
                break
        else:
            pytest.fail("the write never reached PostgreSQL")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        blocker_pid = blocker.info.backend_pid
        sessions = [s for s in backends_of(admin, dbname) if s[0] != blocker_pid]
        assert all(state == "idle" for _, state, _ in sessions), sessions
        blocker.rollback()
    pool = storage._pool
    assert pool is not None
    stats = pool.get_stats()
    assert stats["pool_available"] == stats["pool_size"]
    assert stats.get("requests_waiting", 0) == 0
    record = await storage.load("cx")
    assert record is not None
    assert len(record.history) == 1
    assert record.context == {"order_id": "cx"}
    assert await storage.record("cx", [t(K.STEP_STARTED, "a", 1)]) is False  # still usable


async def test_connections_are_all_returned_after_a_thousand_writes(
    db_url: str, database: tuple[str, str]
) -> None:
    dbname, _ = database
    pool_max = 4
    store = PostgresSagaStorage(db_url, pool_min=1, pool_max=pool_max)
    thief = acting_as(PostgresSagaStorage(db_url, pool_min=1, pool_max=1), "thief")
    rng = random.Random(7)
    outcomes: dict[str, int] = {"ok": 0, "lease_lost": 0, "storage_error": 0, "cancelled": 0}
    sem = asyncio.Semaphore(32)

    async def write(call: Any) -> None:
        roll = rng.random()
        try:
            if roll < 0.1:
                await asyncio.wait_for(call, timeout=rng.choice([0, 0.0005, 0.002]))
            else:
                await call
            outcomes["ok"] += 1
        except LeaseLostError:
            outcomes["lease_lost"] += 1
        except StorageError:
            outcomes["storage_error"] += 1
        except TimeoutError:
            outcomes["cancelled"] += 1

    async def saga(i: int) -> None:
        async with sem:
            t = Clock()
            sid = f"acc-{i}"
            await write(store.create_saga(new_saga(sid), [t(K.SAGA_STARTED)]))
            if i % 20 == 0:
                await thief.release_leases()
                await store.release_leases([sid])
                await thief.claim(sid)  # taken over: the next writes are fenced
            for n in range(3):
                context = {"bad": "nul\x00"} if rng.random() < 0.05 else {"n": n}
                await write(store.record(sid, [t(K.STEP_STARTED, f"s{n}", 1)], context))

    try:
        await asyncio.gather(*(saga(i) for i in range(250)))
        assert sum(outcomes.values()) == 1000
        assert outcomes["lease_lost"] > 0
        assert outcomes["storage_error"] > 0
        assert outcomes["cancelled"] > 0
        assert outcomes["ok"] > 800
        await thief.close()
        pool = store._pool
        assert pool is not None
        stats = pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"] <= pool_max
        with _admin() as admin:
            sessions = backends_of(admin, dbname)
            assert len(sessions) <= pool_max, sessions
            assert all(state == "idle" for _, state, _ in sessions), sessions
        assert await store.load("acc-1") is not None  # still serving
    finally:
        await thief.close()
        await store.close()
    with _admin() as admin:
        for _ in range(100):  # backends exit asynchronously
            if not backends_of(admin, dbname):
                break
            time.sleep(0.05)
        assert backends_of(admin, dbname) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_a_forked_child_opens_its_own_pool(storage: PostgresSagaStorage) -> None:
    t = Clock()
    await storage.create_saga(new_saga("parent"), [t(K.SAGA_STARTED)])
    parent_pool = storage._pool

    def in_child() -> int:
        async def main() -> None:
            await storage.create_saga(new_saga("child"), [t(K.SAGA_STARTED)])
            assert storage._pool is not None
            assert storage._pool is not parent_pool
            assert await storage.load("parent") is not None

        failures: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=run)  # a new event loop, as a forked worker has
        thread.start()
        thread.join(30)
        return 0 if not failures and not thread.is_alive() else 1

    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = in_child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connections were not touched by the child.
    assert storage._pool is parent_pool
    assert await storage.record("parent", [t(K.STEP_STARTED, "a", 1)]) is False
    assert await storage.load("child") is not None


async def test_ping_and_reopen_after_close(storage: PostgresSagaStorage) -> None:
    await storage.ping()
    await storage.close()
    assert not storage.is_open
    await storage.create_saga(new_saga("after-close"))  # opens again, lazily
    assert storage.is_open
    assert await storage.load("after-close") is not None
