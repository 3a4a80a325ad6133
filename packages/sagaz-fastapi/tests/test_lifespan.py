"""create_lifespan and get_config: storage, recovery, shutdown, per-app config, composition."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sagaz_fastapi_support import require, terminal_state, uvicorn_problem, wait_until
from sagaz_fastapi_testapp import SOURCE, WebOrderSaga, create_app

import sagaz.core.config
from sagaz.core import InMemorySagaStorage, SagaConfig, SagaStatus, configure, start_saga
from sagaz.integrations.fastapi import (
    SagazNotInitializedError,
    create_lifespan,
    get_config,
)
from sagaz.integrations.fastapi import lifespan as lifespan_module

JSON = {"Content-Type": "application/json"}


def config_app(config: SagaConfig | None = None, **kwargs: Any) -> FastAPI:
    app = FastAPI(lifespan=create_lifespan(config, **kwargs))

    @app.get("/config")
    async def show(cfg: SagaConfig = Depends(get_config)) -> dict[str, int]:  # noqa: B008
        return {"id": id(cfg)}

    return app


def test_the_config_is_the_apps_own() -> None:
    first, second = SagaConfig(), SagaConfig()
    app_one, app_two = config_app(first), config_app(second)
    with TestClient(app_one) as one, TestClient(app_two) as two:
        assert one.get("/config").json() == {"id": id(first)}
        assert two.get("/config").json() == {"id": id(second)}
        assert app_one.state.sagaz_config is first
        assert app_two.state.sagaz_config is second
        assert first.storage.is_open
        assert second.storage.is_open
    assert not hasattr(app_one.state, "sagaz_config")
    assert not first.storage.is_open
    assert not second.storage.is_open


def test_each_app_starts_sagas_in_its_own_storage() -> None:
    first, second = SagaConfig(), SagaConfig()
    body = b'{"order_id": "own", "amount": 1}'
    with TestClient(create_app(first)) as one, TestClient(create_app(second)) as two:
        saga_one = one.post(f"/webhooks/{SOURCE}", content=body, headers=JSON).json()
        saga_two = two.post(f"/webhooks/{SOURCE}", content=body, headers=JSON).json()
        # Same idempotency key, different storages: two sagas, neither a duplicate.
        assert saga_one["duplicate"] is False
        assert saga_two["duplicate"] is False
        assert saga_one["saga_ids"] != saga_two["saga_ids"]
        assert terminal_state(one, saga_one["saga_ids"][0]) == "COMPLETED"
        assert one.get(f"/webhooks/status/{saga_two['saga_ids'][0]}").status_code == 404


def test_get_config_without_the_lifespan_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/config")
    async def show(cfg: SagaConfig = Depends(get_config)) -> None:  # noqa: B008
        raise AssertionError("not reached")

    with TestClient(app) as client, pytest.raises(SagazNotInitializedError) as info:
        client.get("/config")
    message = str(info.value)
    assert message.startswith("Sagaz not initialized. Did you use create_lifespan()?")
    assert "FastAPI(lifespan=create_lifespan(config))" in message
    assert isinstance(info.value, RuntimeError)


def test_without_a_config_the_process_wide_one_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sagaz.core.config, "_global_config", None)
    default = configure(storage_url="memory://")
    with TestClient(config_app()) as client:
        assert client.get("/config").json() == {"id": id(default)}


def test_the_apps_own_lifespan_runs_inside() -> None:
    events: list[str] = []
    config = SagaConfig()

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sagaz is ready when the application's lifespan starts.
        assert app.state.sagaz_config is config
        assert config.storage.is_open
        events.append("app start")
        yield
        events.append("app stop")
        assert config.storage.is_open

    app = config_app(config, lifespan=app_lifespan)
    with TestClient(app) as client:
        events.append("serving")
        assert client.get("/config").status_code == 200
    assert events == ["app start", "serving", "app stop"]
    assert not config.storage.is_open


def test_the_apps_lifespan_state_is_passed_on() -> None:
    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    app = FastAPI(lifespan=create_lifespan(SagaConfig(), lifespan=app_lifespan))

    @app.get("/state")
    async def state(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    with TestClient(app) as client:
        assert client.get("/state").json() == {"greeting": "hello"}


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="shutdown_grace"):
        create_lifespan(shutdown_grace=-1)
    with pytest.raises(ValueError, match="recover_concurrency"):
        create_lifespan(recover_concurrency=0)


class FailingStorage(InMemorySagaStorage):
    async def _open(self) -> None:
        raise OSError("cannot reach the database")


def test_a_storage_that_cannot_open_fails_the_start_up() -> None:
    app = config_app(SagaConfig(storage=FailingStorage()))
    with pytest.raises(OSError, match="cannot reach"), TestClient(app):
        pass  # pragma: no cover
    assert lifespan_module._active == []
    assert not hasattr(app.state, "sagaz_config")


def seed_pending(config: SagaConfig, order_id: str, **extra: Any) -> str:
    async def seed() -> str:
        saga = WebOrderSaga(config=config)
        saga_id, _ = await start_saga(saga, {"order_id": order_id, "amount": 1, **extra}, run=False)
        return saga_id

    return asyncio.run(seed())


def test_unfinished_sagas_are_resumed_at_start_up() -> None:
    config = SagaConfig()
    saga_id = seed_pending(config, "r1")
    with TestClient(create_app(config)) as client:
        assert terminal_state(client, saga_id) == "COMPLETED"


def test_recovery_can_be_turned_off() -> None:
    config = SagaConfig()
    saga_id = seed_pending(config, "r2")
    with TestClient(create_app(config, recover=False)) as client:
        time.sleep(0.2)
        assert client.get(f"/webhooks/status/{saga_id}").json()["state"] == "PENDING"


def test_shutdown_cancels_sagas_after_the_grace_period(tmp_path: Path) -> None:
    config = SagaConfig()
    gate = tmp_path / "gate"
    gate.touch()
    body = f'{{"order_id": "g1", "amount": 1, "gate": "{gate}"}}'.encode()
    with TestClient(create_app(config, shutdown_grace=0.3)) as client:
        saga_id = client.post(f"/webhooks/{SOURCE}", content=body, headers=JSON).json()["saga_ids"][
            0
        ]
        wait_until(
            lambda: client.get(f"/webhooks/status/{saga_id}").json()["state"] == "RUNNING",
            what="the saga to start",
        )
        started = time.monotonic()
    assert time.monotonic() - started < 5
    record = asyncio.run(config.storage.load(saga_id))
    assert record is not None
    assert record.status is SagaStatus.RUNNING  # cancelled, still recorded
    assert record.lease_owner is None  # released: the next start-up takes it at once
    gate.unlink()
    with TestClient(create_app(config)) as client:
        assert terminal_state(client, saga_id) == "COMPLETED"


def test_a_storage_shared_by_two_apps_closes_with_the_last() -> None:
    config = SagaConfig()
    one = TestClient(config_app(config))
    two = TestClient(config_app(config))
    with one:
        with two:
            assert config.storage.is_open
        assert config.storage.is_open
    assert not config.storage.is_open


def test_a_second_app_on_the_same_storage_does_not_recover_again() -> None:
    config = SagaConfig()
    with TestClient(create_app(config, recover=False)) as first:
        saga_id = seed_pending_async(first, config, "shared-1")
        with TestClient(create_app(config)) as second:
            time.sleep(0.2)
            assert second.get(f"/webhooks/status/{saga_id}").json()["state"] == "PENDING"


def seed_pending_async(client: TestClient, config: SagaConfig, order_id: str) -> str:
    async def seed() -> str:
        saga = WebOrderSaga(config=config)
        saga_id, _ = await start_saga(saga, {"order_id": order_id, "amount": 1}, run=False)
        return saga_id

    result: str = client.portal.call(seed)  # type: ignore[union-attr]
    return result


async def test_two_apps_on_one_loop_leave_each_other_running(tmp_path: Path) -> None:
    config_a, config_b = SagaConfig(), SagaConfig()
    app_a, app_b = FastAPI(), FastAPI()
    gate = tmp_path / "gate"
    gate.touch()
    lifespan_a = create_lifespan(config_a, recover=False, shutdown_grace=5)
    lifespan_b = create_lifespan(config_b, recover=False, shutdown_grace=0.05)
    async with lifespan_a(app_a):
        async with lifespan_b(app_b):
            saga = WebOrderSaga(config=config_a)
            saga_id, _ = await start_saga(saga, {"order_id": "l1", "amount": 1, "gate": str(gate)})
        # B's shutdown did not cancel A's saga (its grace period ran out meanwhile).
        record = await config_a.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.RUNNING
        gate.unlink()
    record = await config_a.storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED


# -- start-up and shutdown, ten times, leave nothing behind ---------------------------------


def open_fds_to(path: Path) -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(path)):
                count += 1
        except OSError:
            continue
    return count


def sagaz_threads() -> int:
    """Threads, less the event loop's default executor (DNS lookups of the HTTP client)."""
    return sum(not t.name.startswith("asyncio_") for t in threading.enumerate())


