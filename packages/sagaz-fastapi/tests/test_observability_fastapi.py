"""Observability through the FastAPI plugin: for a completed and a compensated saga
started by a webhook, the spans (names, parents, attributes), the metrics served by
``create_metrics_router`` and the saga attributes on log records.

The HTTP request's span is opened by a small ASGI wrapper, as OpenTelemetry's ASGI/FastAPI
instrumentation does (a SERVER span made current around the application call)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sagaz_fastapi_support import terminal_state, wait_until
from sagaz_fastapi_testapp import SOURCE, create_app

from sagaz.core import ConfigurationError, LoggingListener, SagaConfig
from sagaz.core.observability import SAGA_LOG_FIELDS, OpenTelemetryListener, SagaLogFilter
from sagaz.integrations.fastapi import create_metrics_router

SAGA = "fastapi-test-order"


class TracedASGI:
    """Opens a SERVER span around each HTTP request, current while the app runs."""

    def __init__(self, app: FastAPI, provider: TracerProvider) -> None:
        self.app = app
        self.tracer = provider.get_tracer("test.asgi")
        self.request_spans: dict[str, int] = {}  # correlation id -> span id

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER) as span:
            headers = dict(scope["headers"])
            cid = headers.get(b"x-correlation-id")
            if cid:
                self.request_spans[cid.decode()] = span.get_span_context().span_id
            await self.app(scope, receive, send)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(SagaLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def observed() -> Iterator[dict[str, Any]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    config = SagaConfig(listeners=[OpenTelemetryListener(provider), LoggingListener()])
    app = create_app(config)
    app.include_router(create_metrics_router(registry, config=config))
    traced = TracedASGI(app, provider)
    records = Records()
    sagaz_logger = logging.getLogger("sagaz")
    app_logger = logging.getLogger("sagaz_fastapi_testapp")
    levels = (sagaz_logger.level, app_logger.level)
    for logger in (sagaz_logger, app_logger):
        logger.addHandler(records)
        logger.setLevel(logging.DEBUG)
    try:
        with TestClient(traced) as client:
            yield {
                "client": client,
                "exporter": exporter,
                "traced": traced,
                "records": records.records,
            }
    finally:
        for logger, level in zip((sagaz_logger, app_logger), levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
        provider.shutdown()


def start(client: TestClient, order_id: str, amount: int, cid: str) -> str:
    response = client.post(
        f"/webhooks/{SOURCE}",
        json={"order_id": order_id, "amount": amount},
        headers={"X-Correlation-ID": cid},
    )
    assert response.status_code == 202, response.text
    (saga_id,) = response.json()["saga_ids"]
    assert isinstance(saga_id, str)
    return saga_id


def saga_spans(exporter: InMemorySpanExporter, saga_id: str) -> dict[str, ReadableSpan]:
    def finished() -> dict[str, ReadableSpan] | None:
        spans = [
            s
            for s in exporter.get_finished_spans()
            if (s.attributes or {}).get("sagaz.saga_id") == saga_id
        ]
        names = {s.name: s for s in spans}
        return names if f"saga {SAGA}" in names else None

    found: dict[str, ReadableSpan] = wait_until(finished, what=f"the span of saga {saga_id}")
    return found


def sample(samples: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` (None when absent)."""
    values = [s.value for s in samples.get(name, []) if s.labels == labels]
    return float(values[0]) if values else None


