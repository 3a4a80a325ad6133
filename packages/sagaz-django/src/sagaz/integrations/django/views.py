"""The webhook, status, diagram and health views (the same JSON as every Sagaz plugin).

Each route has a sync and an async view; :mod:`sagaz.integrations.django.urls` serves the
async one when the request is handled on an event loop (ASGI) and the sync one otherwise
(WSGI, the test ``Client``). The async views call
:class:`~sagaz.core.web.WebhookService` directly on the server's loop; the sync views go
through the per-process portal loop (:func:`sagaz.core.portal.run_sync`), never a new
event loop per request.

Bodies larger than ``SAGAZ["WEBHOOKS"]["MAX_BODY_BYTES"]`` are refused with 413 from their declared
``Content-Length`` before anything is read; a body without one is read up to one byte
past the limit, never whole. (Under ASGI Django itself receives the body before the view
runs, spooling a large one to a temporary file.)

``SAGAZ["WEBHOOKS"]["AUTHORIZE"]``, when set, is called with the request before the webhook, status
and diagram views do anything (not before ``health``): False refuses with a 403 JSON
body. An ``async def`` hook is awaited in the async views; a plain one runs in a thread
there (it may use the ORM).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse

from sagaz.core.context import CORRELATION_ID_HEADER
from sagaz.core.portal import run_sync
from sagaz.core.web import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookService,
    WebResponse,
    check_authorization,
    check_authorization_async,
    error_response,
)
from sagaz.integrations.django.middleware import request_correlation_id
from sagaz.integrations.django.runtime import get_service

__all__ = [
    "diagram",
    "diagram_async",
    "health",
    "health_async",
    "not_found",
    "not_found_async",
    "saga_status",
    "saga_status_async",
    "source_status",
    "source_status_async",
    "webhook",
    "webhook_async",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_V = TypeVar("_V", bound=Callable[..., Any])
_SIGNATURE_META = "HTTP_" + SIGNATURE_HEADER.upper().replace("-", "_")
_TIMESTAMP_META = "HTTP_" + TIMESTAMP_HEADER.upper().replace("-", "_")
_CHUNK = 65_536


def _csrf_exempt(view: _V) -> _V:
    """Mark a view CSRF-exempt without wrapping it (Django 4.2's ``csrf_exempt`` wraps an
    async view in a sync function, which hides that it is async)."""
    view.csrf_exempt = True  # type: ignore[attr-defined]
    return view


def _respond(result: WebResponse, correlation_id: str) -> HttpResponse:
    body = result.body
    if "error" in body and body.get("correlation_id") is None:
        body = {**body, "correlation_id": correlation_id}
    response = JsonResponse(body, status=result.status)
    for name, value in result.headers.items():
        response[name] = value
    response[CORRELATION_ID_HEADER] = correlation_id
    return response


def _not_allowed(request: HttpRequest, allowed: str) -> HttpResponse:
    correlation_id = request_correlation_id(request)
    response = _respond(
        error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; use {allowed}",
            correlation_id,
        ),
        correlation_id,
    )
    response["Allow"] = allowed
    return response


def _portal(func: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    return run_sync(functools.partial(func, *args, **kwargs))


def _declared_length(request: HttpRequest) -> int | None:
    raw = request.META.get("CONTENT_LENGTH")
    if not raw:
        return None
    try:
        return max(int(raw), 0)
    except ValueError:
        return None


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, read in chunks up to ``limit + 1`` bytes (enough to tell it is too big)."""
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = request.read(min(_CHUNK, remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _webhook_args(request: HttpRequest) -> dict[str, Any]:
    return {
        "content_type": request.META.get("CONTENT_TYPE"),
        "signature": request.META.get(_SIGNATURE_META),
        "timestamp": request.META.get(_TIMESTAMP_META),
    }


def _guard(request: HttpRequest, allowed: str) -> tuple[WebhookService, HttpResponse | None]:
    """The service, and the response to send instead of the view's (405 or 403), if any."""
    if request.method not in ({"POST"} if allowed == "POST" else {"GET", "HEAD"}):
        return get_service(), _not_allowed(request, allowed)
    service = get_service()
    correlation_id = request_correlation_id(request)
    refused = check_authorization(service.settings.authorize, request, correlation_id)
    return service, None if refused is None else _respond(refused, correlation_id)


async def _guard_async(
    request: HttpRequest, allowed: str
) -> tuple[WebhookService, HttpResponse | None]:
    """:func:`_guard` for the async views: an async hook is awaited, a plain one runs in a
    thread (it may touch the database)."""
    if request.method not in ({"POST"} if allowed == "POST" else {"GET", "HEAD"}):
        return get_service(), _not_allowed(request, allowed)
    service = get_service()
    hook = service.settings.authorize
    correlation_id = request_correlation_id(request)
    if hook is None:
        refused = None
    elif inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an async __call__ on an object
    ):
        refused = await check_authorization_async(hook, request, correlation_id)
    else:
        refused = await sync_to_async(check_authorization)(hook, request, correlation_id)
    return service, None if refused is None else _respond(refused, correlation_id)


# ------------------------------------------------------------------- sync views (WSGI)


@_csrf_exempt
def webhook(request: HttpRequest, source: str) -> HttpResponse:
    """``POST <source>``: start the sagas ``source`` triggers (202)."""
    service, blocked = _guard(request, "POST")
    if blocked is not None:
        return blocked
    correlation_id = request_correlation_id(request)
    declared = _declared_length(request)
    refused = service.check_content_length(declared, correlation_id)
    if refused is not None:
        return _respond(refused, correlation_id)
    body = _read_body(request, service.settings.max_body_bytes)
    result = _portal(
        service.handle_webhook,
        source,
        body,
        correlation_id=correlation_id,
        **_webhook_args(request),
    )
    return _respond(result, correlation_id)


@_csrf_exempt
def source_status(request: HttpRequest, source: str, correlation_id: str) -> HttpResponse:
    """``GET <source>/status/<correlation_id>``: the sagas an event started."""
    service, refused = _guard(request, "GET")
    if refused is not None:
        return refused
    result = _portal(service.source_status, source, correlation_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
def saga_status(request: HttpRequest, saga_id: str) -> HttpResponse:
    """``GET status/<saga_id>``: one saga's state, steps, failed step and error."""
    service, refused = _guard(request, "GET")
    if refused is not None:
        return refused
    result = _portal(service.saga_status, saga_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
def diagram(request: HttpRequest, saga_id: str) -> HttpResponse:
    """``GET status/<saga_id>/diagram``: the saga's Mermaid diagram with step states."""
    service, refused = _guard(request, "GET")
    if refused is not None:
        return refused
    result = _portal(service.saga_diagram, saga_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
def health(request: HttpRequest) -> HttpResponse:
    """``GET health``: 200 when the database answers, else 503."""
    if request.method not in {"GET", "HEAD"}:
        return _not_allowed(request, "GET")
    result = _portal(get_service().health)
    return _respond(result, request_correlation_id(request))


# ------------------------------------------------------------------- async views (ASGI)


@_csrf_exempt
async def webhook_async(request: HttpRequest, source: str) -> HttpResponse:
    """Async ``POST <source>``: the service runs on the server's event loop."""
    service, blocked = await _guard_async(request, "POST")
    if blocked is not None:
        return blocked
    correlation_id = request_correlation_id(request)
    declared = _declared_length(request)
    refused = service.check_content_length(declared, correlation_id)
    if refused is not None:
        return _respond(refused, correlation_id)
    limit = service.settings.max_body_bytes
    if declared is not None:
        body = _read_body(request, limit)  # Django's ASGI handler has received it already
    else:
        body = await sync_to_async(_read_body, thread_sensitive=False)(request, limit)
    result = await service.handle_webhook(
        source, body, correlation_id=correlation_id, **_webhook_args(request)
    )
    return _respond(result, correlation_id)


@_csrf_exempt
async def source_status_async(
    request: HttpRequest, source: str, correlation_id: str
) -> HttpResponse:
    """Async ``GET <source>/status/<correlation_id>``."""
    service, refused = await _guard_async(request, "GET")
    if refused is not None:
        return refused
    result = await service.source_status(source, correlation_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
async def saga_status_async(request: HttpRequest, saga_id: str) -> HttpResponse:
    """Async ``GET status/<saga_id>``."""
    service, refused = await _guard_async(request, "GET")
    if refused is not None:
        return refused
    result = await service.saga_status(saga_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
async def diagram_async(request: HttpRequest, saga_id: str) -> HttpResponse:
    """Async ``GET status/<saga_id>/diagram``."""
    service, refused = await _guard_async(request, "GET")
    if refused is not None:
        return refused
    result = await service.saga_diagram(saga_id)
    return _respond(result, request_correlation_id(request))


@_csrf_exempt
async def health_async(request: HttpRequest) -> HttpResponse:
    """Async ``GET health``."""
    if request.method not in {"GET", "HEAD"}:
        return _not_allowed(request, "GET")
    result = await get_service().health()
    return _respond(result, request_correlation_id(request))


# ------------------------------------------------------------------- anything else


@_csrf_exempt
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under the plugin's prefix: a JSON 404 (not Django's HTML page)."""
    correlation_id = request_correlation_id(request)
    return _respond(
        error_response(
            404,
            "not_found",
            "no Sagaz route has this path; the routes are health, status/<saga_id>, "
            "status/<saga_id>/diagram, <source> and <source>/status/<correlation_id>",
            correlation_id,
        ),
        correlation_id,
    )


@_csrf_exempt
async def not_found_async(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Async :func:`not_found`."""
    return not_found(request, rest)
