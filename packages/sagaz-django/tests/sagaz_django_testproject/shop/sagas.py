"""Sagas of the test project, found by the plugin's autodiscovery (``sagas.py``).

``amount`` drives the outcome: above 500 shipping fails and the saga is COMPENSATED (the
charge is refunded); with ``"break_refund": true`` as well, the refund fails and the saga is
FAILED. Above 1000 the charge itself is declined.
"""

from __future__ import annotations

from typing import Any

from sagaz.core import RetryPolicy, Saga, action, compensate, trigger

NO_RETRY = RetryPolicy(max_attempts=1)


class OrderSaga(Saga):
    """Reserve stock, charge, ship; compensations undo them."""

    saga_name = "order"

    @trigger(source="order_created", idempotency_key="order_id")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "order_id": event["order_id"],
            "amount": event.get("amount", 10),
            "break_refund": bool(event.get("break_refund", False)),
        }

    @trigger(source="signed_order", idempotency_key="order_id")
    def on_signed(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": event["order_id"], "amount": event.get("amount", 10)}

    @action("reserve", retry=NO_RETRY)
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve", retry=NO_RETRY)
    async def release(self, ctx: dict[str, Any]) -> None:
        return None

    @action("charge", retry=NO_RETRY)
    def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["amount"] > 1000:
            raise ValueError(f"card declined for {ctx['amount']}")
        return {"payment": f"P-{ctx['order_id']}"}

    @compensate("charge", retry=NO_RETRY)
    def refund(self, ctx: dict[str, Any]) -> None:
        if ctx.get("break_refund"):
            raise RuntimeError("refund service down")

    @action("ship", retry=NO_RETRY)
    async def ship(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["amount"] > 500:
            raise ValueError("cannot ship")
        return {"shipment": f"S-{ctx['order_id']}"}


class PingSaga(Saga):
    """One quick step: the load tests' saga."""

    saga_name = "ping"

    @trigger(source="ping", idempotency_key="n")
    def on_ping(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"n": event["n"]}

    @action("pong", retry=NO_RETRY)
    async def pong(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"pong": ctx["n"]}
