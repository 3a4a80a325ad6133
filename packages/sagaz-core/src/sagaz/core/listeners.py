"""Listeners: hooks on saga and step events for logging, metrics and tracing.

Subclass :class:`SagaListener` and override the methods you need (plain or
``async def``). A listener that raises is logged and never breaks a saga.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
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
    #: The W3C trace context the saga was started in (``traceparent``,
    #: ``tracestate``), as stored with it; None when none was captured.
    trace_context: Mapping[str, str] | None = None


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
            if outcome is not None and inspect.isawaitable(outcome):
                await outcome
        except Exception:
            logger.exception(
                "sagaz listener %r failed in %s for saga %s; the saga goes on",
                listener,
                method,
                event.saga_id,
            )


class LoggingListener(SagaListener):
    """Logs one line per saga and step transition on the ``sagaz.events`` logger.

    Every record carries these attributes (for JSON and other structured formatters):
    ``saga_id``, ``saga_name``, ``step``, ``attempt``, ``correlation_id`` (the five
    every ``sagaz`` record may carry, see
    :class:`~sagaz.core.observability.SagaLogFilter`) and ``saga_event`` (e.g.
    ``"saga.started"``, ``"step.failed"``), ``saga_status`` (the saga's status after a
    saga transition, else None), ``duration`` (seconds, for finished steps and
    compensations) and ``error`` (``"ExceptionType: message"`` or None).

    Levels: ``level`` (INFO) for saga starts and completions, ``step_level`` (default:
    ``level``) for step and compensation starts and completions, WARNING for failed
    step attempts and compensated sagas, ERROR for failed compensations and FAILED
    sagas. ``LoggingListener(step_level=logging.DEBUG)`` gives one INFO line per saga
    transition and keeps step lines for debugging. Nothing is logged unless the host
    application configures handlers (Sagaz never calls ``logging.basicConfig``).
    """

    def __init__(
        self,
        level: int = logging.INFO,
        logger_name: str = "sagaz.events",
        *,
        step_level: int | None = None,
    ) -> None:
        self.level = level
        self.step_level = level if step_level is None else step_level
        self.logger = logging.getLogger(logger_name)

    def _log(
        self,
        what: str,
        event: SagaListenerEvent,
        lvl: int,
        kind: str,
        status: SagaStatus | None = None,
    ) -> None:
        if not self.logger.isEnabledFor(lvl):
            return
        saga_status = event.status if event.status is not None else status
        where = f" step {event.step} attempt {event.attempt}" if event.step else ""
        error_text = None
        if event.error is not None:
            text = str(event.error)
            error_text = (
                f"{type(event.error).__name__}: {text}" if text else type(event.error).__name__
            )
        self.logger.log(
            lvl,
            "saga %s (%s)%s %s%s",
            event.saga_name,
            event.saga_id,
            where,
            what,
            f": {error_text}" if error_text else "",
            extra={
                "saga_id": event.saga_id,
                "saga_name": event.saga_name,
                "step": event.step,
                "attempt": event.attempt,
                "correlation_id": event.correlation_id,
                "saga_event": kind,
                "saga_status": None if saga_status is None else saga_status.value,
                "duration": event.duration,
                "error": error_text,
            },
        )

    def on_saga_started(self, event: SagaListenerEvent) -> None:
        """Log the start."""
        self._log("started", event, self.level, "saga.started", SagaStatus.RUNNING)

    def on_saga_completed(self, event: SagaListenerEvent) -> None:
        """Log the completion."""
        self._log("completed", event, self.level, "saga.completed")

    def on_saga_compensating(self, event: SagaListenerEvent) -> None:
        """Log the start of compensation (``step`` names the step that failed)."""
        self._log("compensating", event, logging.WARNING, "saga.compensating")

    def on_saga_compensated(self, event: SagaListenerEvent) -> None:
        """Log the end of compensation."""
        self._log("compensated", event, logging.WARNING, "saga.compensated")

    def on_saga_failed(self, event: SagaListenerEvent) -> None:
        """Log a saga that needs intervention."""
        self._log("FAILED (needs intervention)", event, logging.ERROR, "saga.failed")

    def on_step_started(self, event: SagaListenerEvent) -> None:
        """Log a step attempt."""
        self._log("started", event, self.step_level, "step.started")

    def on_step_completed(self, event: SagaListenerEvent) -> None:
        """Log a completed step."""
        self._log("completed", event, self.step_level, "step.completed")

    def on_step_failed(self, event: SagaListenerEvent) -> None:
        """Log a failed step attempt."""
        self._log("failed", event, logging.WARNING, "step.failed")

    def on_compensation_started(self, event: SagaListenerEvent) -> None:
        """Log a compensation attempt."""
        self._log("compensation started", event, self.step_level, "compensation.started")

    def on_compensation_completed(self, event: SagaListenerEvent) -> None:
        """Log a completed compensation."""
        self._log("compensated", event, self.step_level, "compensation.completed")

    def on_compensation_failed(self, event: SagaListenerEvent) -> None:
        """Log a failed compensation attempt."""
        self._log("compensation failed", event, logging.ERROR, "compensation.failed")
