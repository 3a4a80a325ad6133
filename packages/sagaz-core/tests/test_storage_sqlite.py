"""What only the SQLite backend has: URLs, the file, its schema and migrations, errors,
and writers in several tasks and processes. The behaviour every backend shares is in
test_storage_contract.py."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sagaz.core.errors import ConfigurationError, StorageError
from sagaz.core.records import (
    NewSaga,
    OutboxEvent,
    SagaRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
)
from sagaz.core.status import SagaStatus, StepStatus
from sagaz.core.storage import sqlite as sqlite_module
from sagaz.core.storage import storage_from_url
from sagaz.core.storage.sqlite import SQLiteSagaStorage

K = TransitionKind


class PortableSQLiteStorage(SQLiteSagaStorage):
    _fast_driver = False


DRIVERS = [
    pytest.param(SQLiteSagaStorage, id="fast"),
    pytest.param(PortableSQLiteStorage, id="portable"),
]


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[SQLiteSagaStorage]:
    store = SQLiteSagaStorage(tmp_path / "sagas.db")
    try:
        yield store
    finally:
        await store.close()


def running(saga_id: str, **kwargs: Any) -> NewSaga:
    return NewSaga(saga_id, "Order", {"id": saga_id}, SagaStatus.RUNNING, **kwargs)


def raw_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# -- URLs and construction -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path", "busy_timeout"),
    [
        ("sqlite:///relative.db", "relative.db", 30.0),
        ("sqlite:///dir/sub/relative.db", "dir/sub/relative.db", 30.0),
        ("sqlite:////abs/path.db", "/abs/path.db", 30.0),
        ("sqlite:///:memory:", ":memory:", 30.0),
        ("SQLite:///upper.db", "upper.db", 30.0),
        ("sqlite:///with%20space.db", "with space.db", 30.0),
        ("sqlite:///x.db?busy_timeout=2.5", "x.db", 2.5),
        ("sqlite:///x.db?busy_timeout=0", "x.db", 0.0),
    ],
)
def test_from_url(url: str, path: str, busy_timeout: float) -> None:
    storage = SQLiteSagaStorage.from_url(url)
    assert storage.path == path
    assert storage.busy_timeout == busy_timeout
    assert storage.durable is True
    assert not storage.is_open
    assert repr(storage) == f"SQLiteSagaStorage({path!r})"


def test_storage_from_url_picks_sqlite() -> None:
    storage = storage_from_url("sqlite:////var/lib/app/sagas.db?busy_timeout=5")
    assert isinstance(storage, SQLiteSagaStorage)
    assert storage.path == "/var/lib/app/sagas.db"
    assert storage.busy_timeout == 5.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "no file path"),
        ("sqlite:///", "no file path"),
        ("sqlite://host/x.db", "names a host"),
        ("sqlite:x.db", "not an SQLite storage URL"),
        ("postgresql://db/x", "not an SQLite storage URL"),
        ("sqlite:///x.db?timeout=1", "unknown option 'timeout'"),
        ("sqlite:///x.db?busy_timeout=soon", "must be a number"),
        ("sqlite:///x.db?busy_timeout", "malformed query string"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout must be"),
        ("sqlite:///x.db?busy_timeout=nan", "busy_timeout must be"),
        ("sqlite:///x.db?busy_timeout=inf", "busy_timeout must be"),
    ],
)
def test_bad_urls_say_what_to_write(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        SQLiteSagaStorage.from_url(url)
    assert "sqlite:///" in str(info.value) or "busy_timeout" in str(info.value)


def test_empty_path_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a file path"):
        SQLiteSagaStorage("")


def test_missing_aiosqlite_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiosqlite", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[sqlite\]'"):
        SQLiteSagaStorage("x.db")
    with pytest.raises(ConfigurationError, match="aiosqlite"):
        storage_from_url("sqlite:///x.db")


# -- the file ------------------------------------------------------------------------


async def test_open_creates_the_directory_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "sagas.db"
    async with SQLiteSagaStorage(path, busy_timeout=2.5) as storage:
        assert path.is_file()
        db = storage._db
        assert db is not None

        async def pragma(name: str) -> Any:
            rows = list(await db.execute_fetchall(f"PRAGMA {name}"))
            return rows[0][0]

        assert await pragma("journal_mode") == "wal"
        assert await pragma("synchronous") == 1  # NORMAL
        assert await pragma("foreign_keys") == 1
        assert await pragma("busy_timeout") == 2500


async def test_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with storage_from_url("sqlite:///data/sagas.db") as storage:
        await storage.create_saga(running("s"))
    assert (tmp_path / "data" / "sagas.db").is_file()


async def test_schema(storage: SQLiteSagaStorage) -> None:
    await storage.ensure_open()
    path = Path(storage.path)
    tables = {r[0] for r in raw_rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {
        "sagaz_schema_version",
        "sagaz_sagas",
        "sagaz_steps",
        "sagaz_history",
        "sagaz_trigger_events",
        "sagaz_outbox",
        "sagaz_inbox",
    }
    columns = {r[1] for r in raw_rows(path, "PRAGMA table_info(sagaz_sagas)")}
    assert {"lease_owner", "lease_expires_at", "recoveries", "context"} <= columns
    unique = [
        r for r in raw_rows(path, "PRAGMA index_list(sagaz_sagas)") if r[1].startswith("sagaz_")
    ]
    assert {r[1] for r in unique} >= {
        "sagaz_sagas_idempotency",
        "sagaz_sagas_status",
        "sagaz_sagas_name",
        "sagaz_sagas_correlation",
        "sagaz_sagas_created",
    }
    assert [r[2] for r in unique if r[1] == "sagaz_sagas_idempotency"] == [1]
    index_columns = [r[2] for r in raw_rows(path, "PRAGMA index_info(sagaz_sagas_idempotency)")]
    assert index_columns == ["saga_name", "idempotency_key"]
    events = {r[1] for r in raw_rows(path, "PRAGMA index_list(sagaz_trigger_events)")}
    assert "sagaz_trigger_events_correlation" in events


async def test_values_are_stored_as_json_text(storage: SQLiteSagaStorage) -> None:
    context = {"order": {"id": 7, "lines": [1, 2.5, None, True]}, "note": "ü"}
    await storage.create_saga(
        running("s", correlation_id="c"), [Transition(K.STEP_COMPLETED, "a", 1, result={"r": 1})]
    )
    await storage.record("s", [], context)
    path = Path(storage.path)
    (stored,) = raw_rows(path, "SELECT context FROM sagaz_sagas")
    assert json.loads(stored[0]) == context
    (result,) = raw_rows(path, "SELECT result FROM sagaz_steps")
    assert json.loads(result[0]) == {"r": 1}


async def test_data_survives_close_and_a_new_instance(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    t0 = time.time()
    first = SQLiteSagaStorage(path)
    await first.create_saga(
        running("s", idempotency_key="k"),
        [Transition(K.SAGA_STARTED, at=t0), Transition(K.STEP_STARTED, "a", 1, at=t0 + 1)],
        [OutboxEvent("e1", "s", "saga.started", {"x": 1})],
    )
    await first.record_trigger_event(TriggerEvent("ev", "src", {"p": 1}, "corr"), [])
    before = await first.load("s")
    await first.close()
    await first.ping()  # reopens lazily
    assert await first.load("s") == before
    await first.close()

    second = SQLiteSagaStorage(path)
    try:
        assert await second.load("s") == before
        assert await second.create_saga(running("other", idempotency_key="k")) == ("s", False)
        assert [e.event_id for e in await second.find_trigger_events("corr")] == ["ev"]
        assert [o.event.event_id for o in await second.list_outbox()] == ["e1"]
    finally:
        await second.close()


def test_a_storage_nobody_closed_does_not_hang_the_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from sagaz.core.records import NewSaga
        from sagaz.core.status import SagaStatus
        from sagaz.core.storage.sqlite import SQLiteSagaStorage

        storage = SQLiteSagaStorage(sys.argv[1])
        asyncio.run(storage.create_saga(NewSaga("s", "Order", {}, SagaStatus.RUNNING)))
        """
    )
    path = tmp_path / "sagas.db"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    assert raw_rows(path, "SELECT saga_id FROM sagaz_sagas") == [("s",)]


