"""The outcome of running a saga."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sagaz.core.records import SagaRecord
from sagaz.core.status import SagaStatus

__all__ = ["SagaResult"]


@dataclass(slots=True)
class SagaResult:
    """What ``await saga.run(...)`` returns; a business failure is a result, not a raise.

    ``error`` is ``"ExceptionType: message"`` (both errors, ``;``-separated, when a
    compensation failed too) and ``exception`` the exception itself when it happened
    in this process. ``timings`` maps each step run here to its seconds, plus
    ``"total"``. ``created`` is False when an idempotency key matched an existing
    saga: then nothing ran and the result describes that saga as recorded.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: dict[str, Any]
    completed_steps: list[str] = field(default_factory=list)
    compensated_steps: list[str] = field(default_factory=list)
    failed_step: str | None = None
    error: str | None = None
    exception: BaseException | None = None
    timings: dict[str, float] = field(default_factory=dict)
    correlation_id: str | None = None
    created: bool = True

    @property
    def succeeded(self) -> bool:
        """True when the saga COMPLETED."""
        return self.status is SagaStatus.COMPLETED

    @classmethod
    def from_record(cls, record: SagaRecord, *, created: bool = True) -> SagaResult:
        """The result as storage recorded it (for duplicates and finished sagas)."""
        return cls(
            saga_id=record.saga_id,
            saga_name=record.saga_name,
            status=record.status,
            context=dict(record.context),
            completed_steps=record.completed_steps,
            compensated_steps=record.compensated_steps,
            failed_step=record.failed_step,
            error=record.error,
            correlation_id=record.correlation_id,
            created=created,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the exception is rendered into ``error``)."""
        return {
            "saga_id": self.saga_id,
            "saga_name": self.saga_name,
            "state": self.status.value,
            "context": self.context,
            "completed_steps": list(self.completed_steps),
            "compensated_steps": list(self.compensated_steps),
            "failed_step": self.failed_step,
            "error": self.error,
            "timings": dict(self.timings),
            "correlation_id": self.correlation_id,
        }
