"""The W3C trace context stored with a saga, so whoever runs it continues the trace.

When a saga is recorded (:meth:`sagaz.core.Saga.run`, :func:`sagaz.core.start_saga`,
:func:`sagaz.core.fire_event` and so every plugin's webhook, Django's
``atomic_saga_start``), :class:`~sagaz.core.records.NewSaga` captures
:func:`current_trace_context`: the ``traceparent`` (and ``tracestate``) of the span
current at that moment, e.g. the HTTP request's span of an instrumented web
framework. Storage keeps it with the saga (``SagaRecord.trace_context``); the engine
hands it to listeners (``SagaListenerEvent.trace_context``), and
:class:`~sagaz.core.observability.OpenTelemetryListener` makes the saga span its
child, also in a worker that resumes the saga in another process.

OpenTelemetry is optional: without ``opentelemetry-api`` installed, or without a
valid current span, nothing is captured (``None``) and nothing is imported again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["context_from_carrier", "current_trace_context"]

# (get_current, get_current_span, propagator) once OpenTelemetry was imported; False
# when it is not installed; None before the first call.
_api: tuple[Callable[..., Any], Callable[..., Any], Any] | bool | None = None


def _load() -> tuple[Callable[..., Any], Callable[..., Any], Any] | None:
    global _api
    api = _api
    if api is None:
        try:
            from opentelemetry.context import get_current
            from opentelemetry.trace import get_current_span
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            api = False
        else:
            api = (get_current, get_current_span, TraceContextTextMapPropagator())
        _api = api
    return api if isinstance(api, tuple) else None


def current_trace_context() -> dict[str, str] | None:
    """The current span's W3C trace context as a carrier dict, or None.

    ``{"traceparent": "00-<trace id>-<span id>-<flags>"}`` plus ``"tracestate"`` when
    the span has one. None when OpenTelemetry is not installed or no valid span is
    current. Cheap: one context lookup when nothing is traced.
    """
    api = _load()
    if api is None:
        return None
    get_current, get_current_span, propagator = api
    if not get_current():  # an empty context: nothing is traced here (the fast path)
        return None
    if not get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    return carrier or None


def context_from_carrier(carrier: Mapping[str, str] | None) -> Context | None:
    """The OpenTelemetry context (with a remote parent span) of a stored carrier.

    None when ``carrier`` is empty, OpenTelemetry is not installed, or the carrier
    holds no valid ``traceparent``.
    """
    if not carrier:
        return None
    api = _load()
    if api is None:
        return None
    _, get_current_span, propagator = api
    context: Context = propagator.extract(carrier)
    if not get_current_span(context).get_span_context().is_valid:
        return None
    return context