def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """gunicorn forks workers after the app (and its storage) were set up."""
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from sagaz.core.records import NewSaga
        from sagaz.core.status import SagaStatus
        from sagaz.core.storage.sqlite import SQLiteSagaStorage

        storage = SQLiteSagaStorage(sys.argv[1])

        def new(saga_id):
            return NewSaga(saga_id, "Order", {}, SagaStatus.RUNNING)

        asyncio.run(storage.create_saga(new("parent-1")))
        pid = os.fork()
        if pid == 0:  # the child: the parent's connection and thread are not usable here
            async def child():
                assert (await storage.load("parent-1")) is not None
                await storage.create_saga(new("child"))
                await storage.close()
            asyncio.run(child())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

        async def parent():
            await storage.create_saga(new("parent-2"))
            assert (await storage.load("child")) is not None
            await storage.close()
        asyncio.run(parent())
        """
    )
    path = tmp_path / "sagas.db"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    rows = raw_rows(path, "SELECT saga_id FROM sagaz_sagas ORDER BY rowid")
    assert rows == [("parent-1",), ("child",), ("parent-2",)]


async def test_memory_database(tmp_path: Path) -> None:
    storage = SQLiteSagaStorage.from_url("sqlite:///:memory:")
    await storage.create_saga(running("s"))
    assert (await storage.load("s")) is not None
    await storage.close()
    assert await storage.load("s") is None  # a new private database
    await storage.close()
    assert list(tmp_path.iterdir()) == []


# -- migrations ----------------------------------------------------------------------


async def test_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    storage = SQLiteSagaStorage(path)
    all_versions = list(range(1, SQLiteSagaStorage.schema_version + 1))
    assert await storage.migrate() == all_versions  # applied when it opened
    assert await storage.migrate() == []
    await storage.close()
    versions = raw_rows(path, "SELECT version, applied_at FROM sagaz_schema_version")
    for _ in range(3):
        again = SQLiteSagaStorage(path)
        assert await again.migrate() == []
        await again.close()
    assert raw_rows(path, "SELECT version, applied_at FROM sagaz_schema_version") == versions
    assert [v for v, _ in versions] == list(range(1, SQLiteSagaStorage.schema_version + 1))


async def test_a_new_migration_upgrades_an_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sagas.db"
    async with SQLiteSagaStorage(path) as storage:
        await storage.create_saga(running("s"))
    upgrade = ("ALTER TABLE sagaz_sagas ADD COLUMN note TEXT",)
    monkeypatch.setattr(sqlite_module, "_MIGRATIONS", (*sqlite_module._MIGRATIONS, upgrade))
    latest = SQLiteSagaStorage.schema_version + 1
    monkeypatch.setattr(SQLiteSagaStorage, "schema_version", latest)
    storage = SQLiteSagaStorage(path)
    try:
        assert await storage.migrate() == [latest]
        assert (await storage.load("s")) is not None
    finally:
        await storage.close()
    assert [r[0] for r in raw_rows(path, "SELECT version FROM sagaz_schema_version")] == list(
        range(1, latest + 1)
    )
    assert "note" in {r[1] for r in raw_rows(path, "PRAGMA table_info(sagaz_sagas)")}


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    async with SQLiteSagaStorage(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO sagaz_schema_version VALUES (99, 0)")
    storage = SQLiteSagaStorage(path)
    with pytest.raises(StorageError, match=r"version 99, newer .* upgrade sagaz-core"):
        await storage.ensure_open()
    assert not storage.is_open
    assert storage._db is None


async def test_many_first_opens_at_once(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    storages = [SQLiteSagaStorage(path) for _ in range(8)]
    try:
        await asyncio.gather(*(s.ensure_open() for s in storages))
        await asyncio.gather(*(s.create_saga(running(f"s{i}")) for i, s in enumerate(storages)))
    finally:
        await asyncio.gather(*(s.close() for s in storages))
    assert raw_rows(path, "SELECT version FROM sagaz_schema_version") == [
        (v,) for v in range(1, SQLiteSagaStorage.schema_version + 1)
    ]
    assert len(raw_rows(path, "SELECT * FROM sagaz_sagas")) == 8


def test_sagaz_migrate_command(tmp_path: Path) -> None:
    from sagaz.core.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    first = runner.invoke(main, ["--storage-url", url, "migrate"])
    assert first.exit_code == 0, first.output
    assert "applied migrations: 1" in first.output
    second = runner.invoke(main, ["--storage-url", url, "migrate"])
    assert second.exit_code == 0
    assert "up to date" in second.output


# -- errors that say what to do --------------------------------------------------------


async def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the sagas you are looking for\n" * 100)
    storage = SQLiteSagaStorage(path)
    with pytest.raises(StorageError, match="not an SQLite database"):
        await storage.create_saga(running("s"))
    assert not storage.is_open


async def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    storage = SQLiteSagaStorage(tmp_path / "file" / "sagas.db")
    with pytest.raises(StorageError, match="cannot create its directory"):
        await storage.ensure_open()


async def test_path_that_cannot_be_opened(tmp_path: Path) -> None:
    storage = SQLiteSagaStorage(tmp_path)  # a directory
    with pytest.raises(StorageError, match=r"could not open the database.*writable"):
        await storage.ensure_open()


async def test_waiting_too_long_for_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    storage = SQLiteSagaStorage(path, busy_timeout=0.2)
    await storage.ensure_open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"busy_timeout=0\.2s.*raise busy_timeout"):
            await storage.create_saga(running("s"))
        assert time.monotonic() - started >= 0.15
        assert await storage.load("s") is None  # reads do not wait for the writer
        other.execute("COMMIT")
        assert await storage.create_saga(running("s")) == ("s", True)
    finally:
        other.close()
        await storage.close()


class _LockedFor:
    """Stands in for a connection: the first ``n`` WAL switches find the file locked."""

    def __init__(self, n: int, message: str = "database is locked") -> None:
        self.n, self.calls, self.message = n, 0, message

    async def execute(self, sql: str) -> None:
        self.calls += 1
        if self.calls <= self.n:
            raise sqlite3.OperationalError(self.message)


async def test_switching_to_wal_retries_while_another_process_holds_the_file() -> None:
    storage = SQLiteSagaStorage("unused.db", busy_timeout=5)
    db = _LockedFor(3)
    await storage._enable_wal(db)  # type: ignore[arg-type]
    assert db.calls == 4
    impatient = SQLiteSagaStorage("unused.db", busy_timeout=0.05)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await impatient._enable_wal(_LockedFor(1000))  # type: ignore[arg-type]
    other = _LockedFor(1, "disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        await storage._enable_wal(other)  # type: ignore[arg-type]
    assert other.calls == 1


async def test_other_sqlite_errors_name_the_operation(storage: SQLiteSagaStorage) -> None:
    await storage.ensure_open()
    with sqlite3.connect(storage.path) as db:
        db.execute("DROP TABLE sagaz_inbox")
    with pytest.raises(StorageError, match=r"could not mark event 'e' processed.*no such table"):
        await storage.inbox_mark("c", "e")


@pytest.mark.parametrize(
    ("write", "names"),
    [
        ("context", "the context of saga 's'"),
        ("result", "the result of step 'a' of saga 's'"),
        ("event", "the payload of outbox event 'saga.x' (e)"),
    ],
)
async def test_values_that_are_not_json_are_refused_before_writing(
    storage: SQLiteSagaStorage, write: str, names: str
) -> None:
    await storage.create_saga(running("s"))
    before = await storage.load("s")
    transitions = [Transition(K.STEP_STARTED, "a", 1)]
    context: dict[str, Any] | None = None
    events: list[OutboxEvent] = []
    if write == "context":
        context = {"when": object()}
    elif write == "result":
        transitions.append(Transition(K.STEP_COMPLETED, "a", 1, result={"x": {1, 2}}))
    else:
        events.append(OutboxEvent("e", "s", "saga.x", {"f": lambda: 1}))
    with pytest.raises(StorageError, match=f"cannot store {re.escape(names)} as JSON.*str, int"):
        await storage.record("s", transitions, context, events)
    assert await storage.load("s") == before
    assert await storage.list_outbox() == []


async def test_new_saga_and_trigger_payload_must_be_json(storage: SQLiteSagaStorage) -> None:
    with pytest.raises(StorageError, match="context of saga 'bad'"):
        await storage.create_saga(NewSaga("bad", "Order", {"x": float}, SagaStatus.RUNNING))
    circular: dict[str, Any] = {}
    circular["self"] = circular
    event = TriggerEvent("ev", "src", circular, "corr")
    with pytest.raises(StorageError, match="payload of event 'ev'"):
        await storage.record_trigger_event(event, [running("s")])
    assert await storage.load("s") is None
    assert await storage.find_trigger_events("corr") == []


@pytest.mark.parametrize("cls", DRIVERS)
async def test_a_failed_transaction_writes_nothing(
    tmp_path: Path, cls: type[SQLiteSagaStorage]
) -> None:
    async with cls(tmp_path / "sagas.db") as storage:
        await storage.create_saga(running("taken"))
        event = TriggerEvent("ev", "src", {}, "corr")
        sagas = [running("fresh"), running("taken")]  # the second fails after the first
        with pytest.raises(StorageError, match="'taken' is already recorded"):
            await storage.record_trigger_event(event, sagas)
        assert await storage.load("fresh") is None
        assert await storage.find_trigger_events("corr") == []
        assert event.saga_ids == []
        # The connection is usable afterwards (no transaction left open).
        assert await storage.create_saga(running("fresh")) == ("fresh", True)


async def test_cancelled_callers_leave_no_transaction_open(tmp_path: Path) -> None:
    """A task cancelled in the middle of a portable-driver transaction rolls it back."""
    async with PortableSQLiteStorage(tmp_path / "sagas.db") as storage:
        await storage.create_saga(running("s"))
        done = 0
        for i in range(30):
            batch = [Transition(K.STEP_STARTED, f"s{i}", 1), Transition(K.STEP_FAILED, f"s{i}")]
            task = asyncio.create_task(storage.record("s", batch))
            for _ in range(i % 6):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
                done += 1
            except asyncio.CancelledError:
                pass
            record = await storage.load("s")
            assert record is not None
            # All or nothing: every recorded batch has both of its transitions.
            assert len(record.history) % 2 == 0
            assert [h.seq for h in record.history] == list(range(1, len(record.history) + 1))
        await storage.record("s", [Transition(K.SAGA_COMPLETED)])
        final = await storage.load("s")
        assert final is not None
        assert final.status is SagaStatus.COMPLETED
        # A caller cancelled while its COMMIT ran sees CancelledError for a write that
        # landed, so ``done`` is a lower bound.
        assert len(final.history) % 2 == 1
        assert len(final.history) >= 2 * done + 1


# -- concurrency -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", DRIVERS)
async def test_many_sagas_at_once_in_one_process(
    tmp_path: Path, cls: type[SQLiteSagaStorage]
) -> None:
    async with cls(tmp_path / "sagas.db") as storage:

        async def saga(n: int) -> None:
            saga_id = f"saga-{n}"
            await storage.create_saga(running(saga_id), [Transition(K.SAGA_STARTED)])
            for step in ("a", "b", "c"):
                await storage.record(saga_id, [Transition(K.STEP_STARTED, step, 1)])
                await asyncio.sleep(0)
                await storage.record(
                    saga_id,
                    [Transition(K.STEP_COMPLETED, step, 1, result={step: n})],
                    {"n": n, "last": step},
                )
            await storage.record(saga_id, [Transition(K.SAGA_COMPLETED)])

        await asyncio.gather(*(saga(n) for n in range(50)))
        records = await storage.list_sagas()
        assert len(records) == 50
        for n in range(50):
            record = await storage.load(f"saga-{n}")
            assert record is not None
            assert record.status is SagaStatus.COMPLETED
            assert record.context == {"n": n, "last": "c"}
            assert [h.seq for h in record.history] == list(range(1, 9))
            assert [s.result for s in record.steps.values()] == [{"a": n}, {"b": n}, {"c": n}]


async def test_two_connections_claim_disjoint_sagas(tmp_path: Path) -> None:
    path = tmp_path / "sagas.db"
    storages = [SQLiteSagaStorage(path), SQLiteSagaStorage(path)]
    try:
        for i in range(40):
            await storages[0].create_saga(
                NewSaga(f"s{i}", "Order", {}, SagaStatus.PENDING, created_at=float(i))
            )

        first: list[str] = []
        second: list[str] = []
        while True:  # both claim at the same time, round after round
            a, b = await asyncio.gather(*(s.claim_runnable(3) for s in storages))
            if not a and not b:
                break
            first += [r.saga_id for r in a]
            second += [r.saga_id for r in b]
    finally:
        await asyncio.gather(*(s.close() for s in storages))
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(f"s{i}" for i in range(40))
    assert first
    assert second


_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from sagaz.core.records import NewSaga, Transition, TransitionKind as K
    from sagaz.core.status import SagaStatus
    from sagaz.core.storage.sqlite import SQLiteSagaStorage

    async def main(path, tag, n, go):
        while not os.path.exists(go):
            time.sleep(0.005)
        storage = SQLiteSagaStorage(path, busy_timeout=60)
        shared = {}
        for i in range(n):
            saga_id = f"{tag}-{i}"
            await storage.create_saga(
                NewSaga(saga_id, "Order", {"i": i}, SagaStatus.RUNNING),
                [Transition(K.SAGA_STARTED)],
            )
            for step in ("a", "b"):
                await storage.record(saga_id, [Transition(K.STEP_STARTED, step, 1)])
                await storage.record(
                    saga_id,
                    [Transition(K.STEP_COMPLETED, step, 1, result={"by": tag})],
                    {"i": i, "step": step},
                )
            await storage.record(saga_id, [Transition(K.SAGA_COMPLETED)])
            key = NewSaga(f"{tag}-key-{i}", "Keyed", {}, idempotency_key=str(i))
            shared[i], _ = await storage.create_saga(key)
        claimed = []
        while batch := await storage.claim_runnable(2, ["Keyed"]):
            claimed += [r.saga_id for r in batch]
        await storage.close()
        print(json.dumps({"shared": shared, "claimed": claimed}))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    """
)


