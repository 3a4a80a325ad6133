"""Observability through the Flask plugin: for a completed and a compensated saga
started by a webhook, the spans (names, parents, attributes), the metrics served on
``/metrics`` and the saga attributes on log records.

The HTTP request's span is opened by a small WSGI wrapper, as OpenTelemetry's WSGI/Flask
instrumentation does (a SERVER span made current while the app handles the request);
the saga runs on the plugin's background loop, in another thread."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sagaz_flask_helpers import sagaz_of, wait_for, wait_terminal

from sagaz.core import ConfigurationError, LoggingListener
from sagaz.core.observability import SAGA_LOG_FIELDS, OpenTelemetryListener, SagaLogFilter

SAGA = "flask-example-order"
STEPS = ("reserve_inventory", "charge_payment", "ship_order")


class TracedWSGI:
    """Opens a SERVER span around each request, current while the app handles it."""

    def __init__(self, app: Callable[..., Iterable[bytes]], provider: TracerProvider) -> None:
        self.app = app
        self.tracer = provider.get_tracer("test.wsgi")
        self.request_spans: dict[str, int] = {}  # correlation id -> span id

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        name = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER) as span:
            cid = environ.get("HTTP_X_CORRELATION_ID")
            if cid:
                self.request_spans[cid] = span.get_span_context().span_id
            return list(self.app(environ, start_response))


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(SagaLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    logger = logging.getLogger("sagaz")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def start(client: Any, order_id: str, amount: int, cid: str) -> str:
    response = client.post(
        "/webhooks/order_created",
        json={"order_id": order_id, "amount": amount},
        headers={"X-Correlation-ID": cid},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    (saga_id,) = response.get_json()["saga_ids"]
    assert isinstance(saga_id, str)
    return saga_id


def saga_spans(exporter: InMemorySpanExporter, saga_id: str) -> dict[str, ReadableSpan]:
    def finished() -> dict[str, ReadableSpan] | None:
        spans = {
            s.name: s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("sagaz.saga_id") == saga_id
        }
        return spans if f"saga {SAGA}" in spans else None

    found: dict[str, ReadableSpan] = wait_for(finished, timeout=20)
    return found


def scrape(client: Any, path: str = "/metrics") -> dict[str, list[Any]]:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for item in family.samples:
            samples.setdefault(item.name, []).append(item)
    return samples


def sample(samples: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    values = [s.value for s in samples.get(name, []) if s.labels == labels]
    return float(values[0]) if values else None


def test_completed_and_compensated_sagas_are_observable(
    make_app: Callable[..., Flask],
    provider: tuple[TracerProvider, InMemorySpanExporter],
    records: list[logging.LogRecord],
) -> None:
    tracer_provider, exporter = provider
    app = make_app(listeners=[OpenTelemetryListener(tracer_provider), LoggingListener()])
    sagaz_of(app).register_metrics_endpoint("/metrics", app=app, registry=CollectorRegistry())
    traced = TracedWSGI(app.wsgi_app, tracer_provider)
    app.wsgi_app = traced  # type: ignore[method-assign]
    client = app.test_client()

    ok_id = start(client, "f-1", 10, "cid-ok")
    bad_id = start(client, "f-2", 5000, "cid-bad")
    assert wait_terminal(client, ok_id)["state"] == "COMPLETED"
    assert wait_terminal(client, bad_id)["state"] == "COMPENSATED"

    # -- spans: the saga span is a child of the webhook request's span
    for saga_id, cid, status in (
        (ok_id, "cid-ok", "COMPLETED"),
        (bad_id, "cid-bad", "COMPENSATED"),
    ):
        spans = saga_spans(exporter, saga_id)
        saga = spans[f"saga {SAGA}"]
        assert saga.parent is not None
        assert saga.parent.span_id == traced.request_spans[cid]
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
                assert (span.attributes or {})["sagaz.attempt"] == 1
        if status == "COMPLETED":
            assert set(spans) == {f"saga {SAGA}", *(f"saga.step {s}" for s in STEPS)}
            assert saga.status.status_code is StatusCode.UNSET
        else:
            assert set(spans) == {
                f"saga {SAGA}",
                "saga.step reserve_inventory",
                "saga.step charge_payment",
                "saga.compensate reserve_inventory",
            }
            assert saga.status.status_code is StatusCode.ERROR
            assert spans["saga.step charge_payment"].status.status_code is StatusCode.ERROR

    # -- metrics
    m = scrape(client)
    assert sample(m, "sagaz_sagas_total", saga=SAGA, status="completed") == 1
    assert sample(m, "sagaz_sagas_total", saga=SAGA, status="compensated") == 1
    assert sample(m, "sagaz_sagas_in_flight", saga=SAGA) == 0
    assert sample(m, "sagaz_steps_total", saga=SAGA, step="charge_payment", outcome="failed") == 1
    assert (
        sample(m, "sagaz_steps_total", saga=SAGA, step="charge_payment", outcome="completed") == 1
    )
    assert (
        sample(m, "sagaz_steps_total", saga=SAGA, step="reserve_inventory", outcome="completed")
        == 2
    )
    assert (
        sample(
            m, "sagaz_compensations_total", saga=SAGA, step="reserve_inventory", outcome="completed"
        )
        == 1
    )
    assert sample(m, "sagaz_saga_duration_seconds_count", saga=SAGA, status="compensated") == 1
    assert sample(m, "sagaz_outbox_events", status="pending") == 0
    assert sample(m, "sagaz_outbox_oldest_pending_age_seconds") == 0
    assert sample(m, "sagaz_sagas_unfinished", status="pending") == 0
    assert sample(m, "sagaz_saga_leases_expired") == 0

    # -- logs: one line per transition with the saga fields as attributes
    events = [
        r for r in records if r.name == "sagaz.events" and getattr(r, "saga_id", "") == bad_id
    ]
    kinds = [r.saga_event for r in events]
    assert kinds[0] == "saga.started"
    assert kinds[-1] == "saga.compensated"
    failed = events[kinds.index("step.failed")]
    assert {f: getattr(failed, f) for f in SAGA_LOG_FIELDS} == {
        "saga_id": bad_id,
        "saga_name": SAGA,
        "step": "charge_payment",
        "attempt": 1,
        "correlation_id": "cid-bad",
    }


def test_the_setting_turns_the_endpoint_on(make_app: Callable[..., Flask]) -> None:
    app = make_app(metrics_endpoint="/ops/metrics")
    client = app.test_client()
    saga_id = start(client, "f-3", 1, "cid-setting")
    wait_terminal(client, saga_id)
    # The global registry: other tests may have counted too, this one added one.
    m = wait_for(lambda: (s := scrape(client, "/ops/metrics")) and s)
    assert (sample(m, "sagaz_sagas_total", saga=SAGA, status="completed") or 0) >= 1
    assert client.get("/metrics").status_code == 404


def test_bad_settings_and_a_missing_client_are_clear(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match="SAGAZ_METRICS_ENDPOINT must be"):
        make_app(metrics_endpoint="metrics")
    app = make_app()
    with pytest.raises(ValueError, match="must be a string starting with '/'"):
        sagaz_of(app).register_metrics_endpoint("metrics", app=app)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[prometheus\]'"):
        sagaz_of(app).register_metrics_endpoint(app=app, registry=None)
