"""The webhook routes (the HTTP surface every Sagaz web plugin shares), as an APIRouter.

``app.include_router(create_webhook_router())`` adds, under ``prefix``:

- ``POST {prefix}/{source}``: record the event and start the sagas it triggers (202);
- ``GET {prefix}/{source}/status/{correlation_id}``: the sagas of one event;
- ``GET {prefix}/status/{saga_id}`` and ``GET {prefix}/status/{saga_id}/diagram``;
- ``GET {prefix}/health``.

Each route maps the request onto :class:`sagaz.core.web.WebhookService` and returns its
JSON unchanged, so paths, codes and bodies match the Django and Flask plugins. Every error
on these routes, FastAPI's own included, is ``{"error", "detail", "correlation_id"}``.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import contextlib
import http
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from sagaz.core import (
    CORRELATION_ID_HEADER,
    SagaConfig,
    SagaContextManager,
    StorageError,
    current_correlation_id,
)
from sagaz.core.registry import SagaRegistry
from sagaz.core.web import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookService,
    WebhookSettings,
    WebResponse,
    check_authorization_async,
    error_response,
)
from sagaz.integrations.fastapi.lifespan import SagazNotInitializedError, get_config
from sagaz.integrations.fastapi.middleware import get_correlation_id
from sagaz.integrations.fastapi.models import (
    ErrorResponse,
    HealthStatus,
    SagaDiagram,
    SagaState,
    SourceStatus,
    ValidationErrorResponse,
    WebhookAccepted,
)

__all__ = ["SagazRoute", "create_webhook_router"]

logger = logging.getLogger("sagaz.fastapi")

_Handler = Callable[[Request], Awaitable[Response]]


def _json(status: int, body: dict[str, Any], correlation_id: str, headers: Any = ()) -> Response:
    merged = dict(headers or {})
    merged[CORRELATION_ID_HEADER] = correlation_id
    return JSONResponse(body, status_code=status, headers=merged)


def _to_response(result: WebResponse, correlation_id: str) -> Response:
    body = result.body
    if "error" in body and body.get("correlation_id") is None:
        body = {**body, "correlation_id": correlation_id}
    return _json(result.status, body, correlation_id, result.headers)


def _error(status: int, code: str, detail: str, correlation_id: str, headers: Any = ()) -> Response:
    body = error_response(status, code, detail, correlation_id).body
    return _json(status, body, correlation_id, headers)


def _code(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _http_error(conn: HTTPConnection, exc: HTTPException) -> Response:
    detail = exc.detail
    text = detail if isinstance(detail, str) else json.dumps(jsonable_encoder(detail))
    return _error(
        exc.status_code, _code(exc.status_code), text, get_correlation_id(conn), exc.headers
    )


def _validation_error(conn: HTTPConnection, exc: RequestValidationError) -> Response:
    errors = jsonable_encoder(exc.errors())
    where = ", ".join(
        "/".join(str(part) for part in err.get("loc", ())) + f": {err.get('msg', 'invalid')}"
        for err in errors
        if isinstance(err, dict)
    )
    correlation_id = get_correlation_id(conn)
    body = error_response(
        422, "validation_error", f"the request is not valid: {where}", correlation_id
    ).body
    body["errors"] = errors
    return _json(422, body, correlation_id)


class SagazRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` whose errors are Sagaz's JSON error body.

    FastAPI's validation errors (422), ``HTTPException`` raised by the route's
    dependencies, 405 for a wrong method, storage failures (503) and unexpected errors
    (500, logged) all become ``{"error", "detail", "correlation_id"}`` with the
    ``X-Correlation-ID`` header. The webhook router uses it; pass it as ``route_class``
    to give your own routers the same errors.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so its errors become JSON error bodies."""
        handler: _Handler = super().get_route_handler()

        async def handle_with_json_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(request, exc)
            except HTTPException as exc:
                return _http_error(request, exc)
            except StorageError as exc:
                correlation_id = get_correlation_id(request)
                # The storage's message may name files or hosts: it goes to the log only.
                logger.warning(
                    "sagaz: storage unavailable (correlation id %s): %s", correlation_id, exc
                )
                return _error(
                    503,
                    "storage_unavailable",
                    "the saga storage is unavailable; retry later",
                    correlation_id,
                )
            except SagazNotInitializedError as exc:
                logger.error("sagaz: %s", exc)
                return _error(500, "sagaz_not_initialized", str(exc), get_correlation_id(request))
            except Exception:
                correlation_id = get_correlation_id(request)
                # %r: the path is the caller's and may hold control characters.
                logger.exception(
                    "sagaz: error in %r (correlation id %s)", request.url.path, correlation_id
                )
                return _error(
                    500,
                    "internal_error",
                    "the server failed to handle the request; quote the correlation id when "
                    "you report it",
                    correlation_id,
                )

        return handle_with_json_errors

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer errors raised before the endpoint runs (405) with the JSON body too."""
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await super().handle(scope, receive, watch)
        except HTTPException as exc:
            if started or scope["type"] != "http":
                raise
            await _http_error(HTTPConnection(scope), exc)(scope, receive, send)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Invalid JSON, not a JSON object, or a missing idempotency field (named in `detail`).",
        401: "The source requires a signed request (X-Sagaz-Timestamp and X-Sagaz-Signature) "
        "and the signature is missing or wrong, or the timestamp missing or outside the "
        "replay window (`error` says which).",
        403: "The authorisation hook (WebhookSettings.authorize) refused the request.",
        404: "Unknown source, saga or correlation id.",
        413: "The body is larger than the limit.",
        415: "The body is not sent as JSON (Content-Type: application/json).",
        500: "Sagaz is not initialised, or an unexpected error (logged on the server).",
        503: "The storage is unreachable.",
    }
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": described[code]} for code in codes
    }
    responses[422] = {"model": ValidationErrorResponse, "description": "Validation error."}
    return responses


_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "The event, a JSON object; the raw bytes are what the signature covers.",
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    }
}


async def _read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body and False; or, as soon as more than ``limit`` bytes arrived, b"" and True
    (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"", True
    return b"".join(chunks), False


def _too_large(result: WebResponse, correlation_id: str) -> Response:
    """The 413; the unread rest of the body stays in the connection: do not reuse it."""
    return _json(
        result.status, result.body, correlation_id, {**result.headers, "Connection": "close"}
    )


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


@contextlib.contextmanager
def _correlation_scope(correlation_id: str) -> Iterator[None]:
    """The request's correlation scope, if SagaContextMiddleware did not open one."""
    if current_correlation_id() == correlation_id:
        yield
        return
    with SagaContextManager.scope(correlation_id=correlation_id):
        yield


