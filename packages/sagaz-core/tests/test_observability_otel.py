"""OpenTelemetryListener: span names, parents, attributes and status (SDK in memory)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    ConfigurationError,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaListenerEvent,
    SagaStatus,
)
from sagaz.core.observability import OpenTelemetryListener

pytestmark = pytest.mark.usefixtures("isolated_config")

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def listener(provider: TracerProvider) -> OpenTelemetryListener:
    return OpenTelemetryListener(provider)


@pytest.fixture
def traced(config: SagaConfig, listener: OpenTelemetryListener) -> SagaConfig:
    return fast_config(config.storage, listeners=[listener])


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    assert span.attributes is not None
    return span.attributes


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def fail(ctx: dict[str, Any]) -> None:
    raise RuntimeError("card declined")


async def test_completed_saga_spans_names_parents_and_attributes(
    traced: SagaConfig, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: dict[str, trace.Span] = {}

    async def step_a(ctx: dict[str, Any]) -> None:
        seen["a"] = trace.get_current_span()

    def step_b(ctx: dict[str, Any]) -> None:  # a plain function: runs in a thread
        seen["b"] = trace.get_current_span()

    saga = Saga(name="otel-ok", config=traced)
    saga.add_step("a", step_a).add_step("b", step_b).add_step("c", noop)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        result = await saga.run(correlation_id="corr-1")
        # No step span leaks into the caller's context.
        assert trace.get_current_span() is request

    assert result.status is SagaStatus.COMPLETED
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"request", "saga otel-ok", "saga.step a", "saga.step b", "saga.step c"}
    root, saga_span = spans["request"], spans["saga otel-ok"]
    assert parent_id(saga_span) == span_id(root)
    assert {trace_id(s) for s in spans.values()} == {trace_id(root)}
    assert attrs(saga_span) == {
        "sagaz.saga_id": result.saga_id,
        "sagaz.saga_name": "otel-ok",
        "sagaz.correlation_id": "corr-1",
        "sagaz.status": "COMPLETED",
    }
    assert saga_span.status.status_code is StatusCode.UNSET
    assert saga_span.kind is trace.SpanKind.INTERNAL
    for name in "abc":
        step = spans[f"saga.step {name}"]
        assert parent_id(step) == span_id(saga_span)
        assert attrs(step) == {
            "sagaz.saga_id": result.saga_id,
            "sagaz.saga_name": "otel-ok",
            "sagaz.correlation_id": "corr-1",
            "sagaz.step": name,
            "sagaz.attempt": 1,
            "sagaz.status": "COMPLETED",
        }
        assert step.status.status_code is StatusCode.UNSET
    # While a step runs (async or in a worker thread) its span is the current span.
    assert seen["a"].get_span_context().span_id == span_id(spans["saga.step a"])
    assert seen["b"].get_span_context().span_id == span_id(spans["saga.step b"])
    # The saga span covers its steps.
    assert saga_span.start_time is not None
    assert saga_span.end_time is not None
    for name in "abc":
        step = spans[f"saga.step {name}"]
        assert step.start_time is not None
        assert step.end_time is not None
        assert saga_span.start_time <= step.start_time <= step.end_time <= saga_span.end_time


async def test_compensated_saga_spans_record_the_error(
    traced: SagaConfig, exporter: InMemorySpanExporter
) -> None:
    saga = Saga(name="otel-comp", config=traced)
    saga.add_step("a", noop, noop).add_step("b", noop, noop).add_step("c", fail, retry=NO_RETRY)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {
        "saga otel-comp",
        "saga.step a",
        "saga.step b",
        "saga.step c",
        "saga.compensate b",
        "saga.compensate a",
    }
    saga_span = spans["saga otel-comp"]
    assert saga_span.parent is None  # no span was current: a root span
    assert attrs(saga_span)["sagaz.status"] == "COMPENSATED"
    assert saga_span.status.status_code is StatusCode.ERROR
    assert saga_span.status.description == (
        "compensated after step 'c' failed: RuntimeError: card declined"
    )
    [compensating] = [e for e in saga_span.events if e.name == "sagaz.compensating"]
    assert compensating.attributes == {
        "sagaz.status": "COMPENSATING",
        "sagaz.step": "c",
        "exception.type": "RuntimeError",
        "exception.message": "card declined",
    }

    failed = spans["saga.step c"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RuntimeError: card declined"
    assert attrs(failed)["sagaz.status"] == "FAILED"
    [exception] = [e for e in failed.events if e.name == "exception"]
    assert exception.attributes is not None
    assert exception.attributes["exception.type"] == "RuntimeError"
    assert exception.attributes["exception.message"] == "card declined"

    for name in "ab":
        comp = spans[f"saga.compensate {name}"]
        assert parent_id(comp) == span_id(saga_span)
        assert attrs(comp)["sagaz.step"] == name
        assert attrs(comp)["sagaz.status"] == "COMPENSATED"
        assert comp.status.status_code is StatusCode.UNSET
    # Compensations run in reverse order.
    assert spans["saga.compensate b"].start_time is not None
    assert spans["saga.compensate a"].start_time is not None
    assert spans["saga.compensate b"].start_time <= spans["saga.compensate a"].start_time


async def test_failed_saga_and_retried_attempts(
    config: SagaConfig, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    calls = {"b": 0}

    async def flaky(ctx: dict[str, Any]) -> None:
        calls["b"] += 1
        if calls["b"] == 1:
            raise ConnectionError("blip")

    async def broken_undo(ctx: dict[str, Any]) -> None:
        raise ValueError("cannot undo")

    traced = fast_config(
        config.storage,
        listeners=[listener],
        compensation_retry=RetryPolicy(max_attempts=2, backoff_base=0, jitter=0),
    )
    saga = Saga(name="otel-failed", config=traced)
    saga.add_step("a", noop, broken_undo)
    saga.add_step("b", flaky, retry=RetryPolicy(max_attempts=2, backoff_base=0, jitter=0))
    saga.add_step("c", fail, retry=NO_RETRY)
    result = await saga.run()

    assert result.status is SagaStatus.FAILED
    spans = exporter.get_finished_spans()
    steps_b = sorted(
        (s for s in spans if s.name == "saga.step b"), key=lambda s: attrs(s)["sagaz.attempt"]
    )
    assert [attrs(s)["sagaz.attempt"] for s in steps_b] == [1, 2]
    assert steps_b[0].status.status_code is StatusCode.ERROR
    assert attrs(steps_b[0])["sagaz.status"] == "FAILED"
    assert steps_b[1].status.status_code is StatusCode.UNSET
    assert attrs(steps_b[1])["sagaz.status"] == "COMPLETED"

    comps = [s for s in spans if s.name == "saga.compensate a"]
    assert [attrs(s)["sagaz.attempt"] for s in comps] == [1, 2]
    assert all(s.status.status_code is StatusCode.ERROR for s in comps)
    assert all(attrs(s)["sagaz.status"] == "COMPENSATION_FAILED" for s in comps)
    [saga_span] = [s for s in spans if s.name == "saga otel-failed"]
    assert attrs(saga_span)["sagaz.status"] == "FAILED"
    assert saga_span.status.status_code is StatusCode.ERROR
    assert saga_span.status.description is not None
    assert "needs intervention" in saga_span.status.description


async def test_parallel_steps_are_children_of_the_saga_span(
    traced: SagaConfig, exporter: InMemorySpanExporter
) -> None:
    current: dict[str, int] = {}

    def recorder(name: str) -> Any:
        async def step(ctx: dict[str, Any]) -> None:
            await asyncio.sleep(0.01)
            current[name] = trace.get_current_span().get_span_context().span_id

        return step

    saga = Saga(name="otel-dag", config=traced)
    saga.add_step("root", recorder("root"))
    saga.add_step("left", recorder("left"), depends_on=["root"])
    saga.add_step("right", recorder("right"), depends_on=["root"])
    saga.add_step("join", recorder("join"), depends_on=["left", "right"])
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    spans = by_name(exporter.get_finished_spans())
    saga_span = spans["saga otel-dag"]
    for name in ("root", "left", "right", "join"):
        step = spans[f"saga.step {name}"]
        assert parent_id(step) == span_id(saga_span)
        assert current[name] == span_id(step)
    left, right = spans["saga.step left"], spans["saga.step right"]
    assert left.start_time is not None
    assert right.end_time is not None
    assert left.start_time < right.end_time  # they overlapped


async def test_a_timed_out_step_span_ends_as_cancelled_and_nothing_leaks(
    config: SagaConfig,
    listener: OpenTelemetryListener,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    async def slow(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(5)

    traced = fast_config(config.storage, listeners=[listener], saga_timeout=0.05)
    saga = Saga(name="otel-timeout", config=traced).add_step("a", noop, noop).add_step("b", slow)
    with provider.get_tracer("test").start_as_current_span("request") as request:
        result = await saga.run()
        assert trace.get_current_span() is request

    assert result.status is SagaStatus.COMPENSATED
    spans = by_name(exporter.get_finished_spans())
    slow_span = spans["saga.step b"]
    assert attrs(slow_span)["sagaz.status"] == "CANCELLED"
    assert slow_span.status.status_code is StatusCode.ERROR
    assert parent_id(spans["saga.compensate a"]) == span_id(spans["saga otel-timeout"])
    assert "SagaTimeoutError" in (spans["saga otel-timeout"].status.description or "")


async def test_an_interrupted_run_ends_its_spans(
    traced: SagaConfig, listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    started = asyncio.Event()

    async def forever(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    saga = Saga(name="otel-interrupted", config=traced).add_step("a", forever)
    task = asyncio.create_task(saga.run())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the task's done callbacks run

    spans = by_name(exporter.get_finished_spans())
    saga_span = spans["saga otel-interrupted"]
    assert attrs(saga_span)["sagaz.interrupted"] is True
    assert attrs(saga_span)["sagaz.status"] == "RUNNING"
    assert saga_span.status.status_code is StatusCode.ERROR
    assert attrs(spans["saga.step a"])["sagaz.status"] == "CANCELLED"
    assert len(listener._runs) == 0


@dataclasses.dataclass(frozen=True, slots=True)
class EventWithTrace(SagaListenerEvent):
    """The event as the proposed core change would pass it (trace_context added)."""

    trace_context: Mapping[str, str] | None = None


async def test_a_recorded_trace_context_continues_the_trace(
    listener: OpenTelemetryListener, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        carrier = listener.capture_trace_context()
    assert set(carrier) >= {"traceparent"}

    # Later, in a worker with another span current: the saga joins the recorded trace.
    with tracer.start_as_current_span("worker poll"):
        event = EventWithTrace("saga-1", "resumed", "corr", trace_context=carrier)
        listener.on_saga_started(event)
        step = EventWithTrace("saga-1", "resumed", "corr", "a", 1, trace_context=carrier)
        listener.on_step_started(step)
        listener.on_step_completed(step)
        listener.on_saga_completed(event)

    spans = by_name(exporter.get_finished_spans())
    saga_span = spans["saga resumed"]
    assert trace_id(saga_span) == request.get_span_context().trace_id
    assert parent_id(saga_span) == request.get_span_context().span_id
    assert parent_id(spans["saga.step a"]) == span_id(saga_span)


async def test_an_unusable_trace_context_falls_back_to_the_current_span(
    listener: OpenTelemetryListener, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    with provider.get_tracer("test").start_as_current_span("current") as current:
        event = EventWithTrace("saga-2", "bad", trace_context={"traceparent": "garbage"})
        listener.on_saga_started(event)
        listener.on_saga_completed(event)
    saga_span = by_name(exporter.get_finished_spans())["saga bad"]
    assert parent_id(saga_span) == current.get_span_context().span_id


async def test_capture_without_a_span_is_empty(listener: OpenTelemetryListener) -> None:
    assert listener.capture_trace_context() == {}


async def test_step_spans_need_not_be_current(
    config: SagaConfig, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    seen: list[trace.Span] = []

    async def step(ctx: dict[str, Any]) -> None:
        seen.append(trace.get_current_span())

    listener = OpenTelemetryListener(provider, activate_step_spans=False)
    saga = Saga(name="otel-passive", config=fast_config(config.storage, listeners=[listener]))
    saga.add_step("a", step)
    await saga.run()
    spans = by_name(exporter.get_finished_spans())
    assert parent_id(spans["saga.step a"]) == span_id(spans["saga otel-passive"])
    assert seen == [trace.INVALID_SPAN]


async def test_events_for_an_unknown_saga_are_tolerated(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    # A listener added while a saga was already running sees its steps only.
    step = SagaListenerEvent("saga-x", "late", None, "a", 1)
    listener.on_step_started(step)
    listener.on_step_failed(dataclasses.replace(step, error=ValueError("x")))
    listener.on_saga_compensating(SagaListenerEvent("saga-y", "late", step="a"))
    listener.on_compensation_completed(step)
    listener.on_saga_completed(SagaListenerEvent("saga-y", "late"))
    listener.on_saga_completed(SagaListenerEvent("saga-x", "late"))
    listener.on_saga_interrupted(SagaListenerEvent("saga-z", "late"))
    [span] = exporter.get_finished_spans()
    assert span.name == "saga.step a"
    assert span.status.status_code is StatusCode.ERROR
    assert len(listener._runs) == 0


async def test_works_with_the_no_op_api(config: SagaConfig) -> None:
    listener = OpenTelemetryListener(trace.NoOpTracerProvider())
    saga = Saga(name="otel-noop", config=fast_config(config.storage, listeners=[listener]))
    saga.add_step("a", noop, noop).add_step("b", fail, retry=NO_RETRY)
    assert (await saga.run()).status is SagaStatus.COMPENSATED
    assert len(listener._runs) == 0


def test_missing_opentelemetry_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[otel\]'"):
        OpenTelemetryListener()


def test_listener_methods_called_outside_an_event_loop(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    event = SagaListenerEvent("saga-sync", "plain")
    step = SagaListenerEvent("saga-sync", "plain", None, "a", 1)
    listener.on_saga_started(event)
    listener.on_step_started(step)
    listener.on_step_completed(step)
    # A compensation without a recorded error (e.g. a resumed compensation).
    listener.on_saga_compensating(event)
    listener.on_compensation_started(step)
    listener.on_compensation_failed(step)
    listener.on_saga_compensated(event)
    spans = by_name(exporter.get_finished_spans())
    assert set(spans) == {"saga plain", "saga.step a", "saga.compensate a"}
    assert spans["saga plain"].status.description == (
        "compensated after step None failed: unknown error"
    )
    assert spans["saga.compensate a"].status.description == "compensation_failed"


async def test_an_interruption_while_compensating(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    event = SagaListenerEvent("saga-i", "cut")
    listener.on_saga_started(event)
    listener.on_saga_compensating(dataclasses.replace(event, step="b", error=KeyError("k")))
    listener.on_compensation_started(dataclasses.replace(event, step="a", attempt=1))
    listener.on_saga_interrupted(event)
    spans = by_name(exporter.get_finished_spans())
    assert attrs(spans["saga cut"])["sagaz.status"] == "COMPENSATING"
    assert attrs(spans["saga cut"])["sagaz.interrupted"] is True
    assert attrs(spans["saga.compensate a"])["sagaz.status"] == "CANCELLED"
    assert len(listener._runs) == 0


async def test_a_run_seen_only_from_its_steps_is_cleaned_up_by_its_task(
    listener: OpenTelemetryListener, exporter: InMemorySpanExporter
) -> None:
    async def late() -> None:
        listener.on_step_started(SagaListenerEvent("saga-late", "late", None, "a", 1))

    await asyncio.create_task(late())
    await asyncio.sleep(0)
    [span] = exporter.get_finished_spans()
    assert attrs(span)["sagaz.status"] == "CANCELLED"
    assert len(listener._runs) == 0
