"""The trace context stored with a saga: captured at start, kept by every backend, and
continued by a worker that resumes the saga in another "process" (a fresh storage
object, engine, tracer provider and listener on the same database)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, StatusCode
from sagaz_core_test_sagas import fast_config

import sagaz.core.observability.tracecontext as tracecontext_module
import sagaz.core.storage.sqlite as sqlite_module
from sagaz.core import (
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaStatus,
    SagaStorage,
    SagaWorker,
    start_saga,
    storage_from_url,
)
from sagaz.core.observability import (
    OpenTelemetryListener,
    context_from_carrier,
    current_trace_context,
)
from sagaz.core.records import NewSaga
from sagaz.core.registry import SagaRegistry
from sagaz.core.storage.sqlite import SQLiteSagaStorage

pytestmark = pytest.mark.usefixtures("isolated_config")

NO_RETRY = RetryPolicy(max_attempts=1)
PG_ADMIN_URL = os.environ.get(
    "SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


class Tracing:
    """One "process"'s tracing: a provider exporting to memory and a listener on it."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.listener = OpenTelemetryListener(self.provider)

    def spans(self) -> dict[str, ReadableSpan]:
        return {s.name: s for s in self.exporter.get_finished_spans()}


@pytest.fixture
def tracings() -> Iterator[list[Tracing]]:
    made: list[Tracing] = []
    yield made
    for tracing in made:
        tracing.provider.shutdown()


