"""Observability through the Django plugin: for a completed and a compensated saga
started by a webhook (sync view, as under WSGI), the spans (names, parents,
attributes), the metrics served by ``sagaz.integrations.django.metrics``, the saga
attributes on log records, and the trace context stored by ``atomic_saga_start``.

The HTTP request's span is opened by a middleware of the test, as OpenTelemetry's
Django instrumentation does (a SERVER span current while the view runs)."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import include, path
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from sagaz_django_helpers import wait_finished, wait_until

from sagaz.core import ConfigurationError, LoggingListener
from sagaz.core.observability import SAGA_LOG_FIELDS, OpenTelemetryListener, SagaLogFilter
from sagaz.integrations.django import runtime
from sagaz.integrations.django.models import SagaInstance

pytestmark = pytest.mark.django_db(transaction=True)

SAGA = "order"
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
#: correlation id -> span id of the request that carried it
REQUEST_SPANS: dict[str, int] = {}


def traced_middleware(get_response: Callable[[HttpRequest], HttpResponse]) -> Any:
    """A SERVER span around each request, current while the view runs."""
    tracer = PROVIDER.get_tracer("test.django")

    def middleware(request: HttpRequest) -> HttpResponse:
        with tracer.start_as_current_span(
            f"{request.method} {request.path}", kind=SpanKind.SERVER
        ) as span:
            cid = request.headers.get("X-Correlation-ID")
            if cid:
                REQUEST_SPANS[cid] = span.get_span_context().span_id
            return get_response(request)

    return middleware


urlpatterns = [
    path("sagaz/", include("sagaz.integrations.django.urls")),
    path("", include("sagaz.integrations.django.metrics")),
]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(SagaLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def observed(settings: Any) -> Iterator[list[logging.LogRecord]]:
    settings.ROOT_URLCONF = sys.modules[__name__]
    settings.MIDDLEWARE = [f"{__name__}.traced_middleware", *settings.MIDDLEWARE]
    listeners = [OpenTelemetryListener(PROVIDER), LoggingListener()]
    config = runtime.get_config()
    config.listeners.extend(listeners)
    handler = Records()
    logger = logging.getLogger("sagaz")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    EXPORTER.clear()
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for listener in listeners:
            config.listeners.remove(listener)


def post(client: Client, order_id: str, amount: int, cid: str) -> str:
    response = client.post(
        "/sagaz/order_created",
        data=json.dumps({"order_id": order_id, "amount": amount}),
        content_type="application/json",
        headers={"X-Correlation-ID": cid},
    )
    assert response.status_code == 202, response.content
    (saga_id,) = response.json()["saga_ids"]
    assert isinstance(saga_id, str)
    return saga_id


def scrape(text: str) -> dict[str, list[Any]]:
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            samples.setdefault(item.name, []).append(item)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    return float(found[0]) if found else 0.0


def saga_spans(saga_id: str) -> dict[str, ReadableSpan]:
    def finished() -> dict[str, ReadableSpan] | None:
        spans = {
            s.name: s
            for s in EXPORTER.get_finished_spans()
            if (s.attributes or {}).get("sagaz.saga_id") == saga_id
        }
        return spans if f"saga {SAGA}" in spans else None

    wait_until(lambda: finished() is not None, 20.0, f"the span of saga {saga_id}")
    spans = finished()
    assert spans is not None
    return spans


def test_completed_and_compensated_sagas_are_observable(
    observed: list[logging.LogRecord], client: Client
) -> None:
    before_response = client.get("/metrics")
    assert before_response.status_code == 200
    before = scrape(before_response.content.decode())
    ok_id = post(client, f"ok-{uuid.uuid4()}", 10, "dj-ok")
    bad_id = post(client, f"bad-{uuid.uuid4()}", 2000, "dj-bad")
    assert wait_finished(ok_id, bad_id) == {ok_id: "COMPLETED", bad_id: "COMPENSATED"}

    # -- spans
    for saga_id, cid, status in ((ok_id, "dj-ok", "COMPLETED"), (bad_id, "dj-bad", "COMPENSATED")):
        spans = saga_spans(saga_id)
        saga = spans[f"saga {SAGA}"]
        assert saga.parent is not None
        assert saga.parent.span_id == REQUEST_SPANS[cid]
        assert saga.context is not None
        assert dict(saga.attributes or {}) == {
            "sagaz.saga_id": saga_id,
            "sagaz.saga_name": SAGA,
            "sagaz.correlation_id": cid,
            "sagaz.status": status,
        }
        for name, span in spans.items():
            assert span.context is not None
            assert span.context.trace_id == saga.context.trace_id
            if span is not saga:
                assert span.parent is not None
                assert span.parent.span_id == saga.context.span_id
                assert (span.attributes or {})["sagaz.step"] == name.split()[-1]
        if status == "COMPLETED":
            assert set(spans) == {f"saga {SAGA}", "saga.step reserve", "saga.step charge",
                                  "saga.step ship"}  # fmt: skip
            assert saga.status.status_code is StatusCode.UNSET
        else:
            assert set(spans) == {
                f"saga {SAGA}",
                "saga.step reserve",
                "saga.step charge",
                "saga.compensate reserve",
            }
            assert saga.status.status_code is StatusCode.ERROR
        # The trace context is stored with the saga (a worker would continue it).
        row = SagaInstance.objects.get(saga_id=saga_id)
        assert row.trace_context is not None
        assert json.loads(row.trace_context)["traceparent"].split("-")[1] == (
            f"{saga.context.trace_id:032x}"
        )

    # -- metrics (the global registry: compare with the scrape before)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    after = scrape(response.content.decode())

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("sagaz_sagas_total", saga=SAGA, status="completed") == 1
    assert delta("sagaz_sagas_total", saga=SAGA, status="compensated") == 1
    assert delta("sagaz_steps_total", saga=SAGA, step="charge", outcome="failed") == 1
    assert delta("sagaz_steps_total", saga=SAGA, step="reserve", outcome="completed") == 2
    assert delta("sagaz_compensations_total", saga=SAGA, step="reserve", outcome="completed") == 1
    assert value(after, "sagaz_sagas_in_flight", saga=SAGA) == 0
    assert "sagaz_outbox_events" in after
    assert value(after, "sagaz_sagas_unfinished", status="running") == 0
    assert "sagaz_saga_leases_expired" in after

    # -- logs
    events = [
        r for r in observed if r.name == "sagaz.events" and getattr(r, "saga_id", "") == bad_id
    ]
    kinds = [r.saga_event for r in events]
    assert kinds[0] == "saga.started"
    assert kinds[-1] == "saga.compensated"
    failed = events[kinds.index("step.failed")]
    assert {f: getattr(failed, f) for f in SAGA_LOG_FIELDS} == {
        "saga_id": bad_id,
        "saga_name": SAGA,
        "step": "charge",
        "attempt": 1,
        "correlation_id": "dj-bad",
    }


async def test_the_async_metrics_view(observed: list[logging.LogRecord]) -> None:
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert b"sagaz_sagas_total" in response.content
    refused = await AsyncClient().post("/metrics")
    assert refused.status_code == 405


def test_atomic_saga_start_stores_the_request_trace() -> None:
    from sagaz_django_testproject.shop.sagas import OrderSaga

    from sagaz.integrations.django import atomic_saga_start

    with PROVIDER.get_tracer("t").start_as_current_span("view") as span, transaction.atomic():
        saga_id = atomic_saga_start(OrderSaga, {"order_id": f"atomic-{uuid.uuid4()}", "amount": 1})
    row = SagaInstance.objects.get(saga_id=saga_id)
    assert row.trace_context is not None
    carrier = json.loads(row.trace_context)
    ctx = span.get_span_context()
    assert carrier["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert wait_finished(saga_id)[saga_id] == "COMPLETED"  # run after the commit


def test_without_prometheus_client_the_urls_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import sagaz.integrations.django.metrics as metrics_module

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[prometheus\]'"):
        importlib.reload(metrics_module)
