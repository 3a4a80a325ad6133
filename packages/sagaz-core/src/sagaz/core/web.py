"""The HTTP surface shared by every web plugin, without any framework.

Each plugin turns a request into a call on :class:`WebhookService` and its
:class:`WebResponse` back into its framework's response, so the paths, status codes
and JSON are the same in FastAPI, Django and Flask (DESIGN section 4):

- ``POST {prefix}/{source}`` → :meth:`WebhookService.handle_webhook`
- ``GET {prefix}/{source}/status/{correlation_id}`` → :meth:`WebhookService.source_status`
- ``GET {prefix}/status/{saga_id}`` → :meth:`WebhookService.saga_status`
- ``GET {prefix}/status/{saga_id}/diagram`` → :meth:`WebhookService.saga_diagram`
- ``GET {prefix}/health`` → :meth:`WebhookService.health`

Errors are ``{"error": code, "detail": message, "correlation_id": id}`` with a 4xx
(503 when storage is unreachable), never a 500 for anything the caller sent.

Security (see :mod:`sagaz.core.signatures` for the signature scheme):

- a source with a secret (settings or ``SAGAZ_WEBHOOK_SECRET_<SOURCE>``) requires
  ``X-Sagaz-Timestamp`` + ``X-Sagaz-Signature`` within the replay window, else 401;
- status responses leave out the saga context unless ``expose_context`` is set;
- ``authorize``, a callable taking the framework's request and returning True (allow)
  or False (deny), guards the webhook, status and diagram routes: each plugin calls
  :func:`check_authorization` / :func:`check_authorization_async` (403 JSON on deny).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.context import is_valid_correlation_id
from sagaz.core.diagrams import to_mermaid
from sagaz.core.errors import (
    ContextNotSerializableError,
    StorageError,
    TriggerPayloadError,
    UnknownSagaError,
    UnknownSourceError,
)
from sagaz.core.records import SagaRecord
from sagaz.core.registry import SagaRegistry, registry
from sagaz.core.signatures import (
    DEFAULT_SIGNATURE_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    lookup_secret,
    sign_body,
    signature_headers,
    verify_signature,
)
from sagaz.core.status import SagaStatus
from sagaz.core.triggers import fire_event

if TYPE_CHECKING:
    from sagaz.core.saga import Saga

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_SIGNATURE_TOLERANCE",
    "DIAGRAM_DIRECTIONS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AuthorizeHook",
    "WebResponse",
    "WebhookService",
    "WebhookSettings",
    "check_authorization",
    "check_authorization_async",
    "error_response",
    "saga_diagram_body",
    "sign_body",
    "signature_headers",
]

logger = logging.getLogger("sagaz.web")

#: Default largest webhook body accepted (1 MiB).
DEFAULT_MAX_BODY_BYTES = 1_048_576

#: An authorisation hook: takes the framework's request object, returns True to allow
#: it or False to refuse it with 403 (FastAPI and async Django views may return an
#: awaitable). Raising :class:`PermissionError` refuses with the exception's message.
AuthorizeHook: TypeAlias = Callable[[Any], "bool | Awaitable[bool]"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class WebResponse:
    """A framework-neutral response: status code, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """How the webhook routes behave.

    ``secrets`` maps a source to its HMAC-SHA256 shared secret (that source then
    requires a signed request, see :mod:`sagaz.core.signatures`); with
    ``secrets_from_env`` (default) a source the mapping does not name takes its secret
    from ``SAGAZ_WEBHOOK_SECRET_<SOURCE>`` when set. ``signature_tolerance`` is the
    replay window in seconds (default 300); ``legacy_signatures`` also accepts the
    older body-only signature without a timestamp (no replay protection).
    ``expose_context`` shows a saga's context in status responses (off by default: it
    may hold personal data); ``run_in_process`` runs started sagas in this process
    (else workers run them); ``authorize`` (an :data:`AuthorizeHook`) guards the
    webhook, status and diagram routes. Secrets are left out of ``repr()``.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    expose_context: bool = False
    run_in_process: bool = True
    signature_tolerance: float = DEFAULT_SIGNATURE_TOLERANCE
    legacy_signatures: bool = False
    secrets_from_env: bool = True
    authorize: AuthorizeHook | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_body_bytes, bool) or self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {self.max_body_bytes!r}")
        if not self.signature_tolerance > 0:
            raise ValueError(
                f"signature_tolerance must be > 0 seconds, got {self.signature_tolerance!r}"
            )
        if self.authorize is not None and not callable(self.authorize):
            raise TypeError(
                f"authorize must be a callable taking the request, got {self.authorize!r}"
            )


def error_response(
    status: int, code: str, detail: str, correlation_id: str | None = None
) -> WebResponse:
    """The JSON error every route returns: ``{"error", "detail", "correlation_id"}``."""
    return WebResponse(status, {"error": code, "detail": detail, "correlation_id": correlation_id})


_DENIED = "the authorisation hook of these routes refused the request"


def _forbidden(detail: str, correlation_id: str | None) -> WebResponse:
    return error_response(403, "forbidden", detail, correlation_id)


def _judge(result: object, hook: object, correlation_id: str | None) -> WebResponse | None:
    if result is True:
        return None
    if result is False:
        return _forbidden(f"{_DENIED}; send the credentials it expects", correlation_id)
    logger.error(
        "sagaz: the authorize hook %r returned %s, not True or False; the request is refused",
        hook,
        type(result).__name__,
    )
    return _forbidden(f"{_DENIED} (it failed on the server; see its log)", correlation_id)


def _hook_failed(hook: object, correlation_id: str | None) -> WebResponse:
    logger.exception("sagaz: the authorize hook %r raised; the request is refused", hook)
    return _forbidden(f"{_DENIED} (it failed on the server; see its log)", correlation_id)


def check_authorization(
    hook: AuthorizeHook | None, request: object, correlation_id: str | None = None
) -> WebResponse | None:
    """Run a synchronous authorisation hook: None to go on, or the 403 to answer.

    Fails closed: a hook that raises, returns something other than True/False, or
    returns an awaitable (use :func:`check_authorization_async` on an event loop) refuses
    the request. :class:`PermissionError` refuses with its own message.
    """
    if hook is None:
        return None
    try:
        result = hook(request)
    except PermissionError as exc:
        return _forbidden(str(exc) or _DENIED, correlation_id)
    except Exception:
        return _hook_failed(hook, correlation_id)
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        logger.error(
            "sagaz: the authorize hook %r is asynchronous; this route calls it synchronously "
            "(give it a plain function); the request is refused",
            hook,
        )
        return _forbidden(f"{_DENIED} (it failed on the server; see its log)", correlation_id)
    return _judge(result, hook, correlation_id)


async def check_authorization_async(
    hook: AuthorizeHook | None, request: object, correlation_id: str | None = None
) -> WebResponse | None:
    """Like :func:`check_authorization`, awaiting the hook's result when it is awaitable."""
    if hook is None:
        return None
    try:
        result: object = hook(request)
        if inspect.isawaitable(result):
            result = await result
    except PermissionError as exc:
        return _forbidden(str(exc) or _DENIED, correlation_id)
    except Exception:
        return _hook_failed(hook, correlation_id)
    return _judge(result, hook, correlation_id)


