"""saga_factory / SagaFactory and run_saga_background."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.testclient import TestClient
from sagaz_fastapi_support import terminal_state
from sagaz_fastapi_testapp import WebOrderSaga, create_app

from sagaz.core import Saga, SagaConfig, SagaStatus
from sagaz.integrations.fastapi import (
    SagaFactory,
    create_lifespan,
    get_config,
    run_saga_background,
    saga_factory,
)


def test_saga_factory_binds_sagas_to_the_apps_config() -> None:
    config = SagaConfig()
    app = FastAPI(lifespan=create_lifespan(config))

    @app.get("/saga")
    async def show(
        saga: WebOrderSaga = Depends(saga_factory(WebOrderSaga)),  # noqa: B008
        cfg: SagaConfig = Depends(get_config),  # noqa: B008
    ) -> dict[str, Any]:
        return {"type": type(saga).__name__, "same": saga.config is cfg is config, "id": id(saga)}

    with TestClient(app) as client:
        first, second = client.get("/saga").json(), client.get("/saga").json()
    assert first["type"] == "WebOrderSaga"
    assert first["same"] is True
    assert first["id"] != second["id"]  # a new saga per request


async def add(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"total": ctx["a"] + ctx["b"]}


def test_saga_factory_copies_imperative_sagas() -> None:
    template = Saga(name="fastapi-test-adder").add_step("add", add)
    config = SagaConfig()
    app = FastAPI(lifespan=create_lifespan(config))

    @app.post("/add")
    async def run(saga: Saga = Depends(saga_factory(template))) -> dict[str, Any]:  # noqa: B008
        assert saga is not template
        assert saga.config is config
        result = await saga.run({"a": 2, "b": 3})
        return {"status": result.status, "total": result.context["total"]}

    with TestClient(app) as client:
        assert client.post("/add").json() == {"status": "COMPLETED", "total": 5}


def test_saga_factory_rejects_what_is_not_a_saga() -> None:
    with pytest.raises(TypeError, match="Saga subclass or a Saga instance"):
        saga_factory(int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="got int"):
        saga_factory(42)  # type: ignore[type-var]


def test_saga_factory_dependencies_are_documented() -> None:
    provide = SagaFactory()(WebOrderSaga)
    assert provide.__doc__ == "Provide a WebOrderSaga saga bound to the application's config."


def test_run_saga_background_returns_the_id_of_a_recorded_saga() -> None:
    config = SagaConfig()
    app = FastAPI(lifespan=create_lifespan(config))
    seen: dict[str, Any] = {}

    @app.post("/orders/{order_id}", status_code=202)
    async def order(
        order_id: str,
        background_tasks: BackgroundTasks,
        saga: WebOrderSaga = Depends(saga_factory(WebOrderSaga)),  # noqa: B008
    ) -> dict[str, str]:
        saga_id = await run_saga_background(
            background_tasks, saga, {"order_id": order_id, "amount": 1}
        )
        # Recorded before the response is sent, not yet run.
        record = await config.storage.load(saga_id)
        assert record is not None
        seen["state_at_response"] = record.status
        seen["background"] = len(background_tasks.tasks)
        return {"saga_id": saga_id}

    with TestClient(app) as client:
        response = client.post("/orders/b1", headers={"X-Correlation-ID": "bg-1"})
        assert response.status_code == 202
        saga_id = response.json()["saga_id"]
        assert seen == {"state_at_response": SagaStatus.PENDING, "background": 1}
        record = client.portal.call(config.storage.load, saga_id)  # type: ignore[union-attr]
        assert record is not None
        # The background task ran the saga before the test client returned.
        assert record.status is SagaStatus.COMPLETED


def test_run_saga_background_through_the_test_app() -> None:
    with TestClient(create_app(SagaConfig())) as client:
        response = client.post(
            "/orders", json={"order_id": "o1", "amount": 3}, headers={"X-Correlation-ID": "o-1"}
        )
        assert response.status_code == 202
        saga_id = response.json()["saga_id"]
        assert terminal_state(client, saga_id) == "COMPLETED"
        status = client.get(f"/webhooks/status/{saga_id}").json()
        assert status["correlation_id"] == "o-1"
        assert status["idempotency_key"] == "orders:o1"
        again = client.post("/orders", json={"order_id": "o1", "amount": 3})
        assert again.json()["saga_id"] == saga_id


async def test_run_saga_background_with_explicit_ids() -> None:
    config = SagaConfig()
    saga = WebOrderSaga(config=config)
    tasks = BackgroundTasks()
    saga_id = await run_saga_background(
        tasks, saga, {"order_id": "x1", "amount": 1}, idempotency_key="k-1", correlation_id="c-1"
    )
    record = await config.storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.PENDING
    assert record.correlation_id == "c-1"
    assert await run_saga_background(tasks, saga, {"order_id": "x1"}, idempotency_key="k-1") == (
        saga_id
    )
    assert len(tasks.tasks) == 1  # the duplicate scheduled nothing
    await tasks()
    record = await config.storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
