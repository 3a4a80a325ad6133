"""The demo saga behind ``sagaz demo``: an order that completes, and one that compensates."""

from __future__ import annotations

import asyncio
from typing import Any

from sagaz.core.retry import RetryPolicy
from sagaz.core.saga import Saga, action, compensate

__all__ = ["DemoOrderSaga", "PaymentDeclinedError"]


class PaymentDeclinedError(Exception):
    """The demo payment provider refuses amounts above the order's limit."""


class DemoOrderSaga(Saga):
    """Reserve stock, charge the card, ship; payment fails above ``limit``."""

    saga_name = "demo-order"

    @action("reserve_inventory")
    async def reserve_inventory(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Reserve the ordered items."""
        await asyncio.sleep(0.01)
        return {"reservation_id": f"RES-{ctx['order_id']}"}

    @compensate("reserve_inventory")
    async def release_inventory(self, ctx: dict[str, Any]) -> None:
        """Put the items back on the shelf."""
        await asyncio.sleep(0.01)

    @action("charge_payment", retry=RetryPolicy(max_attempts=2, backoff_base=0.01))
    async def charge_payment(self, ctx: dict[str, Any]) -> dict[str, Any]:
        """Charge the card; declined above the limit."""
        await asyncio.sleep(0.01)
        if ctx["amount"] > ctx.get("limit", 500):
            raise PaymentDeclinedError(f"amount {ctx['amount']} is above the card limit")
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
