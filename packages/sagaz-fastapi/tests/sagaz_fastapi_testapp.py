"""The application of the plugin's tests: served by uvicorn in the server tests, built
in-process (with its sagas) by the TestClient tests.

Under uvicorn: ``uvicorn sagaz_fastapi_testapp:app_from_env --factory --app-dir tests``,
configured by ``SAGAZ_STORAGE_URL`` / ``SAGAZ_LEASE_SECONDS`` (``SagaConfig.from_env``) and
``SAGAZ_TEST_SHUTDOWN_GRACE``, ``SAGAZ_TEST_MAX_BODY``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI
from pydantic import BaseModel

from sagaz.core import (
    Saga,
    SagaConfig,
    SagaContextManager,
    action,
    compensate,
    current_step,
    trigger,
)
from sagaz.core.web import WebhookSettings
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    create_webhook_router,
    get_config,
    get_correlation_id,
    run_saga_background,
    saga_factory,
)

logger = logging.getLogger("sagaz_fastapi_testapp")

#: Orders above this amount are declined by the payment step (the saga compensates).
LIMIT = 100
SOURCE = "fastapi_test_order"
SIGNED_SOURCE = "fastapi_test_signed"
SECRET = "test-secret"
#: Steps of a saga whose context has "gate": <path> wait while that file exists.
GATE_TIMEOUT = 60.0


class PaymentDeclinedError(Exception):
    """The test payment provider declines amounts above LIMIT."""


async def _wait_gate(ctx: dict[str, Any]) -> None:
    gate = ctx.get("gate")
    if not gate:
        return
    deadline = time.monotonic() + GATE_TIMEOUT
    while Path(gate).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


class WebOrderSaga(Saga):
    """Reserve, charge (declined above LIMIT), ship."""

    saga_name = "fastapi-test-order"

    @trigger(source=SOURCE, idempotency_key="order_id")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return {
            "order_id": str(event["order_id"]),
            "amount": event.get("amount", 0),
            "gate": event.get("gate"),
        }

    @trigger(source=SIGNED_SOURCE, idempotency_key="order_id")
    def on_signed_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.on_order(event)

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        await _wait_gate(ctx)
        logger.info("reserving order %s", ctx["order_id"])
        return {
            "reserved": True,
            "seen_correlation_id": SagaContextManager.get("correlation_id"),
            "step_correlation_id": current_step().correlation_id,
        }

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    @action("charge")
    async def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["amount"] > LIMIT:
            raise PaymentDeclinedError(f"amount {ctx['amount']} is above {LIMIT}")
        return {"payment_id": f"PAY-{ctx['order_id']}"}

    @compensate("charge")
    async def refund(self, ctx: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    @action("ship")
    async def ship(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"tracking_id": f"TRK-{ctx['order_id']}"}


class Order(BaseModel):
    """The body of POST /orders."""

    order_id: str
    amount: int = 0
    gate: str | None = None


def create_app(
    config: SagaConfig | None = None,
    *,
    settings: WebhookSettings | None = None,
    shutdown_grace: float = 5.0,
    recover: bool = True,
    middleware: bool = True,
) -> FastAPI:
    """The test application: webhook routes, POST /orders, and a few probes."""
    app = FastAPI(lifespan=create_lifespan(config, recover=recover, shutdown_grace=shutdown_grace))
    if middleware:
        app.add_middleware(SagaContextMiddleware)
    app.include_router(
        create_webhook_router(settings=settings or WebhookSettings(secrets={SIGNED_SOURCE: SECRET}))
    )

    @app.post("/orders", status_code=202)
    async def create_order(
        order: Order,
        background_tasks: BackgroundTasks,
        saga: WebOrderSaga = Depends(saga_factory(WebOrderSaga)),  # noqa: B008
    ) -> dict[str, str]:
        saga_id = await run_saga_background(
            background_tasks,
            saga,
            order.model_dump(),
            idempotency_key=f"orders:{order.order_id}",
        )
        return {"saga_id": saga_id}

    @app.get("/probe")
    async def probe(
        config: SagaConfig = Depends(get_config),  # noqa: B008
        correlation_id: str = Depends(get_correlation_id),
    ) -> dict[str, Any]:
        return {
            "storage": type(config.storage).__name__,
            "config_id": id(config),
            "correlation_id": correlation_id,
            "context_correlation_id": SagaContextManager.get("correlation_id"),
        }

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def app_from_env() -> FastAPI:
    """The application uvicorn serves in the server tests (``--factory``)."""
    max_body = int(os.environ.get("SAGAZ_TEST_MAX_BODY", "65536"))
    settings = WebhookSettings(
        max_body_bytes=max_body, secrets={SIGNED_SOURCE: SECRET}, expose_context=True
    )
    return create_app(
        SagaConfig.from_env(),
        settings=settings,
        shutdown_grace=float(os.environ.get("SAGAZ_TEST_SHUTDOWN_GRACE", "5")),
    )