def traceparent(span: Span | ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-"


def ids(span: ReadableSpan) -> tuple[int, int | None]:
    """(trace id, parent span id)."""
    assert span.context is not None
    return span.context.trace_id, None if span.parent is None else span.parent.span_id


# ------------------------------------------------------------------ storage backends


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this module (skips when unreachable, except CI)."""
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        reason = f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({str(exc).strip()})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"sagaz_trace_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(PG_ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def drop_tables(url: str) -> None:
    """Empty the database: the next storage opened on it creates the schema afresh."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in (*TABLES, "schema_version"):
            conn.execute(f"DROP TABLE IF EXISTS sagaz_{table}")


TABLES = ("sagas", "steps", "history", "trigger_events", "outbox", "inbox")


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database two storage objects (two "processes") can share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagas.db'}"
    url: str = request.getfixturevalue("pg_database")
    drop_tables(url)
    return url


@pytest.fixture
async def open_storages() -> AsyncIterator[list[SagaStorage]]:
    made: list[SagaStorage] = []
    yield made
    for storage in made:
        await storage.close()


async def step(ctx: dict[str, Any]) -> None:
    return None


async def failing(ctx: dict[str, Any]) -> None:
    raise RuntimeError("card declined")


async def undo(ctx: dict[str, Any]) -> None:
    return None


def make_saga(config: SagaConfig, *, fail_at: str | None = None, **replace: Any) -> Saga:
    saga = Saga(name="traced-order", config=config)
    for name in ("reserve", "charge", "ship"):
        action = replace.get(name, failing if name == fail_at else step)
        saga.add_step(name, action, undo, retry=NO_RETRY)
    return saga


# ------------------------------------------------------------------ capture


def test_captured_from_the_current_span_only(tracings: list[Tracing]) -> None:
    tracing = Tracing()
    tracings.append(tracing)
    assert NewSaga("s1", "n", {}).trace_context is None  # no span current
    assert current_trace_context() is None
    with tracing.provider.get_tracer("t").start_as_current_span("request") as span:
        carrier = NewSaga("s2", "n", {}).trace_context
        assert carrier is not None
        assert carrier["traceparent"].startswith(traceparent(span))
        # Passing it explicitly (None too) wins over the capture.
        assert NewSaga("s3", "n", {}, trace_context=None).trace_context is None
    parent = context_from_carrier(carrier)
    assert parent is not None
    assert context_from_carrier({}) is None
    assert context_from_carrier({"traceparent": "garbage"}) is None


def test_nothing_is_captured_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if opentelemetry were not installed: importing it fails.
    monkeypatch.setattr(tracecontext_module, "_api", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    assert current_trace_context() is None
    assert context_from_carrier({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    assert NewSaga("s", "n", {}).trace_context is None


async def test_every_backend_stores_it(
    durable_url: str, tracings: list[Tracing], open_storages: list[SagaStorage]
) -> None:
    tracing = Tracing()
    tracings.append(tracing)
    storages: list[SagaStorage] = [InMemorySagaStorage(), storage_from_url(durable_url)]
    open_storages.extend(storages)
    for storage in storages:
        saga = make_saga(fast_config(storage))
        with tracing.provider.get_tracer("t").start_as_current_span("request") as span:
            saga_id, created = await start_saga(saga, {"n": 1}, run=False)
        untraced_id, _ = await start_saga(saga, {"n": 2}, run=False)
        assert created
        record = await storage.load(saga_id)
        assert record is not None
        assert record.trace_context is not None
        assert record.trace_context["traceparent"].startswith(traceparent(span))
        untraced = await storage.load(untraced_id)
        assert untraced is not None
        assert untraced.trace_context is None
        (listed,) = [r for r in await storage.list_sagas() if r.saga_id == saga_id]
        assert listed.trace_context == record.trace_context


# ------------------------------------------------------------------ continuity


async def run_worker_until_done(config: SagaConfig, saga: Saga, saga_id: str) -> None:
    registry = SagaRegistry()
    registry.register_instance(saga)
    worker = SagaWorker(config, poll_interval=0.02, grace_period=1.0, saga_registry=registry)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while True:
                record = await config.storage.load(saga_id)
                assert record is not None
                if record.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
                    break
                await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await task


@pytest.mark.parametrize("fail_at", [None, "ship"], ids=["completed", "compensated"])
async def test_a_worker_in_another_process_continues_the_trace(
    durable_url: str,
    fail_at: str | None,
    tracings: list[Tracing],
    open_storages: list[SagaStorage],
) -> None:
    # "Process" 1: a web request records the saga; nothing runs it here.
    web = Tracing()
    tracings.append(web)
    web_storage = storage_from_url(durable_url)
    open_storages.append(web_storage)
    web_config = fast_config(web_storage, listeners=[web.listener])
    with web.provider.get_tracer("web").start_as_current_span("POST /orders") as request:
        saga_id, _ = await start_saga(make_saga(web_config, fail_at=fail_at), run=False)
    (request_span,) = web.exporter.get_finished_spans()
    request_trace, _ = ids(request_span)
    request_span_id = request.get_span_context().span_id

    # "Process" 2: a worker with its own storage object, engine and tracer provider,
    # outside any span.
    worker = Tracing()
    tracings.append(worker)
    worker_storage = storage_from_url(durable_url)
    open_storages.append(worker_storage)
    worker_config = fast_config(worker_storage, listeners=[worker.listener])
    await run_worker_until_done(worker_config, make_saga(worker_config, fail_at=fail_at), saga_id)

    spans = worker.spans()
    saga_span = spans["saga traced-order"]
    assert ids(saga_span) == (request_trace, request_span_id)
    assert saga_span.parent is not None
    assert saga_span.parent.is_remote
    for span in spans.values():  # every span of the run is in the request's trace
        assert ids(span)[0] == request_trace
    assert saga_span.attributes is not None
    expected_status = "COMPLETED" if fail_at is None else "COMPENSATED"
    assert saga_span.attributes["sagaz.saga_id"] == saga_id
    assert saga_span.attributes["sagaz.saga_name"] == "traced-order"
    assert saga_span.attributes["sagaz.status"] == expected_status
    assert saga_span.context is not None
    for name in ("saga.step reserve", "saga.step charge", "saga.step ship"):
        assert ids(spans[name]) == (request_trace, saga_span.context.span_id)
    if fail_at is None:
        assert saga_span.status.status_code is StatusCode.UNSET
        assert not [n for n in spans if n.startswith("saga.compensate")]
    else:
        assert saga_span.status.status_code is StatusCode.ERROR
        assert spans["saga.step ship"].status.status_code is StatusCode.ERROR
        for name in ("saga.compensate charge", "saga.compensate reserve"):
            assert ids(spans[name]) == (request_trace, saga_span.context.span_id)


async def test_a_run_interrupted_in_one_process_resumes_in_the_same_trace(
    durable_url: str, tracings: list[Tracing], open_storages: list[SagaStorage]
) -> None:
    first = Tracing()
    tracings.append(first)
    first_storage = storage_from_url(durable_url)
    first_storage.lease_seconds = 0.3  # the crashed process's lease expires soon
    open_storages.append(first_storage)
    first_config = fast_config(first_storage, listeners=[first.listener])
    hang = asyncio.Event()

    async def blocked(ctx: dict[str, Any]) -> None:
        hang.set()
        await asyncio.sleep(3600)

    hanging = make_saga(first_config, charge=blocked)
    saga_id = str(uuid.uuid4())
    with first.provider.get_tracer("web").start_as_current_span("POST /orders") as request:
        run = asyncio.create_task(hanging.run(saga_id=saga_id))
        await hang.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await first_storage.close()  # the process stops
    interrupted = first.spans()["saga traced-order"]
    request_ids = (request.get_span_context().trace_id, request.get_span_context().span_id)
    assert ids(interrupted) == request_ids
    assert interrupted.attributes is not None
    assert interrupted.attributes["sagaz.interrupted"]

    second = Tracing()
    tracings.append(second)
    second_storage = storage_from_url(durable_url)
    open_storages.append(second_storage)
    second_config = fast_config(second_storage, listeners=[second.listener])
    await run_worker_until_done(second_config, make_saga(second_config), saga_id)
    resumed = second.spans()
    assert ids(resumed["saga traced-order"]) == request_ids
    assert set(resumed) == {"saga traced-order", "saga.step charge", "saga.step ship"}


# ------------------------------------------------------------------ migrations


async def test_sqlite_files_of_schema_1_are_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    with monkeypatch.context() as patch:  # a file written by the previous release
        patch.setattr(sqlite_module, "_MIGRATIONS", sqlite_module._MIGRATIONS[:1])
        patch.setattr(SQLiteSagaStorage, "schema_version", 1)
        db = sqlite3.connect(path)
        db.close()
        old = SQLiteSagaStorage(path)
        await old.ensure_open()
        await old.close()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(sagaz_sagas)")}
        assert "trace_context" not in columns
        db.execute(
            "INSERT INTO sagaz_sagas (saga_id, saga_name, status, context, created_at, "
            "updated_at) VALUES ('old', 'traced-order', 'PENDING', '{}', 1, 1)"
        )
    async with SQLiteSagaStorage(path) as storage:
        assert await storage.migrate() == [2]
        record = await storage.load("old")
        assert record is not None
        assert record.trace_context is None
        result = await make_saga(fast_config(storage)).resume("old")
        assert result.status is SagaStatus.COMPLETED


async def test_postgres_databases_of_schema_1_are_migrated(pg_database: str) -> None:
    import psycopg

    from sagaz.core.storage import migrations_postgres
    from sagaz.core.storage.postgres import PostgresSagaStorage

    drop_tables(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE sagaz_schema_version (version integer NOT NULL PRIMARY KEY, "
            "applied_at double precision NOT NULL)"
        )
        for statement in migrations_postgres.MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute("INSERT INTO sagaz_schema_version VALUES (1, 0)")
        conn.execute(
            "INSERT INTO sagaz_sagas (saga_id, saga_name, status, context, created_at, "
            "updated_at) VALUES ('old', 'traced-order', 'PENDING', '{}', 1, 1)"
        )
    async with PostgresSagaStorage(pg_database, pool_min=1, pool_max=2) as storage:
        assert await storage.migrate() == [2]
        record = await storage.load("old")
        assert record is not None
        assert record.trace_context is None
        result = await make_saga(fast_config(storage)).resume("old")
        assert result.status is SagaStatus.COMPLETED
