"""Pydantic models of the webhook routes' JSON, for the OpenAPI schema.

The routes return the JSON that :class:`sagaz.core.web.WebhookService` builds (the same in
every Sagaz web plugin); these models document it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from sagaz.core import SagaStatus, StepStatus

__all__ = [
    "ErrorResponse",
    "HealthStatus",
    "SagaDiagram",
    "SagaState",
    "SourceStatus",
    "StepState",
    "ValidationErrorResponse",
    "WebhookAccepted",
]


class ErrorResponse(BaseModel):
    """Every error of the webhook routes: a code, a message that names the fix, the id."""

    error: str = Field(
        description="A stable, machine-readable code, e.g. invalid_json, missing_field, "
        "unknown_source, payload_too_large, unsupported_media_type, invalid_signature, "
        "not_found.",
        examples=["missing_field"],
    )
    detail: str = Field(description="What was wrong and how to fix it.")
    correlation_id: str | None = Field(
        default=None, description="The request's correlation id, when the error has one."
    )


class ValidationErrorResponse(ErrorResponse):
    """A request FastAPI could not validate (422), with its validation errors."""

    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="FastAPI's validation errors."
    )


class WebhookAccepted(BaseModel):
    """The event was recorded and the sagas it triggers were started (or found)."""

    status: Literal["accepted"] = "accepted"
    source: str = Field(description="The source the event was posted to.")
    message: str = Field(description="What happened to the event, in words.")
    correlation_id: str = Field(
        description="Stored on the event and every saga it started; read the status with "
        "GET {prefix}/{source}/status/{correlation_id}."
    )
    saga_ids: list[str] = Field(description="The sagas started (or, for a duplicate, found).")
    duplicate: bool = Field(
        description="True when the idempotency key was seen before: saga_ids are the "
        "existing sagas and nothing new was started."
    )


class StepState(BaseModel):
    """The recorded state of one step of a saga."""

    name: str
    status: StepStatus
    attempts: int
    result: dict[str, Any] | None = None
    error: str | None = None
    started_at: str | None = Field(default=None, description="ISO-8601, UTC.")
    finished_at: str | None = Field(default=None, description="ISO-8601, UTC.")
    compensation_attempts: int = 0
    compensation_error: str | None = None


class SagaState(BaseModel):
    """One saga as storage records it (``context`` only when the router exposes it)."""

    saga_id: str
    saga_name: str
    state: SagaStatus
    correlation_id: str | None = None
    idempotency_key: str | None = None
    created_at: str | None = Field(default=None, description="ISO-8601, UTC.")
    updated_at: str | None = Field(default=None, description="ISO-8601, UTC.")
    completed_steps: list[str]
    compensated_steps: list[str]
    failed_step: str | None = None
    error: str | None = None
    steps: list[StepState]
    context: dict[str, Any] | None = Field(
        default=None,
        description="The saga's context; present only when the router was created with "
        "WebhookSettings(expose_context=True).",
    )


class SourceStatus(BaseModel):
    """The sagas started by the events with one correlation id at one source."""

    correlation_id: str
    source: str
    status: Literal["processing", "completed", "compensated", "failed", "ignored"] = Field(
        description="processing until every saga is terminal; then failed if one failed, "
        "compensated if one was rolled back, else completed; ignored if no saga started."
    )
    message: str
    saga_ids: list[str]
    sagas: list[SagaState]


class SagaDiagram(BaseModel):
    """A saga's Mermaid flowchart, its steps coloured by their recorded state."""

    saga_id: str
    saga_name: str
    state: SagaStatus
    mermaid: str = Field(description="Mermaid flowchart source.")


class HealthStatus(BaseModel):
    """Whether the storage answers."""

    status: Literal["ok", "unavailable"]
    storage: str = Field(description="The storage backend's class name.")
    detail: str | None = Field(default=None, description="Why the storage is unavailable.")
