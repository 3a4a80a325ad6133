"""The Sagaz Flask example: an order saga started by a webhook or by ``POST /orders``.

Run it with ``python main.py`` (http://127.0.0.1:5000). Sagas are stored in the SQLite
file ``orders.db`` next to this file, or where ``SAGAZ_STORAGE_URL`` says
(``postgresql://user@host/db``). Orders above ``PAYMENT_LIMIT`` (500) are declined by the
payment step, so the saga compensates: the stock reservation is released.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask.typing import ResponseReturnValue

from sagaz.core import RetryPolicy, Saga, action, compensate, trigger
from sagaz.integrations.flask import SagaFlask

HERE = Path(__file__).resolve().parent
#: The payment provider declines orders above this amount (env PAYMENT_LIMIT).
PAYMENT_LIMIT = float(os.environ.get("PAYMENT_LIMIT", "500"))


class PaymentDeclinedError(Exception):
    """The payment provider refused the charge."""


class OrderSaga(Saga):
    """Reserve inventory, charge the payment, ship the order."""

    saga_name = "order"

    @trigger(source="order_created", idempotency_key="order_id")
    def handle_order_created(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """An ``order_created`` event becomes the saga's initial context."""
        return {"order_id": event["order_id"], "amount": event["amount"]}

    @action("reserve_inventory")
    async def reserve_inventory(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Reserve the ordered items."""
        await asyncio.sleep(0.01)
        return {"reservation_id": f"RES-{ctx['order_id']}"}

    @compensate("reserve_inventory")
    async def release_inventory(self, ctx: dict[str, Any]) -> None:
        """Put the items back on the shelf."""
        await asyncio.sleep(0.01)

    @action("charge_payment", retry=RetryPolicy(max_attempts=1))
    async def charge_payment(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Charge the customer; declined above PAYMENT_LIMIT."""
        await asyncio.sleep(0.01)
        if float(ctx["amount"]) > PAYMENT_LIMIT:
            raise PaymentDeclinedError(
                f"amount {ctx['amount']} is above the limit {PAYMENT_LIMIT:g}"
            )
        return {"payment_id": f"PAY-{ctx['order_id']}"}

    @compensate("charge_payment")
    async def refund_payment(self, ctx: dict[str, Any]) -> None:
        """Refund the charge."""
        await asyncio.sleep(0.01)

    @action("ship_order")
    async def ship_order(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Hand the parcel to the carrier."""
        await asyncio.sleep(0.01)
        return {"tracking_id": f"TRK-{ctx['order_id']}"}


def create_app() -> Flask:
    """The example application (also served by ``flask --app main run`` or gunicorn)."""
    app = Flask(__name__)
    app.config["SAGAZ_STORAGE_URL"] = os.environ.get(
        "SAGAZ_STORAGE_URL", f"sqlite:///{HERE / 'orders.db'}"
    )
    app.config["SAGAZ_EXPOSE_CONTEXT"] = True  # demo: show the context in status answers
    sagaz = SagaFlask(app)

    # POST /webhooks/<source>, GET /webhooks/<source>/status/<correlation_id>,
    # GET /webhooks/status/<saga_id> and /webhooks/status/<saga_id>/diagram
    sagaz.register_webhook_blueprint("/webhooks")

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return sagaz.health_response()

    @app.post("/orders")
    def create_order() -> ResponseReturnValue:
        """An ordinary endpoint: run the saga to its end inside the request."""
        order = request.get_json(silent=True)
        if not isinstance(order, dict) or "order_id" not in order or "amount" not in order:
            return {
                "error": "invalid_order",
                "detail": 'send {"order_id": ..., "amount": ...}',
            }, 400
        result = sagaz.run_sync(
            OrderSaga, {"order_id": order["order_id"], "amount": order["amount"]}
        )
        return {
            "saga_id": result.saga_id,
            "status": result.status.value,
            "completed_steps": result.completed_steps,
            "compensated_steps": result.compensated_steps,
            "error": result.error,
        }

    @app.get("/orders/<order_id>/diagram")
    def order_diagram(order_id: str) -> ResponseReturnValue:
        """The saga's Mermaid diagram; with ?saga_id=... coloured by that execution."""
        return sagaz.diagram_response(OrderSaga, request.args.get("saga_id"), order_id=order_id)

    return app


app = create_app()

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
