"""Observability for Sagaz: structured logs, OpenTelemetry traces, Prometheus metrics.

Everything here is opt-in and never configures the host application's logging,
tracing or metrics. Importing this package imports neither OpenTelemetry nor
prometheus-client; the listeners do when they are created (install
``sagaz-core[otel]`` / ``sagaz-core[prometheus]``)::

    from sagaz.core import SagaConfig
    from sagaz.core.observability import (
        LoggingListener, OpenTelemetryListener, PrometheusListener,
    )

    config = SagaConfig(listeners=[
        LoggingListener(step_level=logging.DEBUG),  # one INFO line per saga transition
        OpenTelemetryListener(),                    # spans per saga, step, compensation
        PrometheusListener(registry),               # counters and histograms
    ])

- Logs: :class:`~sagaz.core.LoggingListener` (one line per transition),
  :class:`SagaLogFilter` (saga fields on every record of a handler),
  :class:`SagaLogAdapter` (for step code), :class:`CorrelationIdFilter` (the
  request's correlation id on every record, in any web framework).
- Traces: :class:`OpenTelemetryListener` (:mod:`sagaz.core.observability.otel`);
  the trace context a saga was started in is stored with it
  (:func:`current_trace_context`), so a worker resuming it continues the trace.
- Metrics: :class:`PrometheusListener`, :func:`collect_storage_metrics`,
  :func:`render_metrics` (:mod:`sagaz.core.observability.prometheus`).
"""

from __future__ import annotations

from sagaz.core.listeners import LoggingListener
from sagaz.core.observability.logs import (
    SAGA_LOG_FIELDS,
    CorrelationIdFilter,
    SagaLogAdapter,
    SagaLogFilter,
    saga_log_fields,
)
from sagaz.core.observability.otel import OpenTelemetryListener
from sagaz.core.observability.prometheus import (
    MetricsEndpoint,
    PrometheusListener,
    SagazMetrics,
    StorageMetrics,
    collect_storage_metrics,
    render_metrics,
)
from sagaz.core.observability.tracecontext import context_from_carrier, current_trace_context

__all__ = [
    "SAGA_LOG_FIELDS",
    "CorrelationIdFilter",
    "LoggingListener",
    "MetricsEndpoint",
    "OpenTelemetryListener",
    "PrometheusListener",
    "SagaLogAdapter",
    "SagaLogFilter",
    "SagazMetrics",
    "StorageMetrics",
    "collect_storage_metrics",
    "context_from_carrier",
    "current_trace_context",
    "render_metrics",
    "saga_log_fields",
]