@pytest.mark.slow
def test_two_processes_write_one_file(tmp_path: Path) -> None:
    path, go, n = tmp_path / "shared.db", tmp_path / "go", 60
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), tag, str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    go.touch()  # both open (and migrate) the new file at the same moment
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))

    # Every saga of both writers is complete, with its history in order.
    storage = SQLiteSagaStorage(path)
    loaded, keyed = asyncio.run(_check(storage))
    assert len(loaded) == 2 * n
    for record in loaded:
        assert record.status is SagaStatus.COMPLETED
        assert [h.kind for h in record.history] == [
            K.SAGA_STARTED,
            K.STEP_STARTED,
            K.STEP_COMPLETED,
            K.STEP_STARTED,
            K.STEP_COMPLETED,
            K.SAGA_COMPLETED,
        ]
        assert [h.seq for h in record.history] == [1, 2, 3, 4, 5, 6]
        assert record.steps["b"].status is StepStatus.COMPLETED
    # One saga per idempotency key, whichever process started it; both agree on its id.
    assert outputs[0]["shared"] == outputs[1]["shared"]
    assert len(keyed) == n
    assert {r.saga_id for r in keyed} == set(outputs[0]["shared"].values())
    # Claims never overlapped (and every keyed saga was claimed by the one that got it).
    claims = [set(o["claimed"]) for o in outputs]
    assert not claims[0] & claims[1]
    assert claims[0] | claims[1] <= {r.saga_id for r in keyed}
    assert raw_rows(path, "SELECT version FROM sagaz_schema_version") == [
        (v,) for v in range(1, SQLiteSagaStorage.schema_version + 1)
    ]