def test_completed_and_compensated_sagas_are_observable(observed: dict[str, Any]) -> None:
    client, exporter, traced = observed["client"], observed["exporter"], observed["traced"]
    ok_id = start(client, "o-1", 10, "cid-ok")
    bad_id = start(client, "o-2", 500, "cid-bad")
    assert terminal_state(client, ok_id) == "COMPLETED"
    assert terminal_state(client, bad_id) == "COMPENSATED"

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
            if name != f"saga {SAGA}":
                assert span.parent is not None
                assert span.parent.span_id == saga.context.span_id
                assert (span.attributes or {})["sagaz.step"] == name.split()[-1]
                assert (span.attributes or {})["sagaz.attempt"] == 1
        if status == "COMPLETED":
            assert set(spans) == {
                f"saga {SAGA}",
                *(f"saga.step {s}" for s in ("reserve", "charge", "ship")),
            }
            assert saga.status.status_code is StatusCode.UNSET
        else:
            assert set(spans) == {
                f"saga {SAGA}",
                "saga.step reserve",
                "saga.step charge",
                "saga.compensate reserve",
            }
            assert saga.status.status_code is StatusCode.ERROR
            assert spans["saga.step charge"].status.status_code is StatusCode.ERROR

    # -- metrics: GET /metrics in the Prometheus text format
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.text):
        for item in family.samples:
            families.setdefault(item.name, []).append(item)
    assert sample(families, "sagaz_sagas_total", saga=SAGA, status="completed") == 1
    assert sample(families, "sagaz_sagas_total", saga=SAGA, status="compensated") == 1
    assert sample(families, "sagaz_sagas_in_flight", saga=SAGA) == 0
    assert (
        sample(families, "sagaz_steps_total", saga=SAGA, step="reserve", outcome="completed") == 2
    )
    assert sample(families, "sagaz_steps_total", saga=SAGA, step="charge", outcome="completed") == 1
    assert sample(families, "sagaz_steps_total", saga=SAGA, step="charge", outcome="failed") == 1
    assert sample(families, "sagaz_steps_total", saga=SAGA, step="ship", outcome="completed") == 1
    assert (
        sample(
            families, "sagaz_compensations_total", saga=SAGA, step="reserve", outcome="completed"
        )
        == 1
    )
    assert "sagaz_step_retries_total" not in families  # no retry happened
    assert sample(families, "sagaz_outbox_events", status="pending") == 0
    assert sample(families, "sagaz_outbox_oldest_pending_age_seconds") == 0
    assert sample(families, "sagaz_sagas_unfinished", status="running") == 0
    assert sample(families, "sagaz_saga_leases_held") == 0
    assert sample(families, "sagaz_saga_leases_expired") == 0
    assert sample(families, "sagaz_saga_duration_seconds_count", saga=SAGA, status="completed") == 1
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")

    # -- logs: saga fields on the records, from the listener and from step code
    records: list[logging.LogRecord] = observed["records"]
    transitions = [
        r for r in records if r.name == "sagaz.events" and getattr(r, "saga_id", None) == bad_id
    ]
    kinds = [r.saga_event for r in transitions]
    assert kinds[0] == "saga.started"
    assert kinds[-1] == "saga.compensated"
    assert "step.failed" in kinds
    assert "compensation.completed" in kinds
    failed = transitions[kinds.index("step.failed")]
    assert (failed.saga_name, failed.step, failed.attempt, failed.correlation_id) == (
        SAGA,
        "charge",
        1,
        "cid-bad",
    )
    (in_step,) = [
        r
        for r in records
        if r.name == "sagaz_fastapi_testapp" and getattr(r, "saga_id", None) == ok_id
    ]
    assert {f: getattr(in_step, f) for f in SAGA_LOG_FIELDS} == {
        "saga_id": ok_id,
        "saga_name": SAGA,
        "step": "reserve",
        "attempt": 1,
        "correlation_id": "cid-ok",
    }


def test_metrics_router_options() -> None:
    registry = CollectorRegistry()
    config = SagaConfig()
    app = create_app(config)
    app.include_router(create_metrics_router(registry, path="/ops/metrics", collect_storage=False))
    with TestClient(app) as client:
        response = client.get("/ops/metrics")
        assert response.status_code == 200
        assert "sagaz_sagas_total" in response.text  # the families exist before any saga
        assert "sagaz_outbox_events{" not in response.text  # storage not read
    # The listener was added to the application's config at the scrape, once.
    assert len([x for x in config.listeners if type(x).__name__ == "PrometheusListener"]) == 1
    with pytest.raises(ValueError, match="must start with '/'"):
        create_metrics_router(CollectorRegistry(), path="metrics")


def test_without_prometheus_client_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[prometheus\]'"):
        create_metrics_router()
