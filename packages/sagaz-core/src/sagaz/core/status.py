"""Status enums shared by the engine, storage and every API."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["TERMINAL_STATUSES", "SagaStatus", "StepStatus"]


class SagaStatus(StrEnum):
    """Lifecycle of one saga execution.

    ``PENDING`` is recorded but not yet running; ``RUNNING`` is executing steps;
    ``COMPENSATING`` is undoing completed steps after a failure; ``COMPLETED``,
    ``COMPENSATED`` (rolled back cleanly) and ``FAILED`` (a compensation failed, or the
    saga could not be rolled back: needs intervention) are terminal.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, COMPENSATED and FAILED."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(StrEnum):
    """Lifecycle of one step inside a saga execution."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"
