"""The example's own views; the webhook and status URLs come from the Sagaz app."""

from __future__ import annotations

import json
from typing import Any

from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from sagaz.core import to_mermaid
from sagaz.integrations.django import atomic_saga_start, load_saga, saga_diagram
from sagaz.integrations.django.middleware import request_correlation_id

from .sagas import OrderSaga


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """200 when the database answers, 503 when it does not."""
    try:
        connection.ensure_connection()
    except Exception as exc:
        return JsonResponse({"status": "unavailable", "detail": str(exc)}, status=503)
    return JsonResponse({"status": "ok", "database": connection.vendor})


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    """An ordinary view: start the saga in this request's transaction (202 with its id).

    The saga row commits with whatever else the transaction writes (an Order row, in a
    real shop); it runs once the transaction has committed.
    """
    try:
        order = json.loads(request.body)
        order_id, amount = str(order["order_id"]), float(order["amount"])
    except (ValueError, TypeError, KeyError):
        return JsonResponse(
            {"error": "invalid_order", "detail": 'send {"order_id": "...", "amount": 12.5}'},
            status=400,
        )
    with transaction.atomic():
        saga_id = atomic_saga_start(
            OrderSaga,
            {"order_id": order_id, "amount": amount},
            idempotency_key=f"order-{order_id}",
        )
    return JsonResponse(
        {"saga_id": saga_id, "status_url": f"/webhooks/status/{saga_id}"}, status=202
    )


@require_GET
def order_diagram(request: HttpRequest, order_id: str) -> JsonResponse:
    """The order saga's Mermaid diagram; with ``?saga_id=...`` coloured by that execution.

    A sync view: ``load_saga`` and ``saga_diagram`` read the saga through the Sagaz app's
    background loop, never an event loop of their own.
    """
    body: dict[str, Any] = {"order_id": order_id, "saga_name": OrderSaga.saga_name}
    saga_id = request.GET.get("saga_id")
    if saga_id is None:
        return JsonResponse({**body, "mermaid": to_mermaid(OrderSaga())})
    record = load_saga(saga_id)
    if record is None or record.saga_name != OrderSaga.saga_name:
        return JsonResponse(
            {
                "error": "not_found",
                "detail": f"no order saga with id {saga_id!r}",
                "correlation_id": request_correlation_id(request),
            },
            status=404,
        )
    body.update(saga_id=record.saga_id, state=record.status.value, mermaid=saga_diagram(record))
    return JsonResponse(body)
