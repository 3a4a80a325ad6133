"""Listeners: hooks on saga and step events for logging, metrics and tracing.

Subclass :class:`SagaListener` and override the methods you need (plain or
``async def``). A listener that raises is logged and never breaks a saga.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sagaz.core.status import SagaStatus

__all__ = ["LoggingListener", "SagaListener", "SagaListenerEvent", "notify_listeners"]

logger = logging.getLogger("sagaz.listeners")


@dataclass(frozen=True, slots=True)
class SagaListenerEvent:
    """What a listener is told: which saga, which step and attempt, and what happened."""

    saga_id: str
    saga_name: str
    correlation_id: str | None = None
    step: str | None = None
    attempt: int = 0
    status: SagaStatus | None = None
    error: BaseException | None = None
    duration: float | None = None


class SagaListener:
    """Base class with a no-op method per event; override what you need.

    Saga events: ``on_saga_started``, ``on_saga_completed``, ``on_saga_compensating``,
    ``on_saga_compensated``, ``on_saga_failed``. Step events: ``on_step_started``,
    ``on_step_completed``, ``on_step_failed`` (``error`` set; called for every failed
    attempt), ``on_compensation_started``, ``on_compensation_completed``,
    ``on_compensation_failed``.
    """

    def on_saga_started(self, event: SagaListenerEvent) -> object:
        """A saga started (or resumed)."""

    def on_saga_completed(self, event: SagaListenerEvent) -> object:
        """Every step completed."""

    def on_saga_compensating(self, event: SagaListenerEvent) -> object:
        """A step failed for good; compensation begins."""

    def on_saga_compensated(self, event: SagaListenerEvent) -> object:
        """Every completed step was compensated."""

    def on_saga_failed(self, event: SagaListenerEvent) -> object:
        """The saga could not be rolled back cleanly and needs intervention."""

    def on_step_started(self, event: SagaListenerEvent) -> object:
        """An attempt of a step started."""

    def on_step_completed(self, event: SagaListenerEvent) -> object:
        """A step completed."""

    def on_step_failed(self, event: SagaListenerEvent) -> object:
        """An attempt of a step failed (it may be retried)."""

    def on_compensation_started(self, event: SagaListenerEvent) -> object:
        """An attempt of a compensation started."""

    def on_compensation_completed(self, event: SagaListenerEvent) -> object:
        """A compensation completed."""

    def on_compensation_failed(self, event: SagaListenerEvent) -> object:
        """An attempt of a compensation failed (it may be retried)."""


async def notify_listeners(
    listeners: Sequence[SagaListener], method: str, event: SagaListenerEvent
) -> None:
    """Call ``method`` on every listener; await coroutines; log and swallow failures."""
    for listener in listeners:
        try:
            outcome = getattr(listener, method)(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception(
                "sagaz listener %r failed in %s for saga %s; the saga goes on",
                listener,
                method,
                event.saga_id,
            )


class LoggingListener(SagaListener):
    """Logs one line per transition on the ``sagaz.events`` logger.

    The record carries ``saga_id``, ``saga_name``, ``step``, ``attempt`` and
    ``correlation_id`` as attributes for structured formatters.
    """

    def __init__(self, level: int = logging.INFO, logger_name: str = "sagaz.events") -> None:
        self.level = level
        self.logger = logging.getLogger(logger_name)

    def _log(self, what: str, event: SagaListenerEvent, level: int | None = None) -> None:
        lvl = self.level if level is None else level
        if not self.logger.isEnabledFor(lvl):
            return
        where = f" step {event.step} attempt {event.attempt}" if event.step else ""
        error = f": {type(event.error).__name__}: {event.error}" if event.error else ""
        self.logger.log(
            lvl,
            "saga %s (%s)%s %s%s",
            event.saga_name,
            event.saga_id,
            where,
            what,
            error,
            extra={
                "saga_id": event.saga_id,
                "saga_name": event.saga_name,
                "step": event.step,
                "attempt": event.attempt,
                "correlation_id": event.correlation_id,
            },
        )

    def on_saga_started(self, event: SagaListenerEvent) -> None:
        """Log the start."""
        self._log("started", event)

    def on_saga_completed(self, event: SagaListenerEvent) -> None:
        """Log the completion."""
        self._log("completed", event)

    def on_saga_compensating(self, event: SagaListenerEvent) -> None:
        """Log the start of compensation."""
        self._log("compensating", event, logging.WARNING)

    def on_saga_compensated(self, event: SagaListenerEvent) -> None:
        """Log the end of compensation."""
        self._log("compensated", event, logging.WARNING)

    def on_saga_failed(self, event: SagaListenerEvent) -> None:
        """Log a saga that needs intervention."""
        self._log("FAILED (needs intervention)", event, logging.ERROR)

    def on_step_started(self, event: SagaListenerEvent) -> None:
        """Log a step attempt."""
        self._log("started", event)

    def on_step_completed(self, event: SagaListenerEvent) -> None:
        """Log a completed step."""
        self._log("completed", event)

    def on_step_failed(self, event: SagaListenerEvent) -> None:
        """Log a failed step attempt."""
        self._log("failed", event, logging.WARNING)

    def on_compensation_started(self, event: SagaListenerEvent) -> None:
        """Log a compensation attempt."""
        self._log("compensation started", event)

    def on_compensation_completed(self, event: SagaListenerEvent) -> None:
        """Log a completed compensation."""
        self._log("compensated", event)

    def on_compensation_failed(self, event: SagaListenerEvent) -> None:
        """Log a failed compensation attempt."""
        self._log("compensation failed", event, logging.ERROR)
