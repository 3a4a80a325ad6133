"""The Sagaz FastAPI example: an order saga started by a webhook or by ``POST /orders``.

Run it with ``python main.py`` (http://127.0.0.1:8000, or ``uvicorn main:app``). Sagas
are stored in the SQLite file ``orders.db`` next to this file, or where
``SAGAZ_STORAGE_URL`` says (``postgresql://user@host/db``). Orders above
``PAYMENT_LIMIT`` (500) are declined by the payment step, so the saga compensates.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from sagaz.core import RetryPolicy, Saga, SagaConfig, action, compensate, trigger
from sagaz.core.web import WebhookService, WebhookSettings
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    create_webhook_router,
    get_config,
    run_saga_background,
    saga_diagram_response,
    saga_factory,
)

HERE = Path(__file__).resolve().parent
#: The payment provider declines orders above this amount (env PAYMENT_LIMIT).
PAYMENT_LIMIT = float(os.environ.get("PAYMENT_LIMIT", "500"))
STORAGE_URL = os.environ.get("SAGAZ_STORAGE_URL", f"sqlite:///{HERE / 'orders.db'}")


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


class Order(BaseModel):
    """The body of ``POST /orders``."""

    order_id: str
    amount: float


app = FastAPI(
    title="Sagaz FastAPI example",
    lifespan=create_lifespan(SagaConfig(storage_url=STORAGE_URL)),
)
app.add_middleware(SagaContextMiddleware)  # X-Correlation-ID on every request and saga
# POST /webhooks/{source}, GET /webhooks/{source}/status/{correlation_id},
# GET /webhooks/status/{saga_id} and /webhooks/status/{saga_id}/diagram
app.include_router(
    create_webhook_router("/webhooks", settings=WebhookSettings(expose_context=True))
)

Config = Annotated[SagaConfig, Depends(get_config)]


@app.get("/health")
async def health(config: Config) -> JSONResponse:
    """200 when the saga storage answers, 503 when it does not."""
    answer = await WebhookService(config).health()
    return JSONResponse(answer.body, status_code=answer.status)


@app.post("/orders", status_code=202)
async def create_order(
    order: Order,
    tasks: BackgroundTasks,
    saga: Annotated[OrderSaga, Depends(saga_factory(OrderSaga))],
) -> dict[str, str]:
    """An ordinary endpoint: record the saga, answer with its id, run it after the response."""
    saga_id = await run_saga_background(tasks, saga, order.model_dump())
    return {"saga_id": saga_id, "status_url": f"/webhooks/status/{saga_id}"}


@app.get("/orders/{order_id}/diagram")
async def order_diagram(
    order_id: str, request: Request, saga_id: str | None = None
) -> JSONResponse:
    """The saga's Mermaid diagram; with ?saga_id=... coloured by that execution."""
    return await saga_diagram_response(request, OrderSaga, saga_id, order_id=order_id)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000"))
    )
