"""OpenTelemetry tracing: one span per saga run, per step attempt and per compensation.

Needs ``opentelemetry-api`` (``pip install 'sagaz-core[otel]'``); the SDK and exporters
are the application's choice. Importing this module never imports OpenTelemetry:
:class:`OpenTelemetryListener` does, when it is created.

::

    from sagaz.core import SagaConfig
    from sagaz.core.observability import OpenTelemetryListener

    config = SagaConfig(listeners=[OpenTelemetryListener()])

Spans (kind INTERNAL, tracer ``sagaz.core``):

- ``saga <name>``: from the start (or resumption) of a run to its end. Its parent is
  the span that was current when the saga was recorded (a web request's span, say):
  the core stores that W3C trace context with the saga
  (:mod:`sagaz.core.observability.tracecontext`), so a worker resuming the saga in
  another process continues the same trace. Without a stored context, the span
  current when the run starts is the parent.
- ``saga.step <step>``: one per attempt, child of the saga span. While the step runs,
  its span is the current span, so spans the step's own code creates (HTTP calls,
  database queries) nest under it.
- ``saga.compensate <step>``: one per compensation attempt, child of the saga span.

Attributes: ``sagaz.saga_id``, ``sagaz.saga_name``, ``sagaz.correlation_id`` (when
set), ``sagaz.step`` and ``sagaz.attempt`` (step spans) and ``sagaz.status`` at the
end (a :class:`~sagaz.core.SagaStatus` or :class:`~sagaz.core.StepStatus` value).
Failed attempts carry an exception event and status ERROR; a compensated or failed
saga has status ERROR with the failure as description; success leaves the status
UNSET, as the OpenTelemetry specification asks of instrumentation libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sagaz.core._version import __version__
from sagaz.core.errors import ConfigurationError
from sagaz.core.listeners import SagaListener, SagaListenerEvent
from sagaz.core.observability._tracking import RunTracker
from sagaz.core.observability.tracecontext import context_from_carrier, current_trace_context
from sagaz.core.status import SagaStatus, StepStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["TRACE_CONTEXT_KEY", "OpenTelemetryListener"]

#: Where the core keeps a saga's W3C trace context (``traceparent``, ``tracestate``):
#: ``NewSaga.trace_context`` / ``SagaRecord.trace_context``, passed to listeners as
#: ``SagaListenerEvent.trace_context``.
TRACE_CONTEXT_KEY = "trace_context"

_INSTALL = "pip install 'sagaz-core[otel]'"
_SUCCESS = frozenset({StepStatus.COMPLETED.value, StepStatus.COMPENSATED.value})


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Open:
    """A step or compensation span and how to restore the context it replaced."""

    span: Span
    restore: Context | None


@dataclass(slots=True)
class _SagaTrace:
    span: Span | None
    context: Context | None
    steps: dict[str, _Open] = field(default_factory=dict)
    compensations: dict[str, _Open] = field(default_factory=dict)
    failed_step: str | None = None
    error: BaseException | None = None
    compensating: bool = False


class OpenTelemetryListener(SagaListener):
    """Creates OpenTelemetry spans for sagas, step attempts and compensations.

    ``tracer_provider`` (default: the global one, also when it is set later) or an
    explicit ``tracer``. ``activate_step_spans`` (default True) makes each step's span
    the current span while the step runs, so the step's own instrumented calls nest
    under it. ``max_sagas`` bounds the runs tracked at once (memory safety).

    Raises :class:`~sagaz.core.ConfigurationError` when ``opentelemetry-api`` is not
    installed.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        tracer: Tracer | None = None,
        activate_step_spans: bool = True,
        max_sagas: int = 100_000,
    ) -> None:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import trace
        except ImportError as exc:
            raise ConfigurationError(
                f"OpenTelemetryListener needs opentelemetry-api: {_INSTALL}"
            ) from exc
        self._tracer = tracer or trace.get_tracer(
            "sagaz.core", __version__, tracer_provider=tracer_provider
        )
        self.activate_step_spans = activate_step_spans
        self._kind = trace.SpanKind.INTERNAL
        self._set_span_in_context = trace.set_span_in_context
        self._get_current_span = trace.get_current_span
        self._error_status = trace.StatusCode.ERROR
        self._status = trace.Status
        self._get_current = otel_context.get_current
        self._attach = otel_context.attach
        self._runs: RunTracker[_SagaTrace] = RunTracker(self._abandoned, max_sagas)

    # -- trace context across processes --------------------------------------------

    def capture_trace_context(self) -> dict[str, str]:
        """The current trace context as a W3C carrier (``traceparent``, ``tracestate``).

        What the core stores with a saga when it is recorded (see
        :func:`~sagaz.core.observability.current_trace_context`), so that whichever
        process runs or resumes the saga continues the caller's trace. Empty when no
        span is current.
        """
        return current_trace_context() or {}

    @staticmethod
    def _parent(event: SagaListenerEvent) -> Context | None:
        carrier: Mapping[str, str] | None = getattr(event, TRACE_CONTEXT_KEY, None)
        return context_from_carrier(carrier)  # None: the current context

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _attributes(event: SagaListenerEvent) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "sagaz.saga_id": event.saga_id,
            "sagaz.saga_name": event.saga_name,
        }
        if event.correlation_id is not None:
            attributes["sagaz.correlation_id"] = event.correlation_id
        if event.step is not None:
            attributes["sagaz.step"] = event.step
            attributes["sagaz.attempt"] = event.attempt
        return attributes

    def _open(self, name: str, event: SagaListenerEvent, compensation: bool) -> None:
        run = self._runs.get(event.saga_id)
        if run is None:  # the saga started before this listener saw it
            run = _SagaTrace(None, None)
            self._runs.start(event.saga_id, run)
        span = self._tracer.start_span(
            name, context=run.context, kind=self._kind, attributes=self._attributes(event)
        )
        restore = None
        if self.activate_step_spans:
            restore = self._get_current()
            self._attach(self._set_span_in_context(span, restore))
        opened = run.compensations if compensation else run.steps
        key = event.step or ""
        previous = opened.get(key)
        if previous is not None:  # pragma: no cover - a step never overlaps itself
            self._close(previous, StepStatus.CANCELLED.value, None)
        opened[key] = _Open(span, restore)

    def _close(self, opened: _Open, status: str, error: BaseException | None) -> None:
        # Put back the context the span replaced, where it is still current: in the
        # task that ran the step (not in another task, e.g. after a parallel step was
        # cancelled, nor in a context the step's own code changed).
        if opened.restore is not None and self._get_current_span() is opened.span:
            self._attach(opened.restore)
        span = opened.span
        span.set_attribute("sagaz.status", status)
        if error is not None:
            span.record_exception(error)
        if status not in _SUCCESS:
            description = _describe(error) if error is not None else status.lower()
            span.set_status(self._status(self._error_status, description))
        span.end()

    def _finish(
        self,
        event: SagaListenerEvent,
        compensation: bool,
        status: StepStatus,
        error: BaseException | None = None,
    ) -> None:
        run = self._runs.get(event.saga_id)
        if run is None:
            return
        opened = (run.compensations if compensation else run.steps).pop(event.step or "", None)
        if opened is not None:
            self._close(opened, status.value, error)

    def _close_all(self, run: _SagaTrace) -> None:
        for opened in (run.steps, run.compensations):
            for item in opened.values():
                self._close(item, StepStatus.CANCELLED.value, None)
            opened.clear()

    def _end_saga(self, event: SagaListenerEvent, status: SagaStatus) -> None:
        run = self._runs.finish(event.saga_id)
        if run is None:
            return
        self._close_all(run)
        span = run.span
        if span is None:
            return
        span.set_attribute("sagaz.status", status.value)
        if status is SagaStatus.COMPENSATED:
            span.set_status(
                self._status(
                    self._error_status,
                    f"compensated after step {run.failed_step!r} failed: {_describe(run.error)}",
                )
            )
        elif status is SagaStatus.FAILED:
            span.set_status(
                self._status(
                    self._error_status,
                    f"FAILED: step {run.failed_step!r} failed ({_describe(run.error)}) and a "
                    "compensation failed; the saga needs intervention",
                )
            )
        span.end()

    def _abandoned(self, saga_id: str, run: _SagaTrace) -> None:
        self._close_all(run)
        span = run.span
        if span is None:
            return
        status = SagaStatus.COMPENSATING if run.compensating else SagaStatus.RUNNING
        span.set_attribute("sagaz.status", status.value)
        span.set_attribute("sagaz.interrupted", True)
        span.set_status(
            self._status(
                self._error_status,
                "the run stopped before the saga finished (lease lost, worker stopped or "
                "cancelled); it resumes from storage",
            )
        )
        span.end()

    # -- saga events -----------------------------------------------------------------

    def on_saga_started(self, event: SagaListenerEvent) -> None:
        """Start the saga span (child of the current span or the recorded trace)."""
        parent = self._parent(event)
        span = self._tracer.start_span(
            f"saga {event.saga_name}",
            context=parent,
            kind=self._kind,
            attributes=self._attributes(event),
        )
        self._runs.start(event.saga_id, _SagaTrace(span, self._set_span_in_context(span, parent)))

    def on_saga_compensating(self, event: SagaListenerEvent) -> None:
        """Note the failure on the saga span; end spans of steps that were cancelled."""
        run = self._runs.get(event.saga_id)
        if run is None:
            return
        run.compensating = True
        run.failed_step = event.step
        run.error = event.error
        for item in run.steps.values():
            self._close(item, StepStatus.CANCELLED.value, None)
        run.steps.clear()
        if run.span is not None:
            attributes: dict[str, str] = {"sagaz.status": SagaStatus.COMPENSATING.value}
            if event.step is not None:
                attributes["sagaz.step"] = event.step
            if event.error is not None:
                attributes["exception.type"] = type(event.error).__qualname__
                attributes["exception.message"] = str(event.error)
            run.span.add_event("sagaz.compensating", attributes)

    def on_saga_completed(self, event: SagaListenerEvent) -> None:
        """End the saga span (status UNSET: success)."""
        self._end_saga(event, SagaStatus.COMPLETED)

    def on_saga_compensated(self, event: SagaListenerEvent) -> None:
        """End the saga span with status ERROR (rolled back)."""
        self._end_saga(event, SagaStatus.COMPENSATED)

    def on_saga_failed(self, event: SagaListenerEvent) -> None:
        """End the saga span with status ERROR (needs intervention)."""
        self._end_saga(event, SagaStatus.FAILED)

    def on_saga_interrupted(self, event: SagaListenerEvent) -> None:
        """End the spans of a run that stopped without finishing (for engines that
        report it; otherwise the end of the run's task does the same)."""
        self._runs.abandon(event.saga_id)

    # -- step events -----------------------------------------------------------------

    def on_step_started(self, event: SagaListenerEvent) -> None:
        """Start a ``saga.step`` span for the attempt and make it current."""
        self._open(f"saga.step {event.step}", event, compensation=False)

    def on_step_completed(self, event: SagaListenerEvent) -> None:
        """End the attempt's span."""
        self._finish(event, False, StepStatus.COMPLETED)

    def on_step_failed(self, event: SagaListenerEvent) -> None:
        """End the attempt's span with the exception and status ERROR."""
        self._finish(event, False, StepStatus.FAILED, event.error)

    def on_compensation_started(self, event: SagaListenerEvent) -> None:
        """Start a ``saga.compensate`` span for the attempt and make it current."""
        self._open(f"saga.compensate {event.step}", event, compensation=True)

    def on_compensation_completed(self, event: SagaListenerEvent) -> None:
        """End the compensation attempt's span."""
        self._finish(event, True, StepStatus.COMPENSATED)

    def on_compensation_failed(self, event: SagaListenerEvent) -> None:
        """End the compensation attempt's span with the exception and status ERROR."""
        self._finish(event, True, StepStatus.COMPENSATION_FAILED, event.error)