def _is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _unavailable(exc: BaseException, correlation_id: str | None) -> WebResponse:
    logger.warning("sagaz: storage unavailable while serving a request: %s", exc)
    return error_response(
        503,
        "storage_unavailable",
        "saga storage is unavailable right now; nothing was recorded, retry later",
        correlation_id,
    )


class WebhookService:
    """The logic behind the shared routes, used by every plugin.

    Storage failures become a 503 with a JSON body (nothing half-written: every
    storage write is atomic), never a 500.
    """

    def __init__(
        self,
        config: SagaConfig | None = None,
        settings: WebhookSettings | None = None,
        saga_registry: SagaRegistry | None = None,
    ) -> None:
        self._config = config
        self.settings = settings or WebhookSettings()
        self.registry = saga_registry or registry

    @property
    def config(self) -> SagaConfig:
        """The config sagas are started with (the process-wide one by default)."""
        return self._config if self._config is not None else get_config()

    # -- POST {prefix}/{source} --------------------------------------------------

    def check_content_length(
        self, length: int | None, correlation_id: str | None = None
    ) -> WebResponse | None:
        """A 413 when a declared Content-Length is over the limit (before reading it)."""
        limit = self.settings.max_body_bytes
        if length is not None and length > limit:
            return error_response(
                413,
                "payload_too_large",
                f"the body is {length} bytes; the limit is {limit} bytes",
                correlation_id,
            )
        return None

    async def handle_webhook(
        self,
        source: str,
        body: bytes,
        *,
        content_type: str | None,
        correlation_id: str,
        signature: str | None = None,
        timestamp: str | None = None,
    ) -> WebResponse:
        """Validate a webhook and start the sagas its source triggers (202).

        ``signature`` and ``timestamp`` are the raw :data:`SIGNATURE_HEADER` and
        :data:`TIMESTAMP_HEADER` values (None when absent).
        """
        settings = self.settings
        if not _SAFE_NAME.fullmatch(source) or not self.registry.triggers_for(source):
            known = ", ".join(sorted(self.registry.sources)) or "none"
            shown = source if _SAFE_NAME.fullmatch(source) else "(invalid name)"
            return error_response(
                404,
                "unknown_source",
                f"no saga is triggered by source {shown!r}; known sources: {known}",
                correlation_id,
            )
        if len(body) > settings.max_body_bytes:
            return error_response(
                413,
                "payload_too_large",
                f"the body is {len(body)} bytes; the limit is {settings.max_body_bytes} bytes",
                correlation_id,
            )
        if not _is_json_type(content_type):
            return error_response(
                415,
                "unsupported_media_type",
                f"send the event as JSON with Content-Type: application/json "
                f"(got {content_type or 'no Content-Type'})",
                correlation_id,
            )
        secret = lookup_secret(source, settings.secrets, from_env=settings.secrets_from_env)
        if secret is not None:
            problem = verify_signature(
                body,
                secret,
                signature=signature,
                timestamp=timestamp,
                tolerance=settings.signature_tolerance,
                legacy=settings.legacy_signatures,
            )
            if problem is not None:
                logger.info(
                    "sagaz: refused a webhook for source %r: %s (correlation id %s)",
                    source,
                    problem.code,
                    correlation_id,
                )
                return error_response(
                    401, problem.code, f"source {source!r}: {problem.detail}", correlation_id
                )
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:
            return error_response(
                400, "invalid_json", f"the body is not valid JSON: {exc}", correlation_id
            )
        if not isinstance(payload, dict):
            return error_response(
                400,
                "invalid_payload",
                f"the body must be a JSON object, got a JSON {type(payload).__name__}",
                correlation_id,
            )
        try:
            fired = await fire_event(
                source,
                payload,
                correlation_id=correlation_id,
                config=self.config,
                run=settings.run_in_process,
                saga_registry=self.registry,
            )
        except TriggerPayloadError as exc:
            code = "missing_field" if exc.field is not None else "invalid_payload"
            return error_response(400, code, str(exc), correlation_id)
        except ContextNotSerializableError as exc:
            return error_response(400, "invalid_payload", str(exc), correlation_id)
        except UnknownSourceError as exc:  # pragma: no cover - raced with registration
            return error_response(404, "unknown_source", str(exc), correlation_id)
        except (StorageError, OSError) as exc:
            return _unavailable(exc, correlation_id)
        message = (
            "Duplicate event: the saga for this idempotency key already exists"
            if fired.duplicate
            else "Event queued for processing"
            if fired.saga_ids
            else "Event accepted; no saga was started for it"
        )
        return WebResponse(
            202,
            {
                "status": "accepted",
                "source": source,
                "message": message,
                "correlation_id": fired.correlation_id,
                "saga_ids": fired.saga_ids,
                "duplicate": fired.duplicate,
            },
        )

    # -- GET {prefix}/{source}/status/{correlation_id} ---------------------------

    async def source_status(self, source: str, correlation_id: str) -> WebResponse:
        """The sagas started by events at ``source`` with ``correlation_id``."""
        if not _SAFE_NAME.fullmatch(source):
            # No webhook source has a name outside the safe alphabet: do not echo it.
            return error_response(
                404,
                "not_found",
                "no such source: source names are at most 128 characters of A-Z a-z 0-9 . _ : -",
            )
        storage = self.config.storage
        try:
            await storage.ensure_open()
            events = await storage.find_trigger_events(correlation_id, source)
            records = [
                record
                for event in events
                for saga_id in event.saga_ids
                if (record := await storage.load(saga_id)) is not None
            ]
        except (StorageError, OSError) as exc:
            return _unavailable(exc, correlation_id)
        if not events:
            shown = correlation_id if _SAFE_NAME.fullmatch(correlation_id) else "(invalid id)"
            return error_response(
                404,
                "not_found",
                f"no event at source {source!r} has correlation id {shown!r}",
                correlation_id if shown == correlation_id else None,
            )
        status, message = _overall(records)
        return WebResponse(
            200,
            {
                "correlation_id": correlation_id,
                "source": source,
                "status": status,
                "message": message,
                "saga_ids": [r.saga_id for r in records],
                "sagas": [self._saga_body(r) for r in records],
            },
        )

    # -- GET {prefix}/status/{saga_id} -------------------------------------------

    async def saga_status(self, saga_id: str, correlation_id: str | None = None) -> WebResponse:
        """One saga's state, steps, failed step and error (and context if exposed)."""
        try:
            record = await self._load(saga_id)
        except (StorageError, OSError) as exc:
            return _unavailable(exc, correlation_id)
        if record is None:
            return self._not_found(saga_id, correlation_id)
        return WebResponse(200, self._saga_body(record))

    async def saga_diagram(self, saga_id: str, correlation_id: str | None = None) -> WebResponse:
        """The Mermaid diagram of one saga with its step states highlighted."""
        try:
            record = await self._load(saga_id)
        except (StorageError, OSError) as exc:
            return _unavailable(exc, correlation_id)
        if record is None:
            return self._not_found(saga_id, correlation_id)
        try:
            saga = self.registry.create(record.saga_name, self.config)
        except UnknownSagaError as exc:
            return error_response(404, "unknown_saga", str(exc), correlation_id)
        return WebResponse(
            200,
            {
                "saga_id": saga_id,
                "saga_name": record.saga_name,
                "state": record.status.value,
                "mermaid": to_mermaid(saga, record),
            },
        )

    async def health(self) -> WebResponse:
        """200 when storage answers, 503 (with the reason) when it does not."""
        storage = self.config.storage
        try:
            await storage.ping()
        except Exception as exc:
            logger.warning("sagaz health check: storage unreachable: %s", exc)
            return WebResponse(
                503,
                {
                    "status": "unavailable",
                    "storage": type(storage).__name__,
                    "detail": "saga storage is unreachable; see the server log for the cause",
                },
            )
        return WebResponse(200, {"status": "ok", "storage": type(storage).__name__})

    # -- helpers -------------------------------------------------------------------

    async def _load(self, saga_id: str) -> SagaRecord | None:
        if not _SAFE_NAME.fullmatch(saga_id):
            return None
        storage = self.config.storage
        await storage.ensure_open()
        return await storage.load(saga_id)

    @staticmethod
    def _not_found(saga_id: str, correlation_id: str | None = None) -> WebResponse:
        shown = saga_id if _SAFE_NAME.fullmatch(saga_id) else "(invalid id)"
        return error_response(404, "not_found", f"no saga with id {shown!r}", correlation_id)

    def _saga_body(self, record: SagaRecord) -> dict[str, Any]:
        return record.to_dict(include_context=self.settings.expose_context, include_history=False)


