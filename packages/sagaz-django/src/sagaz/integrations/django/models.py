"""The tables Sagaz keeps in Django's database, as Django models (app label ``sagaz``).

``manage.py migrate`` creates them. They are written by
:class:`~sagaz.integrations.django.storage.DjangoSagaStorage` and
:func:`~sagaz.integrations.django.atomic_saga_start`; treat them as read-only (the admin
does). Times are epoch seconds (floats, exactly as the engine records them); contexts,
results and payloads are JSON text, stored verbatim so every record reads back exactly
as it was written (key order and all) on every database.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.db import models

__all__ = [
    "InboxEntry",
    "OutboxMessage",
    "SagaHistoryEntry",
    "SagaInstance",
    "SagaStep",
    "TriggerEventRecord",
]

_STATUS_CHOICES = [
    (s, s) for s in ("PENDING", "RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED")
]


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _pretty(text: str | None) -> str:
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


class SagaInstance(models.Model):
    """One saga execution: its status, context, failure and lease."""

    id: models.BigAutoField[int, int] = models.BigAutoField(
        primary_key=True, help_text="insertion order (breaks ties of created_at)"
    )
    saga_id: models.CharField[str, str] = models.CharField(max_length=64, unique=True)
    saga_name: models.CharField[str, str] = models.CharField(max_length=200)
    status: models.CharField[str, str] = models.CharField(max_length=16, choices=_STATUS_CHOICES)
    context: models.TextField[str, str] = models.TextField(help_text="JSON")
    correlation_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=128, null=True, blank=True
    )
    idempotency_key: models.CharField[str | None, str | None] = models.CharField(
        max_length=255, null=True, blank=True
    )
    created_at: models.FloatField[float, float] = models.FloatField()
    updated_at: models.FloatField[float, float] = models.FloatField()
    error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    failed_step: models.CharField[str | None, str | None] = models.CharField(
        max_length=200, null=True, blank=True
    )
    recoveries: models.IntegerField[int, int] = models.IntegerField(default=0)
    last_seq: models.IntegerField[int, int] = models.IntegerField(
        default=0, help_text="seq of the last history entry"
    )
    lease_owner: models.CharField[str | None, str | None] = models.CharField(
        max_length=200, null=True, blank=True
    )
    lease_expires_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    cancel_requested: models.BooleanField[bool, bool] = models.BooleanField(default=False)
    trace_context: models.TextField[str | None, str | None] = models.TextField(
        null=True,
        blank=True,
        help_text="JSON: the W3C trace context (traceparent) the saga was started in",
    )

    class Meta:
        db_table = "sagaz_saga"
        verbose_name = "saga"
        verbose_name_plural = "sagas"
        ordering = ("-created_at", "id")
        constraints = [
            models.UniqueConstraint(
                fields=["saga_name", "idempotency_key"], name="sagaz_saga_idempotency"
            )
        ]
        indexes = [
            models.Index(fields=["status", "created_at"], name="sagaz_saga_status"),
            models.Index(fields=["saga_name", "created_at"], name="sagaz_saga_name"),
            models.Index(fields=["correlation_id"], name="sagaz_saga_correlation"),
            models.Index(fields=["created_at"], name="sagaz_saga_created"),
            models.Index(fields=["lease_owner"], name="sagaz_saga_lease_owner"),
        ]

    def __str__(self) -> str:
        return f"{self.saga_name} {self.saga_id} ({self.status})"

    @property
    def created(self) -> datetime | None:
        """``created_at`` as an aware UTC datetime."""
        return _when(self.created_at)

    @property
    def updated(self) -> datetime | None:
        """``updated_at`` as an aware UTC datetime."""
        return _when(self.updated_at)

    @property
    def context_data(self) -> Any:
        """The context, decoded."""
        return json.loads(self.context)

    @property
    def context_pretty(self) -> str:
        """The context as indented JSON."""
        return _pretty(self.context)


class SagaStep(models.Model):
    """The recorded state of one step of one saga (rows in order of first start)."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    saga: models.ForeignKey[SagaInstance, SagaInstance] = models.ForeignKey(
        SagaInstance,
        on_delete=models.CASCADE,
        related_name="steps",
        to_field="saga_id",
        db_column="saga_id",
    )
    saga_id: str
    name: models.CharField[str, str] = models.CharField(max_length=200)
    status: models.CharField[str, str] = models.CharField(max_length=24)
    attempts: models.IntegerField[int, int] = models.IntegerField(default=0)
    result: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True, help_text="JSON"
    )
    error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    started_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    finished_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    compensation_attempts: models.IntegerField[int, int] = models.IntegerField(default=0)
    compensation_error: models.TextField[str | None, str | None] = models.TextField(
        null=True, blank=True
    )

    class Meta:
        db_table = "sagaz_step"
        verbose_name = "step"
        ordering = ("id",)
        constraints = [models.UniqueConstraint(fields=["saga", "name"], name="sagaz_step_unique")]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class SagaHistoryEntry(models.Model):
    """One line of a saga's append-only history (``seq`` counts from 1 per saga)."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    saga: models.ForeignKey[SagaInstance, SagaInstance] = models.ForeignKey(
        SagaInstance,
        on_delete=models.CASCADE,
        related_name="history",
        to_field="saga_id",
        db_column="saga_id",
    )
    saga_id: str
    seq: models.IntegerField[int, int] = models.IntegerField()
    at: models.FloatField[float, float] = models.FloatField()
    kind: models.CharField[str, str] = models.CharField(max_length=32)
    step: models.CharField[str | None, str | None] = models.CharField(
        max_length=200, null=True, blank=True
    )
    attempt: models.IntegerField[int, int] = models.IntegerField(default=0)
    error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)

    class Meta:
        db_table = "sagaz_history"
        verbose_name = "history entry"
        verbose_name_plural = "history"
        ordering = ("seq",)
        constraints = [models.UniqueConstraint(fields=["saga", "seq"], name="sagaz_history_unique")]

    def __str__(self) -> str:
        return f"{self.seq} {self.kind} {self.step or ''}".rstrip()

    @property
    def when(self) -> datetime | None:
        """``at`` as an aware UTC datetime."""
        return _when(self.at)


class TriggerEventRecord(models.Model):
    """An event fired at a webhook source, and the ids of the sagas it started."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    event_id: models.CharField[str, str] = models.CharField(max_length=64, unique=True)
    source: models.CharField[str, str] = models.CharField(max_length=128)
    correlation_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=128, null=True, blank=True
    )
    payload: models.TextField[str, str] = models.TextField(help_text="JSON")
    saga_ids: models.TextField[str, str] = models.TextField(help_text="JSON list")
    created_at: models.FloatField[float, float] = models.FloatField()

    class Meta:
        db_table = "sagaz_trigger_event"
        verbose_name = "trigger event"
        ordering = ("id",)
        indexes = [
            models.Index(fields=["correlation_id", "source"], name="sagaz_trigger_correlation")
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.event_id}"


