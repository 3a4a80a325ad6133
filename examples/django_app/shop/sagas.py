"""The order saga. The Sagaz app imports every installed app's ``sagas.py`` at start-up,
so its ``@trigger`` answers ``POST /webhooks/order_created``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sagaz.core import RetryPolicy, Saga, action, compensate, trigger

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
