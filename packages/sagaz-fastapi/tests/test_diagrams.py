"""saga_diagram_response: Flask's diagram_response for FastAPI routes, with the router's
JSON errors, on a real SQLite storage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from sagaz_fastapi_testapp import WebOrderSaga, create_app

from sagaz.core import Saga, SagaConfig, storage_from_url, to_mermaid
from sagaz.integrations.fastapi import (
    create_lifespan,
    get_config,
    saga_diagram_response,
    saga_factory,
)


async def _noop(ctx: dict[str, Any]) -> None:
    return None


def _app(config: SagaConfig, *, diagram_config: SagaConfig | None = None) -> FastAPI:
    app = create_app(config)

    @app.post("/runs")
    async def run(
        body: dict[str, Any],
        saga: WebOrderSaga = Depends(saga_factory(WebOrderSaga)),  # noqa: B008
    ) -> dict[str, Any]:
        result = await saga.run(body)
        return {"saga_id": result.saga_id, "status": result.status.value}

    @app.get("/orders/{order_id}/diagram")
    async def order_diagram(
        order_id: str, request: Request, saga_id: str | None = None, direction: str = "TD"
    ) -> JSONResponse:
        return await saga_diagram_response(
            request,
            WebOrderSaga,
            saga_id,
            direction=direction,
            config=diagram_config,
            order_id=order_id,
        )

    return app


@pytest.fixture
def client(sqlite_url: str) -> Any:
    with TestClient(_app(SagaConfig(storage_url=sqlite_url))) as test_client:
        yield test_client


def test_the_definition_diagram_with_extra_fields(client: TestClient) -> None:
    response = client.get("/orders/A1/diagram", headers={"X-Correlation-ID": "diag-1"})
    assert response.status_code == 200
    assert response.headers["X-Correlation-ID"] == "diag-1"
    assert response.json() == {
        "order_id": "A1",
        "saga_name": "fastapi-test-order",
        "direction": "TD",
        "mermaid": to_mermaid(WebOrderSaga()),
    }
    sideways = client.get("/orders/A1/diagram?direction=LR").json()
    assert sideways["mermaid"].startswith("flowchart LR\n")


@pytest.mark.parametrize(("amount", "state"), [(5, "COMPLETED"), (500, "COMPENSATED")])
def test_a_recorded_execution_matches_the_routers_diagram(
    client: TestClient, amount: int, state: str
) -> None:
    ran = client.post("/runs", json={"order_id": "B2", "amount": amount}).json()
    assert ran["status"] == state
    saga_id = ran["saga_id"]
    response = client.get(f"/orders/B2/diagram?saga_id={saga_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["saga_id"] == saga_id
    assert body["state"] == state
    assert f"%% saga: fastapi-test-order ({state})" in body["mermaid"]
    routed = client.get(f"/webhooks/status/{saga_id}/diagram").json()
    assert routed["mermaid"] == body["mermaid"]
    assert routed["state"] == body["state"]


@pytest.mark.parametrize(
    ("saga_id", "detail"),
    [
        ("3f2b1c9e-0000-4000-8000-000000000000", "no saga with id '3f2b1c9e-0000-4000-8000-"),
        ("bad id!", "no saga with id '(invalid id)'"),
    ],
)
def test_an_unknown_execution_is_a_json_404(client: TestClient, saga_id: str, detail: str) -> None:
    response = client.get(
        "/orders/A1/diagram", params={"saga_id": saga_id}, headers={"X-Correlation-ID": "d-404"}
    )
    assert response.status_code == 404
    assert response.headers["X-Correlation-ID"] == "d-404"
    body = response.json()
    assert body["error"] == "not_found"
    assert body["detail"].startswith(detail)
    assert body["correlation_id"] == "d-404"
    # The router's diagram route answers the same for the same id.
    routed = client.get(f"/webhooks/status/{saga_id}/diagram").json()
    assert routed["error"] == body["error"]


def test_an_execution_of_another_saga_is_a_404(client: TestClient, sqlite_url: str) -> None:
    other = Saga(name="fastapi-test-other").add_step("only", _noop)

    @client.app.post("/other")  # type: ignore[attr-defined]
    async def run_other(request: Request) -> dict[str, str]:
        result = await other.with_config(get_config(request)).run({})
        return {"saga_id": result.saga_id}

    saga_id = client.post("/other").json()["saga_id"]
    body = client.get(f"/orders/A1/diagram?saga_id={saga_id}").json()
    assert body["error"] == "not_found"
    assert "'fastapi-test-other', not a 'fastapi-test-order'" in body["detail"]


def test_a_bad_direction_is_a_json_400(client: TestClient) -> None:
    response = client.get("/orders/A1/diagram?direction=UP")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_direction"
    assert "TD, TB, BT, LR, RL" in body["detail"]
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]


def test_an_unreachable_storage_is_a_json_503(tmp_path: Path, sqlite_url: str) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the database's folder should be")
    broken = SagaConfig(storage=storage_from_url(f"sqlite:///{blocker / 'sagas.db'}"))
    app = _app(SagaConfig(storage_url=sqlite_url), diagram_config=broken)
    with TestClient(app) as client:
        response = client.get("/orders/A1/diagram?saga_id=abc")
        plain = client.get("/orders/A1/diagram")
    assert response.status_code == 503
    assert response.json()["error"] == "storage_unavailable"
    assert "not-a-folder" not in response.text  # the cause goes to the log only
    assert plain.status_code == 200  # the definition needs no storage


def test_an_imperative_saga_is_bound_to_the_apps_config(sqlite_url: str) -> None:
    template = Saga(name="fastapi-test-diagram-imperative").add_step("only", _noop)
    app = FastAPI(lifespan=create_lifespan(SagaConfig(storage_url=sqlite_url)))

    @app.post("/run")
    async def run(saga: Saga = Depends(saga_factory(template))) -> dict[str, str]:  # noqa: B008
        return {"saga_id": (await saga.run({})).saga_id}

    @app.get("/diagram/{saga_id}")
    async def diagram(saga_id: str, request: Request) -> JSONResponse:
        return await saga_diagram_response(request, template, saga_id)

    with TestClient(app) as client:
        saga_id = client.post("/run").json()["saga_id"]
        body = client.get(f"/diagram/{saga_id}").json()
    assert body["state"] == "COMPLETED"
    assert body["saga_name"] == "fastapi-test-diagram-imperative"


@pytest.mark.parametrize("wrong", [dict, "OrderSaga"])
def test_something_that_is_not_a_saga_is_a_type_error(wrong: Any) -> None:
    request = Request({"type": "http", "headers": [], "app": FastAPI()})
    with pytest.raises(TypeError, match="needs a Saga subclass or instance"):
        asyncio.run(saga_diagram_response(request, wrong, config=SagaConfig()))