class OutboxMessage(models.Model):
    """An event to publish, written in the transaction of the change that caused it."""

    seq: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    event_id: models.CharField[str, str] = models.CharField(max_length=64, unique=True)
    saga_id: models.CharField[str, str] = models.CharField(max_length=64)
    event_type: models.CharField[str, str] = models.CharField(max_length=200)
    payload: models.TextField[str, str] = models.TextField(help_text="JSON")
    correlation_id: models.CharField[str | None, str | None] = models.CharField(
        max_length=128, null=True, blank=True
    )
    created_at: models.FloatField[float, float] = models.FloatField()
    status: models.CharField[str, str] = models.CharField(max_length=8, default="PENDING")
    attempts: models.IntegerField[int, int] = models.IntegerField(default=0)
    last_error: models.TextField[str | None, str | None] = models.TextField(null=True, blank=True)
    next_attempt_at: models.FloatField[float, float] = models.FloatField(default=0.0)
    sent_at: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )
    claimed_until: models.FloatField[float | None, float | None] = models.FloatField(
        null=True, blank=True
    )

    class Meta:
        db_table = "sagaz_outbox"
        verbose_name = "outbox message"
        ordering = ("seq",)
        indexes = [
            models.Index(fields=["status", "seq"], name="sagaz_outbox_status"),
            models.Index(fields=["saga_id", "status", "seq"], name="sagaz_outbox_saga"),
        ]

    def __str__(self) -> str:
        return f"{self.seq} {self.event_type} ({self.status})"


class InboxEntry(models.Model):
    """A consumer's record that it processed an event (duplicates are dropped)."""

    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    consumer: models.CharField[str, str] = models.CharField(max_length=200)
    event_id: models.CharField[str, str] = models.CharField(max_length=64)
    processed_at: models.FloatField[float, float] = models.FloatField()

    class Meta:
        db_table = "sagaz_inbox"
        verbose_name = "inbox entry"
        verbose_name_plural = "inbox"
        constraints = [
            models.UniqueConstraint(fields=["consumer", "event_id"], name="sagaz_inbox_unique")
        ]

    def __str__(self) -> str:
        return f"{self.consumer}: {self.event_id}"
