"""install_wheels: sagaz-fastapi from its wheel, one webhook request through TestClient."""

from __future__ import annotations

from typing import Any

from _wheel_check import check_installed, wait_for
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sagaz.core import Saga, SagaConfig, action, compensate, trigger
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    create_webhook_router,
)

check_installed({"sagaz-core": "sagaz.core", "sagaz-fastapi": "sagaz.integrations.fastapi"})


class OrderSaga(Saga):
    saga_name = "smoke_fastapi_order"

    @trigger(source="order_created", idempotency_key="order_id")
    def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": event["order_id"]}

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        return None


app = FastAPI(lifespan=create_lifespan(SagaConfig(storage_url="memory://")))
app.add_middleware(SagaContextMiddleware)
app.include_router(create_webhook_router())

with TestClient(app) as client:
    response = client.post(
        "/webhooks/order_created", json={"order_id": "A1"}, headers={"X-Correlation-ID": "smoke-1"}
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-correlation-id"] == "smoke-1", response.headers
    saga_id = response.json()["saga_ids"][0]

    def completed() -> bool:
        status = client.get(f"/webhooks/status/{saga_id}")
        assert status.status_code == 200, status.text
        return status.json()["state"] == "COMPLETED"

    wait_for(completed, f"saga {saga_id} to complete")
    assert client.post("/webhooks/nope", json={}).status_code == 404

print("sagaz-fastapi from its wheel: webhook 202, saga COMPLETED")
