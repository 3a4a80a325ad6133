"""Per-saga CPU overhead of the observability listeners (run on demand, not a test).

    python bench/bench_observability.py [--sagas 5000] [--repeat 5]

The saga: three no-op async steps, in memory, run one after the other. Each case runs
``--sagas`` sagas ``--repeat`` times (cases interleaved, so machine drift hits all of
them alike) and reports the best CPU microseconds per saga (``time.process_time``,
background threads included) and the overhead over the run without listeners.

Cases: a no-op ``SagaListener()`` (what the engine's dispatch of 8 events costs,
whatever the listener); LoggingListener with its logger disabled (the default: no handler configured
at INFO) and enabled (INFO, records built and handed to a handler that drops them);
OpenTelemetryListener on the API alone (no SDK: non-recording spans), on the SDK with
no span processor, and on the SDK with a BatchSpanProcessor and an exporter that drops
the spans; PrometheusListener on a custom registry; and all of them at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from sagaz.core import InMemorySagaStorage, LoggingListener, Saga, SagaConfig, SagaListener
from sagaz.core.observability import OpenTelemetryListener, PrometheusListener


class DropExporter(SpanExporter):
    """Accepts spans and throws them away."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class DropHandler(logging.Handler):
    """Formats nothing, keeps nothing: the cost is the record itself."""

    def emit(self, record: logging.LogRecord) -> None:
        return None


async def noop(ctx: dict[str, Any]) -> None:
    return None


def saga_with(listeners: list[SagaListener]) -> Saga:
    # Sagas finished in memory are kept up to a bound; a fresh storage per case keeps
    # that bookkeeping identical across cases.
    config = SagaConfig(storage=InMemorySagaStorage(), listeners=listeners)
    return (
        Saga(name="bench", config=config)
        .add_step("a", noop)
        .add_step("b", noop)
        .add_step("c", noop)
    )


def otel_sdk(batch: bool) -> OpenTelemetryListener:
    provider = TracerProvider()
    if batch:
        # A queue that never overflows: every span is exported (and paid for).
        provider.add_span_processor(
            BatchSpanProcessor(DropExporter(), max_queue_size=1_000_000, schedule_delay_millis=200)
        )
    return OpenTelemetryListener(provider)


def logging_enabled() -> LoggingListener:
    events = logging.getLogger("sagaz.events")
    events.setLevel(logging.INFO)
    events.propagate = False
    events.addHandler(DropHandler())
    return LoggingListener(logger_name="sagaz.events")


def logging_disabled() -> LoggingListener:
    return LoggingListener(logger_name="sagaz.bench.disabled")  # WARNING from the root


CASES: dict[str, Callable[[], list[SagaListener]]] = {
    "no listeners": list,
    "SagaListener() (no-op: engine dispatch)": lambda: [SagaListener()],
    "LoggingListener (logger disabled)": lambda: [logging_disabled()],
    "LoggingListener (enabled, INFO)": lambda: [logging_enabled()],
    "OpenTelemetry (API only, no SDK)": lambda: [OpenTelemetryListener(trace.NoOpTracerProvider())],
    "OpenTelemetry (SDK, no processor)": lambda: [otel_sdk(batch=False)],
    "OpenTelemetry (SDK + batch export)": lambda: [otel_sdk(batch=True)],
    "Prometheus (custom registry)": lambda: [PrometheusListener(CollectorRegistry())],
    "all three (enabled, SDK + batch)": lambda: [
        logging_enabled(),
        otel_sdk(batch=True),
        PrometheusListener(CollectorRegistry()),
    ],
}


async def measure(saga: Saga, n: int) -> float:
    """CPU microseconds per saga over n sequential runs."""
    cpu = time.process_time()
    for _ in range(n):
        await saga.run()
    return (time.process_time() - cpu) / n * 1e6


async def main(n: int, repeat: int) -> None:
    sagas = {name: saga_with(make()) for name, make in CASES.items()}
    for saga in sagas.values():  # warm-up
        for _ in range(min(300, n)):
            await saga.run()
    best = dict.fromkeys(sagas, float("inf"))
    for _ in range(repeat):
        for name, saga in sagas.items():
            best[name] = min(best[name], await measure(saga, n))
    base = best["no listeners"]
    print(f"{'case':<38} {'us/saga':>9} {'overhead':>10}")
    for name, us in best.items():
        extra = "" if name == "no listeners" else f"{us - base:+9.1f}"
        print(f"{name:<38} {us:9.1f} {extra:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.sagas, args.repeat))