def create_webhook_router(
    prefix: str = "/webhooks",
    *,
    settings: WebhookSettings | None = None,
    config: SagaConfig | None = None,
    saga_registry: SagaRegistry | None = None,
    tags: Iterable[str] = ("sagaz",),
    dependencies: Sequence[Depends] | None = None,
    include_in_schema: bool = True,
    json_not_found: bool = True,
) -> APIRouter:
    """The webhook routes under ``prefix``: ``app.include_router(create_webhook_router())``.

    ``settings`` (:class:`sagaz.core.web.WebhookSettings`) sets the body size limit,
    per-source HMAC secrets and the replay window, whether status responses show the saga
    context, whether sagas run in this process or are left to workers, and ``authorize``,
    a hook ``(request) -> bool`` (or an async one) guarding the webhook, status and
    diagram routes (False: 403 JSON). ``config`` defaults to the
    application's (from :func:`~sagaz.integrations.fastapi.create_lifespan`);
    ``saga_registry`` to the process-wide registry. ``dependencies`` apply to every route
    (e.g. authentication); their ``HTTPException`` becomes the JSON error body.

    With ``json_not_found`` (default) a request under ``prefix`` that matches none of
    these routes (``/webhooks/a/b``, ``/webhooks/status/../x``) gets the JSON 404 (or 405)
    too, not the application's default body; routes you add under the same prefix
    after including this router are then unreachable: include it last, or pass False.
    """
    cfg_settings = settings or WebhookSettings()
    limit = cfg_settings.max_body_bytes
    router = APIRouter(
        prefix=prefix,
        tags=list(tags),
        dependencies=dependencies,
        route_class=SagazRoute,
        include_in_schema=include_in_schema,
    )

    def service(request: Request) -> WebhookService:
        cfg = config if config is not None else get_config(request)
        return WebhookService(cfg, cfg_settings, saga_registry)

    async def denied(request: Request) -> Response | None:
        correlation_id = get_correlation_id(request)
        refused = await check_authorization_async(cfg_settings.authorize, request, correlation_id)
        return None if refused is None else _to_response(refused, correlation_id)

    @router.get(
        "/health",
        response_model=HealthStatus,
        responses={503: {"model": HealthStatus, "description": "The storage is unreachable."}},
        summary="Whether the saga storage answers",
    )
    async def sagaz_health(request: Request) -> Response:
        """200 when the storage answers, 503 with the reason when it does not."""
        return _to_response(await service(request).health(), get_correlation_id(request))

    @router.get(
        "/status/{saga_id}",
        response_model=SagaState,
        responses=_errors(403, 404, 500, 503),
        summary="One saga's state",
    )
    async def sagaz_saga_status(saga_id: str, request: Request) -> Response:
        """The saga's state, completed and compensated steps, failed step and error."""
        if (refused := await denied(request)) is not None:
            return refused
        result = await service(request).saga_status(saga_id)
        return _to_response(result, get_correlation_id(request))

    @router.get(
        "/status/{saga_id}/diagram",
        response_model=SagaDiagram,
        responses=_errors(403, 404, 500, 503),
        summary="One saga's Mermaid diagram, steps coloured by state",
    )
    async def sagaz_saga_diagram(saga_id: str, request: Request) -> Response:
        """The Mermaid flowchart of the saga with each step coloured by its recorded state."""
        if (refused := await denied(request)) is not None:
            return refused
        result = await service(request).saga_diagram(saga_id)
        return _to_response(result, get_correlation_id(request))

    @router.get(
        "/{source}/status/{correlation_id}",
        response_model=SourceStatus,
        responses=_errors(403, 404, 500, 503),
        summary="The sagas started by one event",
    )
    async def sagaz_event_status(source: str, correlation_id: str, request: Request) -> Response:
        """The sagas that the events with ``correlation_id`` at ``source`` started."""
        if (refused := await denied(request)) is not None:
            return refused
        result = await service(request).source_status(source, correlation_id)
        return _to_response(result, get_correlation_id(request))

    @router.post(
        "/{source}",
        status_code=202,
        response_model=WebhookAccepted,
        responses=_errors(400, 401, 403, 404, 413, 415, 500, 503),
        openapi_extra=_EVENT_BODY,
        summary="Post an event that starts sagas",
    )
    async def sagaz_webhook(
        source: str,
        request: Request,
        x_correlation_id: Annotated[
            str | None,
            Header(
                alias=CORRELATION_ID_HEADER,
                description="Correlation id stored on the event and its sagas (at most 128 "
                "characters of A-Z a-z 0-9 . _ : -); a new one is generated otherwise.",
            ),
        ] = None,
        x_sagaz_signature: Annotated[
            str | None,
            Header(
                alias=SIGNATURE_HEADER,
                description='sha256=<hex HMAC-SHA256 of "<timestamp>." + the raw body>, for '
                "sources with a shared secret.",
            ),
        ] = None,
        x_sagaz_timestamp: Annotated[
            str | None,
            Header(
                alias=TIMESTAMP_HEADER,
                description="Unix time in seconds the request was signed at, for sources "
                "with a shared secret (refused outside the replay window, default 300 s).",
            ),
        ] = None,
    ) -> Response:
        """Record the event and start the sagas whose ``@trigger`` listens to ``source``."""
        correlation_id = get_correlation_id(request)
        if (refused := await denied(request)) is not None:
            return refused
        webhooks = service(request)
        declared = _declared_length(request)
        too_large = webhooks.check_content_length(declared, correlation_id)
        if too_large is not None:
            return _too_large(too_large, correlation_id)
        try:
            body, cut = await _read_body(request, limit)
        except ClientDisconnect:
            return _error(400, "client_disconnected", "the body was not received", correlation_id)
        if cut:
            # No (or a false) Content-Length: reading stopped at the limit.
            detail = f"the body is more than {limit} bytes; the limit is {limit} bytes"
            return _too_large(
                error_response(413, "payload_too_large", detail, correlation_id), correlation_id
            )
        with _correlation_scope(correlation_id):
            result = await webhooks.handle_webhook(
                source,
                body,
                content_type=request.headers.get("content-type"),
                correlation_id=correlation_id,
                signature=x_sagaz_signature,
                timestamp=x_sagaz_timestamp,
            )
        return _to_response(result, correlation_id)

    if json_not_found and prefix.strip("/"):

        @router.api_route(
            "/{rest:path}",
            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            include_in_schema=False,
        )
        async def sagaz_no_route(rest: str, request: Request) -> Response:
            """A JSON 404 (405 when another route has the path) for the rest of the prefix."""
            correlation_id = get_correlation_id(request)
            path = f"{router.prefix}/{rest}"  # as this router's own routes see it
            allowed = sorted(
                {
                    method
                    for route in router.routes
                    if isinstance(route, APIRoute)
                    and route.endpoint is not sagaz_no_route
                    and route.path_regex.match(path)
                    for method in route.methods or ()
                }
            )
            if allowed:
                return _error(
                    405,
                    "method_not_allowed",
                    f"{request.method} is not allowed here; use {', '.join(allowed)}",
                    correlation_id,
                    {"Allow": ", ".join(allowed)},
                )
            return _error(
                404,
                "not_found",
                "no Sagaz route has this path; see the API documentation for the routes",
                correlation_id,
            )

    return router