async def _check(storage: SQLiteSagaStorage) -> tuple[list[SagaRecord], list[SagaRecord]]:
    from sagaz.core.records import SagaQuery

    async with storage:
        orders = await storage.list_sagas(SagaQuery(saga_name="Order", limit=10_000))
        keyed = await storage.list_sagas(SagaQuery(saga_name="Keyed", limit=10_000))
        loaded = [await storage.load(r.saga_id) for r in orders]
    return [r for r in loaded if r is not None], keyed


# -- with the engine -------------------------------------------------------------------


async def test_the_engine_runs_durably_on_sqlite(tmp_path: Path) -> None:
    from sagaz.core import Saga, SagaConfig

    path = tmp_path / "engine.db"
    calls: list[str] = []

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("reserve")
        return {"reservation": "r-1"}

    async def release(ctx: dict[str, Any]) -> None:
        calls.append("release")

    def charge(ctx: dict[str, Any]) -> None:
        calls.append("charge")
        raise RuntimeError("card declined")

    storage = SQLiteSagaStorage(path)
    try:
        saga = Saga(name="checkout", config=SagaConfig(storage=storage))
        saga.add_step("reserve", reserve, release).add_step(
            "charge", charge, depends_on=["reserve"]
        )
        result = await saga.run({"order": 1})
    finally:
        await storage.close()
    assert result.status is SagaStatus.COMPENSATED
    assert calls == ["reserve", "charge", "release"]

    async with SQLiteSagaStorage(path) as again:
        record = await again.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.context["reservation"] == "r-1"
    assert record.steps["reserve"].status is StepStatus.COMPENSATED
    assert record.steps["charge"].status is StepStatus.FAILED
    assert "card declined" in (record.error or "")
    assert record.lease_owner is None
    assert [h.seq for h in record.history] == list(range(1, len(record.history) + 1))
