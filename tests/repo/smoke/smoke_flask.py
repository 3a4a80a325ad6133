"""install_wheels: sagaz-flask from its wheel, one webhook request through the test client."""

from __future__ import annotations

from typing import Any

from _wheel_check import check_installed, wait_for
from flask import Flask

from sagaz.core import Saga, action, compensate, trigger
from sagaz.integrations.flask import SagaFlask

check_installed({"sagaz-core": "sagaz.core", "sagaz-flask": "sagaz.integrations.flask"})


class OrderSaga(Saga):
    saga_name = "smoke_flask_order"

    @trigger(source="order_created", idempotency_key="order_id")
    def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": event["order_id"]}

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        return None


app = Flask(__name__)
app.config["SAGAZ_STORAGE_URL"] = "memory://"
sagaz = SagaFlask(app)
sagaz.register_webhook_blueprint("/webhooks")
client = app.test_client()
try:
    response = client.post(
        "/webhooks/order_created", json={"order_id": "A1"}, headers={"X-Correlation-ID": "smoke-1"}
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.headers["X-Correlation-ID"] == "smoke-1", response.headers
    saga_id = response.get_json()["saga_ids"][0]

    def completed() -> bool:
        status = client.get(f"/webhooks/status/{saga_id}")
        assert status.status_code == 200, status.get_data(as_text=True)
        return status.get_json()["state"] == "COMPLETED"

    wait_for(completed, f"saga {saga_id} to complete")
    assert client.post("/webhooks/nope", json={}).status_code == 404
finally:
    sagaz.close()

print("sagaz-flask from its wheel: webhook 202, saga COMPLETED")
