"""Mermaid diagrams of a saga for your own routes (Flask's ``diagram_response``, for FastAPI).

::

    @app.get("/orders/{order_id}/diagram")
    async def order_diagram(order_id: str, request: Request, saga_id: str | None = None):
        return await saga_diagram_response(request, OrderSaga, saga_id, order_id=order_id)

The body and the errors are those of the webhook router's
``GET {prefix}/status/{saga_id}/diagram`` route: ``{"saga_name", "direction", "mermaid"}``
(plus ``saga_id`` and ``state`` for a recorded execution, plus your ``extra`` fields), and
``{"error", "detail", "correlation_id"}`` with 404 for an unknown execution, 400 for a bad
direction, 503 when the storage does not answer. Every answer carries ``X-Correlation-ID``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from sagaz.core import CORRELATION_ID_HEADER, Saga, SagaConfig
from sagaz.core.web import saga_diagram_body
from sagaz.integrations.fastapi.lifespan import get_config
from sagaz.integrations.fastapi.middleware import get_correlation_id

__all__ = ["saga_diagram_body", "saga_diagram_response"]

logger = logging.getLogger("sagaz.fastapi")


def _bind(saga: Saga | type[Saga], config: SagaConfig) -> Saga:
    if isinstance(saga, type):
        if not issubclass(saga, Saga):
            raise TypeError(
                f"saga_diagram_response() needs a Saga subclass or instance, got the class "
                f"{saga.__qualname__}"
            )
        return saga(config=config)
    if not isinstance(saga, Saga):
        raise TypeError(
            f"saga_diagram_response() needs a Saga subclass or instance, got {type(saga).__name__}"
        )
    return saga if saga.own_config is not None else saga.with_config(config)


async def saga_diagram_response(
    request: HTTPConnection,
    saga: Saga | type[Saga],
    saga_id: str | None = None,
    *,
    direction: str = "TD",
    config: SagaConfig | None = None,
    **extra: Any,
) -> JSONResponse:
    """A JSON response with the Mermaid diagram of ``saga`` for one of your routes.

    ``saga`` is a saga class or instance; one without a config of its own is bound to
    ``config``, by default the application's (:func:`get_config`, so the app's lifespan
    must be :func:`create_lifespan`'s). The body is ``{"saga_name", "direction",
    "mermaid"}`` plus the ``extra`` keyword fields; with ``saga_id`` (a recorded execution
    of this saga) its steps are coloured by their state and ``saga_id`` and ``state`` are
    added. Errors are the webhook router's JSON bodies: 404 for an unknown execution or
    one of another saga, 400 for a bad ``direction``, 503 when the storage does not
    answer. The request's correlation id is in the error bodies and the
    ``X-Correlation-ID`` header. For example::

        @app.get("/orders/{order_id}/diagram")
        async def order_diagram(
            order_id: str, request: Request, saga_id: str | None = None
        ) -> JSONResponse:
            return await saga_diagram_response(request, OrderSaga, saga_id, order_id=order_id)
    """
    bound = _bind(saga, config if config is not None else get_config(request))
    correlation_id = get_correlation_id(request)
    result = await saga_diagram_body(bound, saga_id, direction=direction, extra=extra)
    body = result.body
    if "error" in body and body.get("correlation_id") is None:
        body = {**body, "correlation_id": correlation_id}
    headers = {**result.headers, CORRELATION_ID_HEADER: correlation_id}
    return JSONResponse(body, status_code=result.status, headers=headers)
