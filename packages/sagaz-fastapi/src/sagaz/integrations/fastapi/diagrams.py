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
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from sagaz.core import CORRELATION_ID_HEADER, Saga, SagaConfig, StorageError, to_mermaid
from sagaz.core.context import is_valid_correlation_id
from sagaz.core.records import SagaRecord
from sagaz.core.web import WebResponse, error_response
from sagaz.integrations.fastapi.lifespan import get_config
from sagaz.integrations.fastapi.middleware import get_correlation_id

__all__ = ["saga_diagram_body", "saga_diagram_response"]

logger = logging.getLogger("sagaz.fastapi")

#: The flowchart directions Mermaid knows (``to_mermaid(direction=...)``).
_DIRECTIONS = ("TD", "TB", "BT", "LR", "RL")


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


async def saga_diagram_body(
    saga: Saga,
    saga_id: str | None = None,
    *,
    direction: str = "TD",
    extra: Mapping[str, Any] | None = None,
) -> WebResponse:
    """The framework-neutral answer of :func:`saga_diagram_response` for a bound ``saga``.

    Reads the execution ``saga_id`` (if given) from ``saga.config.storage``; never raises
    for a bad id, an execution of another saga, a bad ``direction`` or a storage that
    does not answer: those are 404, 404, 400 and 503 error bodies.
    """
    if direction not in _DIRECTIONS:
        return error_response(
            400,
            "invalid_direction",
            f"direction must be one of {', '.join(_DIRECTIONS)}; got {direction!r}",
        )
    record: SagaRecord | None = None
    if saga_id is not None:
        if is_valid_correlation_id(saga_id):  # the same safe-name rule as saga ids
            storage = saga.config.storage
            try:
                await storage.ensure_open()
                record = await storage.load(saga_id)
            except (StorageError, OSError) as exc:
                # The storage's message may name files or hosts: it goes to the log only.
                logger.warning("sagaz: storage unavailable while drawing a saga: %s", exc)
                return error_response(
                    503, "storage_unavailable", "the saga storage is unavailable; retry later"
                )
        if record is None:
            shown = saga_id if is_valid_correlation_id(saga_id) else "(invalid id)"
            return error_response(404, "not_found", f"no saga with id {shown!r}")
        if record.saga_name != saga.name:
            return error_response(
                404,
                "not_found",
                f"saga {saga_id!r} is a {record.saga_name!r}, not a {saga.name!r}",
            )
    body: dict[str, Any] = {**(extra or {}), "saga_name": saga.name, "direction": direction}
    if record is not None:
        body["saga_id"] = record.saga_id
        body["state"] = record.status.value
    body["mermaid"] = to_mermaid(saga, record, direction=direction)
    return WebResponse(200, body)


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
