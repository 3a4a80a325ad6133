"""Correlation ids for every request, in sync (WSGI) and async (ASGI) stacks.

Add it near the top of ``MIDDLEWARE``::

    MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware", ...]

It reads ``X-Correlation-ID`` (kept when it is at most 128 characters of
``[A-Za-z0-9._:-]``, else replaced by a new UUID4), sets ``request.correlation_id``, opens
a :meth:`~sagaz.core.SagaContextManager.scope` for the request (so every saga started while
handling it records the id) and echoes the id on every response, errors included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from sagaz.core.context import (
    CORRELATION_ID_HEADER,
    SagaContextManager,
    correlation_id_from_header,
)

__all__ = ["SagaContextMiddleware", "request_correlation_id"]

_META_KEY = "HTTP_" + CORRELATION_ID_HEADER.upper().replace("-", "_")


def request_correlation_id(request: HttpRequest) -> str:
    """The request's correlation id: set by the middleware, else read (or made) now."""
    value = getattr(request, "correlation_id", None)
    if isinstance(value, str):
        return value
    value = correlation_id_from_header(request.META.get(_META_KEY))
    request.correlation_id = value  # type: ignore[attr-defined]
    return value


class SagaContextMiddleware:
    """Reads, validates or generates the correlation id and scopes the request with it."""

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        """Handle one request (a coroutine in an async stack)."""
        if self._async:
            return self.__acall__(request)
        correlation_id = request_correlation_id(request)
        with SagaContextManager.scope(correlation_id=correlation_id):
            response: HttpResponseBase = self.get_response(request)  # type: ignore[assignment]
        response[CORRELATION_ID_HEADER] = correlation_id
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        """Handle one request in an async stack."""
        correlation_id = request_correlation_id(request)
        with SagaContextManager.scope(correlation_id=correlation_id):
            response: HttpResponseBase = await self.get_response(request)  # type: ignore[misc]
        response[CORRELATION_ID_HEADER] = correlation_id
        return response