def _overall(records: list[SagaRecord]) -> tuple[str, str]:
    if not records:
        return "ignored", "The event was accepted but started no saga."
    states = {r.status for r in records}
    if any(not s.is_terminal for s in states):
        return "processing", "Event is being processed."
    if SagaStatus.FAILED in states:
        return "failed", "A saga failed and needs intervention."
    if SagaStatus.COMPENSATED in states:
        return "compensated", "A saga failed and was rolled back."
    return "completed", "Every saga started by this event completed."


#: The flowchart directions Mermaid knows (``to_mermaid(direction=...)``).
DIAGRAM_DIRECTIONS = ("TD", "TB", "BT", "LR", "RL")


async def saga_diagram_body(
    saga: Saga,
    saga_id: str | None = None,
    *,
    direction: str = "TD",
    extra: Mapping[str, Any] | None = None,
) -> WebResponse:
    """The JSON answer of a plugin's diagram helper for a bound ``saga`` (one for all plugins).

    Reads the execution ``saga_id`` (if given) from ``saga.config.storage``; never raises
    for a bad id, an execution of another saga, a bad ``direction`` or a storage that
    does not answer: those are 404, 404, 400 and 503 error bodies.
    """
    if direction not in DIAGRAM_DIRECTIONS:
        return error_response(
            400,
            "invalid_direction",
            f"direction must be one of {', '.join(DIAGRAM_DIRECTIONS)}; got {direction!r}",
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
