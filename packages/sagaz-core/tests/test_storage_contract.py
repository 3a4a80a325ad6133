"""The storage contract: every backend records, and reads back, the same thing.

Every test here runs on each backend in ``BACKENDS``. The in-memory backend is the
reference: the ``same_as_memory`` tests run one sequence of calls on the backend under
test and on a fresh in-memory backend and require equal answers, so a SQL backend must
produce exactly the records :func:`sagaz.core.records.apply_transition` produces.

A backend is one entry in ``BACKENDS``: an async factory returning a new, empty,
unopened storage, with the marks it needs. PostgreSQL runs on the test server
(``SAGAZ_TEST_POSTGRES_URL``, default 127.0.0.1:5432 as user postgres) in a database of
this module's own (``sagaz_contract_<random>``, dropped at the end), its tables emptied
for every storage; without a reachable server those tests skip, except under
``CI=true``, where they fail. PostgreSQL-only behaviour (pools, many processes, SKIP
LOCKED, migrations) is tested in test_storage_postgres.py.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sagaz_durable_test_sagas import (
    PG_TABLES,
    pg_create_database,
    pg_drop_database,
    pg_reachable,
    pg_url_for,
    skip_or_fail,
)

from sagaz.core.errors import StorageError
from sagaz.core.records import (
    NewSaga,
    OutboxEvent,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    StepField,
    StepRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
    derive_change,
)
from sagaz.core.status import SagaStatus, StepStatus
from sagaz.core.storage import InMemorySagaStorage, SagaStorage
from sagaz.core.storage.base import LeaseLostError
from sagaz.core.storage.sqlite import SQLiteSagaStorage

K = TransitionKind
EPOCH = 1_700_000_000.0
RUNNING = SagaStatus.RUNNING
PENDING = SagaStatus.PENDING


# -- backends ------------------------------------------------------------------------


class PortableSQLiteStorage(SQLiteSagaStorage):
    """SQLite through aiosqlite's public API only (the driver used when aiosqlite lacks
    the hook of the fast driver)."""

    _fast_driver = False


async def make_memory(tmp_path: Path) -> SagaStorage:
    return InMemorySagaStorage()


async def make_sqlite(tmp_path: Path) -> SagaStorage:
    return SQLiteSagaStorage(tmp_path / f"{uuid.uuid4().hex}.db")


async def make_sqlite_portable(tmp_path: Path) -> SagaStorage:
    return PortableSQLiteStorage(tmp_path / f"{uuid.uuid4().hex}.db")


#: The URL of this module's PostgreSQL database, once ``postgres_database`` made it.
_pg_url: list[str] = []


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    """This module's own database on the test server (the first storage opened on it
    migrates it); dropped at the end."""
    problem = pg_reachable()
    if problem is not None:
        skip_or_fail(problem)
    name = pg_create_database("sagaz_contract")
    url = pg_url_for(name)
    _pg_url.append(url)
    try:
        yield url
    finally:
        _pg_url.remove(url)
        pg_drop_database(name)


async def make_postgres(tmp_path: Path) -> SagaStorage:
    import psycopg

    from sagaz.core.storage.postgres import PostgresSagaStorage

    (url,) = _pg_url  # the postgres_database fixture is active (see _requires)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        exists = await conn.execute("SELECT to_regclass('sagaz_sagas') IS NOT NULL")
        row = await exists.fetchone()
        if row is not None and row[0]:  # migrated already by an earlier storage
            await conn.execute(f"TRUNCATE {', '.join(PG_TABLES)} RESTART IDENTITY")
    return PostgresSagaStorage(url, pool_min=1, pool_max=4)


Factory = Callable[[Path], Awaitable[SagaStorage]]

#: name -> (factory of a new empty storage, marks)
BACKENDS: dict[str, tuple[Factory, list[pytest.MarkDecorator]]] = {
    "memory": (make_memory, []),
    "sqlite": (make_sqlite, []),
    "sqlite-portable": (make_sqlite_portable, []),
    "postgres": (make_postgres, [pytest.mark.postgres]),
}
DURABLE = [name for name in BACKENDS if name != "memory"]


def _requires(request: pytest.FixtureRequest, backend: str) -> None:
    """Set up what ``backend`` needs beyond ``tmp_path`` (PostgreSQL: the database)."""
    if backend == "postgres":
        request.getfixturevalue("postgres_database")


def _params(names: list[str]) -> list[Any]:
    return [pytest.param(name, marks=BACKENDS[name][1], id=name) for name in names]


@pytest.fixture(params=_params(list(BACKENDS)))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    _requires(request, request.param)
    factory, _ = BACKENDS[request.param]
    store = await factory(tmp_path)
    await store.ensure_open()
    try:
        yield store
    finally:
        await store.close()


# -- helpers -------------------------------------------------------------------------


class Clock:
    """Transitions with explicit, increasing timestamps (the same on every backend)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(
        self,
        kind: TransitionKind,
        step: str | None = None,
        attempt: int = 0,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> Transition:
        self.now += 0.25
        return Transition(kind, step, attempt, result, error, at=self.now)


def new_saga(
    saga_id: str,
    *,
    name: str = "Order",
    status: SagaStatus = RUNNING,
    key: str | None = None,
    correlation_id: str | None = None,
    created_at: float | None = None,
    context: dict[str, Any] | None = None,
) -> NewSaga:
    """A new saga; fixed defaults, so a scenario writes the same on every backend."""
    return NewSaga(
        saga_id,
        name,
        {"order_id": saga_id} if context is None else context,
        status,
        correlation_id,
        key,
        created_at=EPOCH if created_at is None else created_at,
    )


def event(saga_id: str, event_type: str, n: int = 0) -> OutboxEvent:
    return OutboxEvent(f"{saga_id}-{event_type}-{n}", saga_id, event_type, {"n": n}, "corr", EPOCH)


@contextmanager
def acting_as(storage: SagaStorage, owner: str) -> Iterator[None]:
    """Make ``storage`` act as another lease owner (another worker process) for a while.

    The base class keys the owner id by pid; replacing it is how one test plays two
    workers on one backend.
    """
    saved = storage._owner
    storage._owner = (os.getpid(), owner)
    try:
        yield
    finally:
        storage._owner = saved


def comparable(value: Any, storage: SagaStorage) -> Any:
    """``value`` with what legitimately differs between backends normalised.

    Lease owners differ per storage instance (``"<me>"`` marks this storage's own id);
    lease expiry set from the wall clock is checked by the lease tests, here only
    whether one is set.
    """
    if isinstance(value, SagaRecord):
        owner = value.lease_owner
        return dataclasses.replace(
            value,
            lease_owner="<me>" if owner == storage.owner_id else owner,
            lease_expires_at=None if value.lease_expires_at is None else -1.0,
        )
    if isinstance(value, list | tuple):
        return type(value)(comparable(v, storage) for v in value)
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value).replace(storage.owner_id, "<me>"))
    return value


