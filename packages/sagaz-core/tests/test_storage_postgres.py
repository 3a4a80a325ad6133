"""The PostgreSQL storage backend, on a real server (127.0.0.1:5432, user postgres).

The session creates its own database (``sagaz_test_<random>``) next to ``test`` and drops it
at the end, and every test starts from empty tables, so nothing here touches data of other
users of the server. Tests that need a fresh, unmigrated database create (and drop) one
more. What every backend must do alike (records, leases, outbox, triggers, listing) is
tested on PostgreSQL too by test_storage_contract.py; this module holds what is
PostgreSQL's own: URLs and pools, many connections and processes at once, SKIP LOCKED,
jsonb limits, migrations, forks. Without a reachable server the tests skip, except under
``CI=true``, where they fail. ``SAGAZ_TEST_POSTGRES_URL`` points them at another server.
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
    SagaRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
)
from sagaz.core.status import SagaStatus  # noqa: E402
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
    assert (defaults.pool_min, defaults.pool_max, defaults.pool_timeout) == (1, 10, 5.0)
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


# --------------------------------------------------------------------------- writes


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


async def test_a_leased_start_is_leased_in_its_insert(
    storage: PostgresSagaStorage, other: PostgresSagaStorage
) -> None:
    """NewSaga(leased=True): PENDING and leased to its creator by the INSERT itself (one
    statement); a duplicate is not leased; after the creator dies, a worker takes over."""
    before = time.time()
    new = dataclasses.replace(new_saga("lz", status=PENDING, key="k"), leased=True)
    assert await storage.create_saga(new) == ("lz", True)
    dup = dataclasses.replace(new_saga("lz-dup", status=PENDING, key="k"), leased=True)
    assert await other.create_saga(dup) == ("lz", False)
    event = TriggerEvent("ev-lz", "orders", {}, "corr")
    fired = [
        dataclasses.replace(new_saga("lz-2", status=PENDING), leased=True),
        dataclasses.replace(new_saga("lz-3", status=PENDING, key="k"), leased=True),
    ]
    assert await other.record_trigger_event(event, fired) == [("lz-2", True), ("lz", False)]
    record = await storage.load("lz")
    assert record is not None
    assert record.status is PENDING
    assert record.lease_owner == storage.owner_id
    assert record.lease_expires_at is not None
    assert before + storage.lease_seconds <= record.lease_expires_at <= time.time() + 31
    assert await other.claim("lz") is None  # a live lease: no worker takes it
    second = await storage.load("lz-2")
    assert second is not None
    assert second.lease_owner == other.owner_id
    assert await storage.renew_leases() == 1
    # The creator crashes: the lease runs out; a worker claims the saga and runs it.
    storage.lease_seconds = 0.2
    await storage.renew_leases()
    await asyncio.sleep(0.3)
    taken = await other.claim_runnable(10)
    assert [r.saga_id for r in taken] == ["lz"]
    with pytest.raises(LeaseLostError, match="leased by worker-b"):
        await storage.record("lz", [Transition(K.SAGA_STARTED)])


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


async def test_concurrent_inbox_marks_let_one_through(storage: PostgresSagaStorage) -> None:
    results = await asyncio.gather(*(storage.inbox_mark("race", "ev-2") for _ in range(20)))
    assert sorted(results) == [False] * 19 + [True]


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
