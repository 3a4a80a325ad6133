"""Correlation ids for every request: read or generate, scope, echo.

:class:`SagaContextMiddleware` is pure ASGI middleware (not ``BaseHTTPMiddleware``), so
the :class:`~sagaz.core.SagaContextManager` scope it opens is the context the endpoint,
its dependencies and its background tasks run in: sagas started there record the
request's correlation id, and steps and log records see it.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagaz.core import (
    CORRELATION_ID_HEADER,
    SagaContextManager,
    correlation_id_from_header,
    current_correlation_id,
)

__all__ = ["SCOPE_KEY", "SagaContextMiddleware", "get_correlation_id"]

logger = logging.getLogger("sagaz.fastapi")

#: The ASGI scope key holding the request's correlation id once it is known.
SCOPE_KEY = "sagaz.correlation_id"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            text: str = value.decode("latin-1")
            return text
    return None


def _correlation_id(scope: Scope, header: bytes) -> str:
    """The request's correlation id: already assigned, else from the header, else new."""
    known = scope.get(SCOPE_KEY)
    if isinstance(known, str):
        return known
    value = correlation_id_from_header(_header(scope, header))
    scope[SCOPE_KEY] = value
    return value


def get_correlation_id(request: HTTPConnection) -> str:
    """FastAPI dependency: the correlation id of the current request.

    The one :class:`SagaContextMiddleware` assigned; without the middleware, the current
    :class:`~sagaz.core.SagaContextManager` scope's, else the valid ``X-Correlation-ID``
    header, else a new UUID4 (the same for the whole request).
    """
    scope = request.scope
    known = scope.get(SCOPE_KEY)
    if isinstance(known, str):
        return known
    current = current_correlation_id()
    if current is not None:
        scope[SCOPE_KEY] = current
        return current
    return _correlation_id(scope, CORRELATION_ID_HEADER.lower().encode("latin-1"))


class SagaContextMiddleware:
    """Pure ASGI middleware giving each request a correlation id.

    ``app.add_middleware(SagaContextMiddleware)``. For each HTTP request and WebSocket
    the id is the ``header_name`` header (``X-Correlation-ID``) when it is valid (at most
    128 characters of ``[A-Za-z0-9._:-]``), else a new UUID4. The request runs inside
    ``SagaContextManager.scope(correlation_id=...)`` and the id is set on every response
    (replacing any value the application set) and on the WebSocket handshake.

    With ``json_errors=True`` (default) an exception that escapes the application before
    it responded is answered with a JSON 500 ``{"error", "detail", "correlation_id"}``
    carrying the header, then re-raised so the server logs it.
    """

    def __init__(
        self,
        app: ASGIApp,
        header_name: str = CORRELATION_ID_HEADER,
        *,
        json_errors: bool = True,
    ) -> None:
        self.app = app
        self.header_name = header_name
        self.json_errors = json_errors
        self._header = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request in a correlation scope and echo the id on the response."""
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        correlation_id = _correlation_id(scope, self._header)
        pair = (self._header, correlation_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept"):
                started = True
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != self._header
                ]
                headers.append(pair)
                message = {**message, "headers": headers}
            await send(message)

        with SagaContextManager.scope(correlation_id=correlation_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                if started or kind != "http" or not self.json_errors:
                    raise
                await _send_internal_error(send_with_id, correlation_id)
                raise


async def _send_internal_error(send: Send, correlation_id: str) -> None:
    body = json.dumps(
        {
            "error": "internal_error",
            "detail": "the server failed to handle the request; quote the correlation id "
            "when you report it",
            "correlation_id": correlation_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
