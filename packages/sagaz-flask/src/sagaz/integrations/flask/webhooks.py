"""The webhook blueprint: Flask routes mapped onto :class:`sagaz.core.web.WebhookService`.

The paths, status codes and JSON bodies are the core's (DESIGN section 4), the same in
every Sagaz web plugin; this module only turns Flask requests into service calls on the
background loop and :class:`~sagaz.core.web.WebResponse` objects into Flask responses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from flask import Blueprint, Response, g, request

from sagaz.core import (
    CORRELATION_ID_HEADER,
    Saga,
    StorageError,
    correlation_id_from_header,
)
from sagaz.core.web import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookService,
    WebResponse,
    check_authorization,
    error_response,
    saga_diagram_body,
)
from sagaz.integrations.flask.extension import json_response

if TYPE_CHECKING:
    from sagaz.integrations.flask.extension import SagaFlaskState

__all__ = ["diagram_body", "make_webhook_blueprint", "read_bounded"]

logger = logging.getLogger("sagaz.flask")

_CHUNK = 64 * 1024


def read_bounded(stream: IO[bytes], limit: int) -> bytes | None:
    """Read ``stream`` to its end, or return None as soon as it exceeds ``limit`` bytes.

    At most ``limit + 1`` bytes are ever held, whatever the client sends.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None


def _too_large(length: int | None, limit: int) -> Response:
    size = f"{length} bytes" if length is not None else f"more than {limit} bytes"
    response = json_response(
        error_response(413, "payload_too_large", f"the body is {size}; the limit is {limit} bytes")
    )
    # The unread rest of the body stays in the connection: do not reuse it.
    response.headers["Connection"] = "close"
    return response


def _answer(
    state: SagaFlaskState, func: Callable[..., Awaitable[WebResponse]], *args: Any, **kwargs: Any
) -> Response:
    """Call the service on the background loop; storage trouble is a JSON 503."""
    try:
        result = state.call(func, *args, **kwargs)
    except StorageError as exc:
        # %r: the path is the caller's and may hold control characters. The storage's
        # message may name hosts or files: it goes to the log only.
        logger.warning("sagaz: storage error on %s %r: %s", request.method, request.path, exc)
        result = error_response(
            503, "storage_unavailable", "saga storage is unavailable right now; retry later"
        )
    except Exception:
        logger.exception("sagaz: unexpected error on %s %r", request.method, request.path)
        result = error_response(
            500, "internal_error", "the server failed to handle this request; see its log"
        )
    return json_response(result)


def _correlation_id() -> str:
    value = g.get("correlation_id")
    if isinstance(value, str):
        return value
    return correlation_id_from_header(request.headers.get(CORRELATION_ID_HEADER))


def make_webhook_blueprint(name: str, state: SagaFlaskState, service: WebhookService) -> Blueprint:
    """A blueprint with the webhook, status, diagram and health routes (no prefix yet)."""
    blueprint = Blueprint(name, __name__)
    limit = service.settings.max_body_bytes
    hook = service.settings.authorize

    if hook is not None:

        @blueprint.before_request
        def authorize() -> Response | None:
            """Run the ``authorize`` hook before the webhook, status and diagram routes."""
            if request.endpoint == f"{blueprint.name}.health":
                return None
            refused = check_authorization(
                hook,
                request._get_current_object(),  # type: ignore[attr-defined]
                _correlation_id(),
            )
            return None if refused is None else json_response(refused)

    @blueprint.post("/<source>")
    def webhook(source: str) -> Response:
        """Start the sagas triggered by ``source`` with the JSON body (202)."""
        length = request.content_length
        if length is not None and length > limit:
            return _too_large(length, limit)
        body = read_bounded(request.stream, limit)
        if body is None:
            return _too_large(None, limit)
        return _answer(
            state,
            service.handle_webhook,
            source,
            body,
            content_type=request.headers.get("Content-Type"),
            correlation_id=_correlation_id(),
            signature=request.headers.get(SIGNATURE_HEADER),
            timestamp=request.headers.get(TIMESTAMP_HEADER),
        )

    @blueprint.get("/<source>/status/<correlation_id>")
    def source_status(source: str, correlation_id: str) -> Response:
        """The sagas started by events at ``source`` with ``correlation_id``."""
        return _answer(state, service.source_status, source, correlation_id)

    @blueprint.get("/status/<saga_id>")
    def saga_status(saga_id: str) -> Response:
        """One saga's state, read from storage."""
        return _answer(state, service.saga_status, saga_id)

    @blueprint.get("/status/<saga_id>/diagram")
    def saga_diagram(saga_id: str) -> Response:
        """One saga's Mermaid diagram with its step states."""
        return _answer(state, service.saga_diagram, saga_id)

    @blueprint.get("/health")
    def health() -> Response:
        """200 when storage answers, 503 when it does not."""
        return _answer(state, service.health)

    return blueprint


async def diagram_body(
    saga: Saga, saga_id: str | None, direction: str, extra: Mapping[str, Any]
) -> WebResponse:
    """The body of :meth:`SagaFlask.diagram_response` (runs on the background loop)."""
    return await saga_diagram_body(saga, saga_id, direction=direction, extra=extra)