Scenario = Callable[[SagaStorage, Clock], Awaitable[list[Any]]]


async def observe(storage: SagaStorage, scenario: Scenario, start: float) -> list[Any]:
    return [comparable(v, storage) for v in await scenario(storage, Clock(start))]


async def assert_same_as_memory(storage: SagaStorage, scenario: Scenario) -> list[Any]:
    start = float(int(time.time()))
    reference = InMemorySagaStorage()
    expected = await observe(reference, scenario, start)
    got = await observe(storage, scenario, start)
    assert got == expected
    return got


async def try_(call: Awaitable[Any]) -> Any:
    """The value of ``call``, or the exception it raised (as an observation)."""
    try:
        return await call
    except Exception as exc:
        return exc


# -- same as memory: sequences of transitions ------------------------------------------


async def happy_path(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    new = new_saga("saga-1", key="order-1", correlation_id="corr-1", created_at=t.now)
    out.append(await s.create_saga(new, [t(K.SAGA_STARTED), t(K.STEP_STARTED, "reserve", 1)]))
    out.append(await s.load("saga-1"))
    ctx = {"order_id": "saga-1", "reservation": "r-1"}
    out.append(
        await s.record(
            "saga-1",
            [
                t(K.STEP_COMPLETED, "reserve", 1, result={"reservation": "r-1"}),
                t(K.STEP_STARTED, "charge", 1),
            ],
            ctx,
        )
    )
    out.append(await s.load("saga-1"))
    ctx["charge"] = {"amount": 12.5, "currency": "EUR", "tags": ["a", "b"], "ok": True}
    out.append(
        await s.record(
            "saga-1",
            [
                t(K.STEP_COMPLETED, "charge", 1, result={"charge": ctx["charge"]}),
                t(K.STEP_STARTED, "ship", 1),
            ],
            ctx,
        )
    )
    out.append(await s.record("saga-1", [t(K.STEP_COMPLETED, "ship", 1), t(K.SAGA_COMPLETED)], ctx))
    out.append(await s.load("saga-1"))
    return out


async def retries_then_compensation(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-2", created_at=t.now), [t(K.SAGA_STARTED)])
    out.append(await s.record("saga-2", [t(K.STEP_STARTED, "a", 1)]))
    out.append(await s.record("saga-2", [t(K.STEP_COMPLETED, "a", 1, result={"a": 1})]))
    await s.record("saga-2", [t(K.STEP_STARTED, "b", 1)])
    await s.record("saga-2", [t(K.STEP_FAILED, "b", 1, error="TimeoutError: slow")])
    await s.record("saga-2", [t(K.STEP_STARTED, "b", 2)])
    out.append(await s.load("saga-2"))
    await s.record(
        "saga-2",
        [
            t(K.STEP_FAILED, "b", 2, error="ValueError: declined"),
            t(K.SAGA_COMPENSATING, "b", error="ValueError: declined"),
            t(K.COMPENSATION_STARTED, "a", 1),
        ],
    )
    out.append(await s.load("saga-2"))
    await s.record("saga-2", [t(K.COMPENSATION_FAILED, "a", 1, error="IOError: down")])
    await s.record("saga-2", [t(K.COMPENSATION_STARTED, "a", 2)])
    await s.record("saga-2", [t(K.COMPENSATION_COMPLETED, "a", 2), t(K.SAGA_COMPENSATED)])
    out.append(await s.load("saga-2"))
    return out


async def compensation_fails(s: SagaStorage, t: Clock) -> list[Any]:
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
    record = await s.load("saga-3")
    after = await try_(s.record("saga-3", [t(K.STEP_STARTED, "c", 1)]))  # lease released
    return [record, after, await s.load("saga-3")]


async def recovery_and_cancelled_steps(s: SagaStorage, t: Clock) -> list[Any]:
    await s.create_saga(
        new_saga("saga-4", created_at=t.now),
        [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1), t(K.STEP_STARTED, "b", 1)],
    )
    # The process crashed; a new run resumes: recoveries count, the status stays.
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


async def created_finished(s: SagaStorage, t: Clock) -> list[Any]:
    """A saga whose first write already finishes it is never left leased."""
    out: list[Any] = [
        await s.create_saga(
            new_saga("saga-5", created_at=t.now),
            [
                t(K.SAGA_STARTED),
                t(K.STEP_STARTED, "only", 1),
                t(K.STEP_COMPLETED, "only", 1, result={}),
                t(K.SAGA_COMPLETED),
            ],
        )
    ]
    out.append(await s.load("saga-5"))
    out.append(await try_(s.record("saga-5", [t(K.SAGA_RESUMED)])))
    return out


async def context_and_empty_writes(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-6", created_at=t.now), [t(K.SAGA_STARTED)])
    # Context only: replaced, updated_at unchanged.
    out.append(await s.record("saga-6", [], {"nested": {"é": "ünïcode ✓", "n": [1.5, None]}}))
    out.append(await s.load("saga-6"))
    out.append(await s.record("saga-6", []))  # nothing but a lease renewal
    out.append(await s.load("saga-6"))
    out.append(await s.record("unknown", [t(K.SAGA_STARTED)], {"a": 1}))
    out.append(await s.load("unknown"))
    return out


async def pending_saga_claimed(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(new_saga("saga-7", status=PENDING, created_at=t.now))
    out.append(await s.load("saga-7"))
    out.append(await try_(s.record("saga-7", [t(K.SAGA_STARTED)])))  # not leased: fenced
    out.append(await s.load("saga-7"))
    out.append(await s.claim("saga-7"))
    out.append(await s.record("saga-7", [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)]))
    out.append(await s.load("saga-7"))
    return out


SCENARIOS: list[Scenario] = [
    happy_path,
    retries_then_compensation,
    compensation_fails,
    recovery_and_cancelled_steps,
    created_finished,
    context_and_empty_writes,
    pending_saga_claimed,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
async def test_same_as_memory(storage: SagaStorage, scenario: Scenario) -> None:
    await assert_same_as_memory(storage, scenario)


async def test_happy_path_reads_back(storage: SagaStorage) -> None:
    """Not only equal to memory: the values themselves."""
    got = await assert_same_as_memory(storage, happy_path)
    created, first, *_ = got
    assert created == ("saga-1", True)
    assert first.status is RUNNING
    assert first.lease_owner == "<me>"
    final: SagaRecord = got[-1]
    assert final.status is SagaStatus.COMPLETED
    assert final.lease_owner is None
    assert final.lease_expires_at is None
    assert list(final.steps) == ["reserve", "charge", "ship"]
    assert final.completed_steps == ["reserve", "charge", "ship"]
    assert final.steps["reserve"].result == {"reservation": "r-1"}
    assert final.steps["ship"].result is None
    assert final.context["charge"]["amount"] == 12.5
    assert [h.seq for h in final.history] == list(range(1, 9))
    assert final.history[0].kind is K.SAGA_STARTED
    assert final.history[-1].kind is K.SAGA_COMPLETED


async def test_compensation_keeps_every_error(storage: SagaStorage) -> None:
    record, after, again = await assert_same_as_memory(storage, compensation_fails)
    assert record.status is SagaStatus.FAILED
    assert record.error == "RuntimeError: boom; IOError: refund failed"
    assert record.failed_step == "b"
    assert record.steps["a"].status is StepStatus.COMPENSATION_FAILED
    assert record.steps["a"].compensation_error == "IOError: refund failed"
    assert after[0] == "LeaseLostError"
    assert again == record


async def test_recovery_counts_and_keeps_status(storage: SagaStorage) -> None:
    first, final = await assert_same_as_memory(storage, recovery_and_cancelled_steps)
    assert first.recoveries == 2
    assert first.status is SagaStatus.COMPENSATING
    assert first.steps["c"].status is StepStatus.CANCELLED
    assert final.status is SagaStatus.COMPENSATED
    assert final.compensated_steps == ["a"]


async def test_context_only_write_keeps_updated_at(storage: SagaStorage) -> None:
    got = await assert_same_as_memory(storage, context_and_empty_writes)
    cancelled, after_context, cancelled_again, _, unknown, missing = got
    assert cancelled is False
    assert cancelled_again is False
    assert after_context.context == {"nested": {"é": "ünïcode ✓", "n": [1.5, None]}}
    assert after_context.updated_at == after_context.history[-1].at
    assert unknown is False
    assert missing is None


async def test_one_batch_equals_many_small_writes(storage: SagaStorage) -> None:
    t = Clock(time.time())
    transitions = [
        t(K.STEP_STARTED, "a", 1),
        t(K.STEP_FAILED, "a", 1, error="E: 1"),
        t(K.STEP_STARTED, "a", 2),
        t(K.STEP_COMPLETED, "a", 2, result={"a": 2}),
        t(K.STEP_STARTED, "b", 1),
        t(K.STEP_COMPLETED, "b", 1, result={"b": 1}),
        t(K.SAGA_COMPLETED),
    ]
    for saga_id in ("batched", "one-by-one"):
        await storage.create_saga(new_saga(saga_id, created_at=1.0), [])
    await storage.record("batched", transitions)
    for transition in transitions:
        await storage.record("one-by-one", [transition])
    batched, single = await storage.load("batched"), await storage.load("one-by-one")
    assert batched is not None
    assert single is not None
    assert dataclasses.replace(single, saga_id="batched", context=batched.context) == batched


# -- idempotency -----------------------------------------------------------------------


async def test_concurrent_starts_with_one_key_make_one_saga(storage: SagaStorage) -> None:
    t = Clock(time.time())
    starts = [
        storage.create_saga(
            new_saga(f"saga-{i}", key="order-42"),
            [t(K.SAGA_STARTED)],
            [event(f"saga-{i}", "saga.started")],
        )
        for i in range(50)
    ]
    results = await asyncio.gather(*starts)
    ids = {saga_id for saga_id, _ in results}
    assert len(ids) == 1
    assert sum(created for _, created in results) == 1
    (winner,) = ids
    assert [saga_id for saga_id, created in results if created] == [winner]
    assert [r.saga_id for r in await storage.list_sagas()] == [winner]
    record = await storage.load(winner)
    assert record is not None
    assert len(record.history) == 1
    assert [o.event.saga_id for o in await storage.list_outbox()] == [winner]


async def test_a_repeated_start_writes_nothing(storage: SagaStorage) -> None:
    t = Clock(time.time())
    first = new_saga("first", key="k", context={"v": 1})
    assert await storage.create_saga(first, [t(K.SAGA_STARTED)]) == ("first", True)
    again = new_saga("second", key="k", context={"v": 2})
    got = await storage.create_saga(
        again, [t(K.SAGA_STARTED), t(K.STEP_STARTED, "x", 1)], [event("second", "saga.started")]
    )
    assert got == ("first", False)
    record = await storage.load("first")
    assert record is not None
    assert record.context == {"v": 1}
    assert len(record.history) == 1
    assert await storage.load("second") is None
    assert await storage.list_outbox() == []


async def test_a_reused_saga_id_is_refused(storage: SagaStorage) -> None:
    await storage.create_saga(new_saga("s", key="k"))
    for again in (new_saga("s"), new_saga("s", key="k"), new_saga("s", key="other")):
        with pytest.raises(StorageError, match="already recorded"):
            await storage.create_saga(again)
    assert [r.saga_id for r in await storage.list_sagas()] == ["s"]


async def test_keys_are_per_saga_name_and_none_never_collides(storage: SagaStorage) -> None:
    assert await storage.create_saga(new_saga("a", name="Order", key="k")) == ("a", True)
    assert await storage.create_saga(new_saga("b", name="Refund", key="k")) == ("b", True)
    assert await storage.create_saga(new_saga("c")) == ("c", True)
    assert await storage.create_saga(new_saga("d")) == ("d", True)
    assert len(await storage.list_sagas()) == 4


# -- listing -------------------------------------------------------------------------


async def listing(s: SagaStorage, t: Clock) -> list[Any]:
    base = EPOCH
    specs = [
        ("s1", "Order", "c1", base + 1, [K.SAGA_STARTED, K.SAGA_COMPLETED]),
        ("s2", "Order", "c2", base + 2, [K.SAGA_STARTED]),
        ("s3", "Refund", "c1", base + 3, [K.SAGA_STARTED, K.SAGA_FAILED]),
        ("s4", "Order", None, base + 4, []),
        ("s5", "Refund", "c2", base + 5, [K.SAGA_STARTED, K.SAGA_COMPENSATED]),
        ("s6", "Order", "c1", base + 5, [K.SAGA_STARTED]),  # same created_at as s5
    ]
    for saga_id, name, corr, created, kinds in specs:
        status = PENDING if not kinds else RUNNING
        await s.create_saga(
            new_saga(saga_id, name=name, status=status, correlation_id=corr, created_at=created),
            [t(kind) for kind in kinds] + ([t(K.STEP_STARTED, "a", 1)] if kinds else []),
        )
    queries = [
        None,
        SagaQuery(status=SagaStatus.RUNNING),
        SagaQuery(status=[SagaStatus.COMPLETED, SagaStatus.FAILED]),
        SagaQuery(saga_name="Refund"),
        SagaQuery(correlation_id="c1"),
        SagaQuery(created_after=base + 2, created_before=base + 5),
        SagaQuery(saga_name="Order", status=[SagaStatus.RUNNING, SagaStatus.PENDING]),
        SagaQuery(limit=2),
        SagaQuery(limit=2, offset=2),
        SagaQuery(offset=10),
        SagaQuery(limit=0),
        SagaQuery(saga_name="Nothing"),
    ]
    return [await s.list_sagas(q) for q in queries]


async def test_list_sagas(storage: SagaStorage) -> None:
    results = await assert_same_as_memory(storage, listing)
    ids = [[r.saga_id for r in found] for found in results]
    assert ids == [
        ["s5", "s6", "s4", "s3", "s2", "s1"],
        ["s6", "s2"],
        ["s3", "s1"],
        ["s5", "s3"],
        ["s6", "s3", "s1"],
        ["s4", "s3", "s2"],
        ["s6", "s4", "s2"],
        ["s5", "s6"],
        ["s4", "s3"],
        [],
        [],
        [],
    ]
    everything = results[0]
    assert all(r.history == [] for r in everything)
    assert all(list(r.steps) == ["a"] for r in everything if r.saga_id != "s4")


# -- trigger events ------------------------------------------------------------------


async def triggers(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    first = TriggerEvent("ev-1", "orders", {"order_id": 7, "items": ["x"]}, "corr-9", [], EPOCH)
    sagas = [
        new_saga("t1", name="Ship", status=PENDING, key="7", correlation_id="corr-9"),
        new_saga("t2", name="Bill", status=PENDING, key="7", correlation_id="corr-9"),
        new_saga("t3", name="Ship", status=PENDING, key="7", correlation_id="corr-9"),
    ]
    out.append(await s.record_trigger_event(first, sagas))
    out.append(first.saga_ids)
    second = TriggerEvent("ev-2", "orders", {"order_id": 7}, "corr-9", created_at=first.created_at)
    out.append(
        await s.record_trigger_event(second, [new_saga("t4", name="Ship", status=PENDING, key="7")])
    )
    out.append(second.saga_ids)
    third = TriggerEvent("ev-3", "payments", {}, "corr-9", created_at=first.created_at)
    out.append(await s.record_trigger_event(third, []))
    other = TriggerEvent("ev-4", "orders", {"order_id": 8}, "corr-other", [], EPOCH)
    await s.record_trigger_event(other, [new_saga("t5", name="Ship", status=PENDING, key="8")])
    found = await s.find_trigger_events("corr-9")
    out.append([(e.event_id, e.source, dict(e.payload), e.saga_ids) for e in found])
    found = await s.find_trigger_events("corr-9", "payments")
    out.append([(e.event_id, e.saga_ids) for e in found])
    out.append(await s.find_trigger_events("corr-none"))
    out.append(await s.load("t1"))
    return out


async def test_trigger_events(storage: SagaStorage) -> None:
    got = await assert_same_as_memory(storage, triggers)
    first, first_ids, second, second_ids, third, found, payments, none, t1 = got
    assert first == [("t1", True), ("t2", True), ("t1", False)]
    assert first_ids == ["t1", "t2", "t1"]
    assert second == [("t1", False)]
    assert second_ids == ["t1"]
    assert third == []
    assert [f[0] for f in found] == ["ev-1", "ev-2", "ev-3"]
    assert found[0][2] == {"order_id": 7, "items": ["x"]}
    assert payments == [("ev-3", [])]
    assert none == []
    assert t1.status is PENDING
    assert t1.lease_owner is None


# -- leases ------------------------------------------------------------------------


async def test_running_saga_is_leased_to_its_creator(storage: SagaStorage) -> None:
    before = time.time()
    await storage.create_saga(new_saga("run"))
    await storage.create_saga(new_saga("wait", status=PENDING))
    running, waiting = await storage.load("run"), await storage.load("wait")
    assert running is not None
    assert waiting is not None
    assert running.lease_owner == storage.owner_id
    assert running.lease_expires_at is not None
    assert before + storage.lease_seconds <= running.lease_expires_at
    assert running.lease_expires_at <= time.time() + storage.lease_seconds
    assert waiting.lease_owner is None
    assert waiting.lease_expires_at is None


async def test_a_leased_start_is_leased_in_the_same_write(storage: SagaStorage) -> None:
    """NewSaga(leased=True): PENDING, yet leased to its creator as a claim would; a
    duplicate is neither written nor leased; renewal covers it; once the lease expires
    (the creator died) a worker takes it over and the creator is fenced."""
    before = time.time()
    new = dataclasses.replace(new_saga("mine", status=PENDING, key="k"), leased=True)
    assert await storage.create_saga(new) == ("mine", True)
    mine = await storage.load("mine")
    assert mine is not None
    assert mine.status is PENDING
    assert mine.lease_owner == storage.owner_id
    assert mine.lease_expires_at is not None
    assert before + storage.lease_seconds <= mine.lease_expires_at
    assert mine.lease_expires_at <= time.time() + storage.lease_seconds
    with acting_as(storage, "worker-2"):
        dup = dataclasses.replace(new_saga("dup", status=PENDING, key="k"), leased=True)
        assert await storage.create_saga(dup) == ("mine", False)
        event = TriggerEvent("ev", "orders", {}, "corr")
        fired = dataclasses.replace(new_saga("fired", status=PENDING), leased=True)
        dup2 = dataclasses.replace(new_saga("dup2", status=PENDING, key="k"), leased=True)
        assert await storage.record_trigger_event(event, [fired, dup2]) == [
            ("fired", True),
            ("mine", False),
        ]
        assert await storage.claim("mine") is None  # our live lease
    assert await storage.load("dup") is None
    again = await storage.load("mine")
    assert again is not None
    assert again.lease_owner == storage.owner_id  # the duplicates did not take it
    fired_record = await storage.load("fired")
    assert fired_record is not None
    assert fired_record.lease_owner == "worker-2"
    assert fired_record.status is PENDING
    storage.lease_seconds = 100.0
    assert await storage.renew_leases() == 1
    renewed = await storage.load("mine")
    assert renewed is not None
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at >= before + 100.0
    # The creator dies: its lease runs out and a worker takes the saga over.
    storage.lease_seconds = 0.01
    await storage.renew_leases()
    await asyncio.sleep(0.03)
    storage.lease_seconds = 30.0
    with acting_as(storage, "worker-2"):
        taken = await storage.claim_runnable(10)
        assert {r.saga_id for r in taken} == {"mine"}
        assert taken[0].lease_owner == "worker-2"
    with pytest.raises(LeaseLostError):
        await storage.record("mine", [Transition(K.SAGA_STARTED)])


async def test_record_renews_the_lease_from_the_transition_time(storage: SagaStorage) -> None:
    await storage.create_saga(new_saga("s"))
    at = time.time() + 100
    await storage.record("s", [Transition(K.STEP_STARTED, "a", 1, at=at)])
    record = await storage.load("s")
    assert record is not None
    assert record.lease_expires_at == at + storage.lease_seconds


async def test_writes_are_fenced_by_the_lease(storage: SagaStorage) -> None:
    t = Clock(time.time())
    await storage.create_saga(new_saga("s"), [t(K.SAGA_STARTED)])
    before = await storage.load("s")
    with acting_as(storage, "worker-2"), pytest.raises(LeaseLostError, match="worker-2"):
        await storage.record(
            "s", [t(K.STEP_STARTED, "a", 1)], {"changed": True}, [event("s", "saga.step")]
        )
    assert await storage.load("s") == before
    assert await storage.list_outbox() == []


async def test_claim(storage: SagaStorage) -> None:
    t = Clock(time.time())
    assert await storage.claim("unknown") is None
    await storage.create_saga(new_saga("done"), [t(K.SAGA_STARTED), t(K.SAGA_COMPLETED)])
    assert await storage.claim("done") is None
    await storage.create_saga(new_saga("busy"), [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)])
    with acting_as(storage, "worker-2"):
        assert await storage.claim("busy") is None  # our live lease
    mine = await storage.claim("busy")  # already ours: taken again
    assert mine is not None
    assert mine.lease_owner == storage.owner_id
    assert [h.kind for h in mine.history] == [K.SAGA_STARTED, K.STEP_STARTED]
    assert list(mine.steps) == ["a"]
    # Our lease expires (this process died): another worker takes the saga over.
    storage.lease_seconds = 0.01
    await storage.record("busy", [])
    await asyncio.sleep(0.03)
    storage.lease_seconds = 30.0
    with acting_as(storage, "worker-2"):
        taken = await storage.claim("busy")
        assert taken is not None
        assert taken.lease_owner == "worker-2"
    with pytest.raises(LeaseLostError):
        await storage.record("busy", [t(K.STEP_COMPLETED, "a", 1)])


async def test_claim_runnable(storage: SagaStorage) -> None:
    t = Clock(time.time())
    base = time.time()

    async def make(
        saga_id: str, created: float, *, status: SagaStatus = RUNNING, **kw: Any
    ) -> None:
        await storage.create_saga(new_saga(saga_id, status=status, created_at=created, **kw))

    await make("pending", base + 1, status=PENDING)
    await make("mine", base + 2)
    with acting_as(storage, "worker-2"):
        await make("theirs-live", base + 3)
        storage.lease_seconds = 0.01
        await make("theirs-expired", base + 4)
        storage.lease_seconds = 30.0
    await make("finished", base + 5)
    await storage.record("finished", [t(K.SAGA_COMPLETED)])
    await make("other-name", base + 6, status=PENDING, name="Refund")
    await make("oldest", base, status=PENDING)
    with acting_as(storage, "worker-3"):
        storage.lease_seconds = 0.01
        await make("stale-own", base + 7)  # worker-3's own lease, renewal overdue
        storage.lease_seconds = 30.0
    await asyncio.sleep(0.03)

    with acting_as(storage, "worker-3"):
        assert await storage.claim_runnable(0) == []
        assert await storage.claim_runnable(10, []) == []
        first = await storage.claim_runnable(2, ["Order"])
        assert [r.saga_id for r in first] == ["oldest", "pending"]
        assert all(r.lease_owner == "worker-3" for r in first)
        rest = await storage.claim_runnable(10)
        # "mine" has a live lease of its creator (this test's own owner id); a claimer
        # never claims what it holds already, even with an overdue renewal.
        assert [r.saga_id for r in rest] == ["theirs-expired", "other-name"]
        assert await storage.claim_runnable(10) == []  # all ours now
    with acting_as(storage, "worker-4"):
        assert [r.saga_id for r in await storage.claim_runnable(10)] == ["stale-own"]
    record = await storage.load("theirs-expired")
    assert record is not None
    assert record.lease_owner == "worker-3"


async def test_renew_and_release_leases(storage: SagaStorage) -> None:
    t = Clock(time.time())
    for saga_id in ("a", "b", "c"):
        await storage.create_saga(new_saga(saga_id))
    await storage.record("c", [t(K.SAGA_COMPLETED)])
    with acting_as(storage, "worker-2"):
        await storage.create_saga(new_saga("theirs"))
    storage.lease_seconds = 100.0
    before = time.time()
    assert await storage.renew_leases() == 2
    for saga_id in ("a", "b"):
        record = await storage.load(saga_id)
        assert record is not None
        assert record.lease_expires_at is not None
        assert record.lease_expires_at >= before + 100.0
    assert await storage.release_leases(["a", "theirs", "unknown", "a"]) == 1
    a = await storage.load("a")
    assert a is not None
    assert a.lease_owner is None
    assert a.lease_expires_at is None
    assert await storage.release_leases() == 1
    assert await storage.renew_leases() == 0
    theirs = await storage.load("theirs")
    assert theirs is not None
    assert theirs.lease_owner == "worker-2"
    assert {r.saga_id for r in await storage.claim_runnable(10)} == {"a", "b"}


async def reopen_scenario(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    out.append(await s.reopen("unknown", t(K.SAGA_RETRIED)))
    await s.create_saga(new_saga("running"), [t(K.SAGA_STARTED)])
    out.append(await s.reopen("running", t(K.SAGA_RETRIED)))
    out.append(await s.load("running"))
    for saga_id in ("forward", "backward"):
        await s.create_saga(
            new_saga(saga_id, created_at=t.now),
            [t(K.SAGA_STARTED), t(K.STEP_STARTED, "a", 1)],
        )
        await s.record(
            saga_id,
            [
                t(K.STEP_FAILED, "a", 1, error="E: x"),
                t(K.SAGA_FAILED, "a", error="parked after 3 recoveries"),
            ],
        )
    out.append(await s.reopen("forward", t(K.SAGA_RETRIED, "a")))
    out.append(await s.reopen("backward", t(K.SAGA_COMPENSATING, "a")))
    out.append(await s.record("forward", [t(K.STEP_STARTED, "a", 2)]))  # leased again
    return out


async def test_reopen(storage: SagaStorage) -> None:
    got = await assert_same_as_memory(storage, reopen_scenario)
    unknown, not_failed, running, forward, backward, _ = got
    assert unknown is None
    assert not_failed is None
    assert [h.kind for h in running.history] == [K.SAGA_STARTED]
    assert forward.status is RUNNING
    assert forward.lease_owner == "<me>"
    assert forward.history[-1].kind is K.SAGA_RETRIED
    assert forward.error == "parked after 3 recoveries"
    assert backward.status is SagaStatus.COMPENSATING


async def cancel_scenario(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = [await s.request_cancel("unknown")]
    await s.create_saga(new_saga("done"), [t(K.SAGA_STARTED), t(K.SAGA_COMPLETED)])
    out.append(await s.request_cancel("done"))
    await s.create_saga(new_saga("pending", status=PENDING))
    out.append(await s.request_cancel("pending"))
    await s.create_saga(new_saga("running"), [t(K.SAGA_STARTED)])
    out.append(await s.record("running", [t(K.STEP_STARTED, "a", 1)]))
    out.append(await s.request_cancel("running"))
    out.append(await s.record("running", [t(K.STEP_COMPLETED, "a", 1)]))
    out.append(await s.load("running"))
    out.append(await s.claim("pending"))
    return out


async def test_request_cancel(storage: SagaStorage) -> None:
    got = await assert_same_as_memory(storage, cancel_scenario)
    assert got[:6] == [False, False, True, False, True, True]
    assert got[6].cancel_requested is True
    assert got[7].cancel_requested is True


# -- transactional outbox --------------------------------------------------------------


def snap(found: Any) -> Any:
    """Copies of outbox records: the in-memory backend hands out live objects."""
    if isinstance(found, list):
        return [dataclasses.replace(r) for r in found]
    return dict(found)


async def outbox_scenario(s: SagaStorage, t: Clock) -> list[Any]:
    out: list[Any] = []
    await s.create_saga(
        new_saga("a"), [t(K.SAGA_STARTED)], [event("a", "saga.started"), event("a", "custom")]
    )
    await s.create_saga(new_saga("b"), [t(K.SAGA_STARTED)], [event("b", "saga.started")])
    await s.record("a", [t(K.SAGA_COMPLETED)], None, [event("a", "saga.completed")])
    out.append(snap(await s.list_outbox()))
    claimed = snap(await s.claim_outbox(10))  # the first event of each saga, by seq
    out.append(claimed)
    out.append(snap(await s.claim_outbox(10)))  # claimed already
    await s.outbox_sent([claimed[0].event.event_id])
    out.append(snap(await s.claim_outbox(10)))  # a's next event is free now
    await s.outbox_failed("a-custom-0", "BrokerError: refused", time.time() + 60)
    out.append(snap(await s.claim_outbox(10)))  # not due yet
    await s.outbox_failed("a-custom-0", "BrokerError: refused again", None)  # dead letter
    out.append(snap(await s.claim_outbox(1)))
    await s.outbox_failed("unknown", "x", None)
    await s.outbox_sent([])
    out.append(snap(await s.list_outbox(OutboxStatus.DEAD)))
    out.append(snap(await s.list_outbox(OutboxStatus.PENDING, limit=1)))
    out.append(snap(await s.list_outbox(limit=0)))
    out.append(snap(await s.claim_outbox(0)))
    out.append(snap(await s.outbox_counts()))
    return out


def _strip_times(records: Any) -> Any:
    """Outbox records with the wall-clock fields blanked (checked separately)."""
    if isinstance(records, list):
        return [_strip_times(r) for r in records]
    return dataclasses.replace(records, sent_at=None, next_attempt_at=0.0)


async def test_outbox(storage: SagaStorage) -> None:
    start = float(int(time.time()))
    expected = await observe(InMemorySagaStorage(), outbox_scenario, start)
    got = await observe(storage, outbox_scenario, start)
    assert [_strip_times(x) if isinstance(x, list) else x for x in got] == [
        _strip_times(x) if isinstance(x, list) else x for x in expected
    ]
    listed, claimed, again, after_sent, not_due, after_dead, dead, pending, *nones, counts = got
    assert [o.event.event_id for o in listed] == [
        "a-saga.started-0",
        "a-custom-0",
        "b-saga.started-0",
        "a-saga.completed-0",
    ]
    assert [o.seq for o in listed] == sorted(o.seq for o in listed)
    assert all(o.status is OutboxStatus.PENDING and o.attempts == 0 for o in listed)
    assert listed[0].event.payload == {"n": 0}
    assert listed[0].event.correlation_id == "corr"
    assert [o.event.event_id for o in claimed] == ["a-saga.started-0", "b-saga.started-0"]
    assert again == []
    assert [o.event.event_id for o in after_sent] == ["a-custom-0"]
    assert not_due == []
    assert [o.event.event_id for o in after_dead] == ["a-saga.completed-0"]
    assert [(o.event.event_id, o.attempts, o.last_error) for o in dead] == [
        ("a-custom-0", 2, "BrokerError: refused again")
    ]
    assert [o.event.event_id for o in pending] == ["b-saga.started-0"]
    assert nones == [[], []]
    assert counts == {OutboxStatus.PENDING: 2, OutboxStatus.SENT: 1, OutboxStatus.DEAD: 1}
    sent = await storage.list_outbox(OutboxStatus.SENT)
    assert sent[0].sent_at is not None
    assert sent[0].sent_at >= start
    assert sent[0].attempts == 1


async def test_outbox_claim_expires(storage: SagaStorage) -> None:
    await storage.create_saga(new_saga("a"), [], [event("a", "saga.started")])
    storage.lease_seconds = 0.01
    assert len(await storage.claim_outbox(5)) == 1
    await asyncio.sleep(0.03)
    storage.lease_seconds = 30.0
    assert len(await storage.claim_outbox(5)) == 1  # the relay died: claimed again
    assert await storage.claim_outbox(5) == []
    assert await storage.outbox_counts() == dict.fromkeys(OutboxStatus, 0) | {
        OutboxStatus.PENDING: 1
    }


async def test_inbox(storage: SagaStorage) -> None:
    assert await storage.inbox_seen("billing", "ev-1") is False
    assert await storage.inbox_mark("billing", "ev-1") is True
    assert await storage.inbox_seen("billing", "ev-1") is True
    assert await storage.inbox_seen("shipping", "ev-1") is False
    assert await storage.inbox_mark("billing", "ev-1") is False
    assert await storage.inbox_mark("shipping", "ev-1") is True
    assert await storage.inbox_mark("billing", "ev-2") is True


async def test_ping_and_reopen(storage: SagaStorage) -> None:
    await storage.ping()
    await storage.close()
    assert not storage.is_open
    await storage.ensure_open()
    await storage.ping()


# -- the shared derivation every backend writes from -----------------------------------


def test_derive_change_leaves_the_record_alone_and_says_what_the_batch_sets() -> None:
    t = Clock(EPOCH)
    stored = SagaRecord("d", "Order", RUNNING, {}, error="E: before")
    stored.steps["a"] = StepRecord("a", StepStatus.RUNNING, attempts=1, started_at=EPOCH)
    snapshot = copy.deepcopy(stored)
    batch = [
        t(K.STEP_COMPLETED, "a", 1, result={"x": 1}),
        t(K.STEP_STARTED, "b", 1),
        t(K.STEP_FAILED, "b", 1, error="F: b"),
        t(K.SAGA_COMPENSATING, "b", error="F: b"),
        t(K.COMPENSATION_STARTED, "a", 1),
    ]
    change = derive_change(stored, batch)
    assert stored == snapshot  # pure: the stored state is not touched
    assert change.status is SagaStatus.COMPENSATING
    assert change.record.error == "E: before; F: b"
    assert change.record.failed_step == "b"
    assert not change.finished
    assert list(change.steps) == ["a", "b"]  # in the order the batch first touched them
    a, b = change.steps["a"], change.steps["b"]
    assert (a.first, b.first) == (1, 2)
    assert a.fields == StepField.RESULT | StepField.ERROR | StepField.FINISHED_AT | (
        StepField.COMPENSATION_ATTEMPTS
    )
    assert b.fields == StepField.ATTEMPTS | StepField.ERROR | StepField.FINISHED_AT
    assert a.step.status is StepStatus.COMPENSATING
    assert a.step.result == {"x": 1}
    assert a.step.started_at == EPOCH  # kept from the stored step
    assert b.step.error == "F: b"
    # A batch with no saga-level transition leaves the status to the stored one.
    assert derive_change(stored, [t(K.SAGA_RESUMED)]).status is None
    assert derive_change(stored, [t(K.SAGA_RESUMED)]).record.recoveries == 1
    assert derive_change(stored, [t(K.SAGA_FAILED, "b")]).finished


# -- property: random sequences of writes read back as in memory ------------------------

_STEPS = st.sampled_from(["a", "b", "c"])
# Text without NUL: PostgreSQL's jsonb cannot hold it, and refuses it with a StorageError
# that says so (test_storage_postgres.py tests that).
_TEXT = st.characters(exclude_characters="\x00")
_RESULTS = st.none() | st.dictionaries(
    st.text(_TEXT, max_size=5),
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    # (PostgreSQL's jsonb keeps a float's digits, not its type: 1e300 reads back as an int)
    | st.floats(-1e15, 1e15, allow_nan=False)
    | st.text(_TEXT, max_size=8),
    max_size=3,
)
_ERRORS = st.none() | st.sampled_from(["E: one", "F: two", "G: ☃"])
_TRANSITION = st.builds(
    lambda kind, step, attempt, result, error: (kind, step, attempt, result, error),
    st.sampled_from(list(TransitionKind)),
    st.none() | _STEPS,
    st.integers(0, 3),
    _RESULTS,
    _ERRORS,
)
_WRITES = st.lists(
    st.tuples(
        st.lists(_TRANSITION, max_size=4),
        st.none() | st.dictionaries(st.text(_TEXT, max_size=3), st.integers(), max_size=2),
    ),
    min_size=1,
    max_size=6,
)


async def _replay(store: SagaStorage, writes: list[Any], start: float) -> list[Any]:
    clock = Clock(start)
    out: list[Any] = []
    async with store:
        for i, (batch, context) in enumerate(writes):
            transitions = [
                clock(kind, step, attempt, result if kind is K.STEP_COMPLETED else None, error)
                for kind, step, attempt, result, error in batch
            ]
            if i == 0:
                new = new_saga("p", created_at=start, context=context or {})
                out.append(await store.create_saga(new, transitions))
            else:
                out.append(await try_(store.record("p", transitions, context)))
        out.append(await store.load("p"))
        out.append(await store.list_sagas())
        return [comparable(v, store) for v in out]


@pytest.mark.parametrize("backend", _params(DURABLE))
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(writes=_WRITES)
def test_random_writes_read_back_as_in_memory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, writes: list[Any]
) -> None:
    _requires(request, backend)
    factory, _ = BACKENDS[backend]

    async def both() -> tuple[list[Any], list[Any]]:
        start = float(int(time.time()))
        expected = await _replay(InMemorySagaStorage(), writes, start)
        got = await _replay(await factory(tmp_path), writes, start)
        return got, expected

    got, expected = asyncio.run(both())
    assert got == expected