async def threads_settle(baseline: int, timeout: float = 5.0) -> None:
    """Wait until no more threads than ``baseline`` run (a closed connection's thread
    ends a moment after the close returns); fail naming them otherwise."""
    deadline = time.monotonic() + timeout
    while sagaz_threads() > baseline and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert sagaz_threads() <= baseline, [t.name for t in threading.enumerate()]


@pytest.fixture
def settled_threads() -> int:
    """The thread count before the test (after earlier tests' threads wound down)."""
    time.sleep(0.1)
    return threading.active_count()


def test_ten_start_ups_with_test_client_leave_nothing(
    sqlite_url: str, tmp_path: Path, settled_threads: int
) -> None:
    db = tmp_path / "sagas.db"
    config = SagaConfig(storage_url=sqlite_url)
    body = b'{"order_id": "t%d", "amount": 1}'
    for i in range(10):
        with TestClient(create_app(config)) as client:
            response = client.post(f"/webhooks/{SOURCE}", content=body % i, headers=JSON)
            assert terminal_state(client, response.json()["saga_ids"][0]) == "COMPLETED"
            assert open_fds_to(db) > 0
        assert open_fds_to(db) == 0
    wait_until(lambda: threading.active_count() <= settled_threads, what="threads to end")


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_ten_start_ups_on_one_loop_leave_no_task(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if storage == "memory" else request.getfixturevalue("sqlite_url")
    db = tmp_path / "sagas.db"
    config = SagaConfig(storage_url=url)
    threads = sagaz_threads()
    for i in range(10):
        app = FastAPI()
        async with create_lifespan(config)(app):
            saga = WebOrderSaga(config=config)
            saga_id, _ = await start_saga(saga, {"order_id": f"loop{i}", "amount": 1})
        record = await config.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.COMPLETED  # drained within the grace period
        await config.storage.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert open_fds_to(db) == 0
    await threads_settle(threads)


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_ten_uvicorn_servers_in_one_process_leave_nothing(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require(uvicorn_problem() is None, uvicorn_problem() or "")
    import uvicorn
    from sagaz_fastapi_support import free_port

    url = "memory://" if storage == "memory" else request.getfixturevalue("sqlite_url")
    db = tmp_path / "sagas.db"
    config = SagaConfig(storage_url=url)
    threads = sagaz_threads()
    for i in range(10):
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            response = await client.post(
                f"/webhooks/{SOURCE}", content=b'{"order_id": "u%d"}' % i, headers=JSON
            )
            assert response.status_code == 202
            saga_id = response.json()["saga_ids"][0]
            for _ in range(500):
                state = (await client.get(f"/webhooks/status/{saga_id}")).json()["state"]
                if state == "COMPLETED":
                    break
                await asyncio.sleep(0.02)
            assert state == "COMPLETED"
        server.should_exit = True
        await serving
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert open_fds_to(db) == 0
    await threads_settle(threads)


class UnreleasableStorage(InMemorySagaStorage):
    async def release_leases(self, saga_ids: Any = None) -> int:
        raise RuntimeError("cannot release")


def test_a_failure_to_release_leases_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = SagaConfig(storage=UnreleasableStorage())
    with TestClient(config_app(config)):
        pass
    assert not config.storage.is_open
    assert "could not release" in caplog.text
