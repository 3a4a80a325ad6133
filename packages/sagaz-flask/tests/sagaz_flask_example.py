"""The Flask example app of the example README, as the tests run it.

In-process tests call :func:`create_app`; the gunicorn tests serve
``sagaz_flask_example:create_app()`` with ``SAGAZ_STORAGE_URL`` pointing at a SQLite
file, and ``SAGAZ_TEST_WORKER_PID=1`` to add the worker's pid to every response (an
``X-Worker-PID`` header) so a test can tell which worker answered.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from flask import Flask, request

from sagaz.core import RetryPolicy, Saga, action, compensate, trigger
from sagaz.integrations.flask import SagaFlask

#: Orders above this amount are declined by the payment step (and compensated).
CARD_LIMIT = 1000
#: The shared secret of the ``order_signed`` source (its webhooks must be signed).
SIGNING_SECRET = "example-signing-secret"


class PaymentDeclinedError(Exception):
    """The payment provider refused the charge."""


class OrderSaga(Saga):
    """Reserve stock, charge the card, ship; the charge fails above CARD_LIMIT."""

    saga_name = "flask-example-order"

    @trigger(source="order_created", idempotency_key="order_id")
    def handle_order_created(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The initial context from an ``order_created`` event."""
        context = {"order_id": event["order_id"], "amount": event["amount"]}
        if "ship_delay" in event:  # tests: a slow shipping step
            context["ship_delay"] = float(event["ship_delay"])
        return context

    @trigger(source="order_signed", idempotency_key="order_id")
    def handle_order_signed(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The same order, from a sender that signs its webhooks (see create_app)."""
        return {"order_id": event["order_id"], "amount": event["amount"]}

    @action("reserve_inventory")
    async def reserve_inventory(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Reserve the items."""
        await asyncio.sleep(0.005)
        return {"reservation_id": f"RES-{ctx['order_id']}"}

    @compensate("reserve_inventory")
    async def release_inventory(self, ctx: dict[str, Any]) -> None:
        """Put the items back."""
        await asyncio.sleep(0.005)

    @action("charge_payment", retry=RetryPolicy(max_attempts=1))
    async def charge_payment(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Charge the card; declined above the limit."""
        await asyncio.sleep(0.005)
        if float(ctx["amount"]) > CARD_LIMIT:
            raise PaymentDeclinedError(f"amount {ctx['amount']} is above the card limit")
        return {"payment_id": f"PAY-{ctx['order_id']}"}

    @compensate("charge_payment")
    async def refund_payment(self, ctx: dict[str, Any]) -> None:
        """Refund the charge."""
        await asyncio.sleep(0.005)

    @action("ship_order")
    def ship_order(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Hand the parcel to the carrier (a plain function: runs in a worker thread)."""
        time.sleep(ctx.get("ship_delay", 0))
        return {"tracking_id": f"TRK-{ctx['order_id']}"}


def create_app(storage_url: str | None = None, **settings: Any) -> Flask:
    """The example app: webhooks under /webhooks, /health and an order diagram route."""
    app = Flask(__name__)
    app.config["SAGAZ_STORAGE_URL"] = storage_url or os.environ.get(
        "SAGAZ_STORAGE_URL", "memory://"
    )
    app.config["SAGAZ_EXPOSE_CONTEXT"] = True
    app.config["SAGAZ_WEBHOOK_SECRETS"] = {"order_signed": SIGNING_SECRET}
    if "SAGAZ_SHUTDOWN_TIMEOUT" in os.environ:
        app.config["SAGAZ_SHUTDOWN_TIMEOUT"] = os.environ["SAGAZ_SHUTDOWN_TIMEOUT"]
    sagaz = SagaFlask(app, **settings)
    sagaz.register_webhook_blueprint("/webhooks")

    @app.get("/health")
    def health() -> Any:
        return sagaz.health_response()

    @app.get("/orders/<order_id>/diagram")
    def order_diagram(order_id: str) -> Any:
        return sagaz.diagram_response(OrderSaga, request.args.get("saga_id"), order_id=order_id)

    @app.post("/orders")
    def create_order() -> Any:
        """Run an order saga inside the request (run_sync) and answer with its result."""
        payload = request.get_json(force=True)
        result = sagaz.run_sync(OrderSaga, payload)
        return {"saga_id": result.saga_id, "state": result.status.value}, 201

    if os.environ.get("SAGAZ_TEST_WORKER_PID") == "1":

        @app.after_request
        def worker_pid(response: Any) -> Any:
            response.headers["X-Worker-PID"] = str(os.getpid())
            return response

        @app.get("/_test/boom")
        def boom() -> Any:
            raise RuntimeError("a bug in a view")

    return app
