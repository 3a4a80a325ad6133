"""PrometheusListener and the storage collectors, read back from a custom registry."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    ConfigurationError,
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaStatus,
    SagaStorage,
    emit_event,
    start_saga,
)
from sagaz.core.observability import (
    PrometheusListener,
    SagazMetrics,
    collect_storage_metrics,
    render_metrics,
)
from sagaz.core.records import NewSaga, OutboxStatus

pytestmark = pytest.mark.usefixtures("isolated_config")

NO_RETRY = RetryPolicy(max_attempts=1)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def listener(registry: CollectorRegistry) -> PrometheusListener:
    return PrometheusListener(registry)


@pytest.fixture
def metered(config: SagaConfig, listener: PrometheusListener) -> SagaConfig:
    return fast_config(config.storage, listeners=[listener])


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def fail(ctx: dict[str, Any]) -> None:
    raise RuntimeError("declined")


async def test_completed_saga(metered: SagaConfig, registry: CollectorRegistry) -> None:
    in_flight: list[float] = []

    async def look(ctx: dict[str, Any]) -> None:
        in_flight.append(value(registry, "sagaz_sagas_in_flight", saga="pm-ok"))

    saga = Saga(name="pm-ok", config=metered)
    saga.add_step("a", noop).add_step("b", look).add_step("c", noop)
    assert (await saga.run()).status is SagaStatus.COMPLETED
    assert (await saga.run()).status is SagaStatus.COMPLETED

    assert in_flight == [1.0, 1.0]
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-ok") == 0
    assert value(registry, "sagaz_sagas_total", saga="pm-ok", status="completed") == 2
    assert value(registry, "sagaz_sagas_total", saga="pm-ok", status="compensated") == 0
    assert (
        value(registry, "sagaz_saga_duration_seconds_count", saga="pm-ok", status="completed") == 2
    )
    assert value(registry, "sagaz_saga_duration_seconds_sum", saga="pm-ok", status="completed") > 0
    for step in "abc":
        labels = {"saga": "pm-ok", "step": step, "outcome": "completed"}
        assert value(registry, "sagaz_steps_total", **labels) == 2
        assert value(registry, "sagaz_step_duration_seconds_count", **labels) == 2
        assert value(registry, "sagaz_step_retries_total", saga="pm-ok", step=step) == 0
    assert (
        registry.get_sample_value(
            "sagaz_steps_total", {"saga": "pm-ok", "step": "a", "outcome": "failed"}
        )
        is None
    )


async def test_compensated_saga(metered: SagaConfig, registry: CollectorRegistry) -> None:
    saga = Saga(name="pm-comp", config=metered)
    saga.add_step("a", noop, noop).add_step("b", noop, noop).add_step("c", fail, retry=NO_RETRY)
    assert (await saga.run()).status is SagaStatus.COMPENSATED

    assert value(registry, "sagaz_sagas_total", saga="pm-comp", status="compensated") == 1
    assert value(registry, "sagaz_sagas_total", saga="pm-comp", status="completed") == 0
    assert (
        value(registry, "sagaz_saga_duration_seconds_count", saga="pm-comp", status="compensated")
        == 1
    )
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-comp") == 0
    assert value(registry, "sagaz_steps_total", saga="pm-comp", step="c", outcome="failed") == 1
    assert value(registry, "sagaz_steps_total", saga="pm-comp", step="a", outcome="completed") == 1
    for step in "ab":
        labels = {"saga": "pm-comp", "step": step, "outcome": "completed"}
        assert value(registry, "sagaz_compensations_total", **labels) == 1
        assert value(registry, "sagaz_compensation_duration_seconds_count", **labels) == 1
    assert (
        value(registry, "sagaz_compensations_total", saga="pm-comp", step="c", outcome="completed")
        == 0
    )


async def test_retried_saga(metered: SagaConfig, registry: CollectorRegistry) -> None:
    calls = 0

    async def flaky(ctx: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("blip")

    saga = Saga(name="pm-retry", config=metered)
    saga.add_step("a", noop)
    saga.add_step("b", flaky, retry=RetryPolicy(max_attempts=3, backoff_base=0, jitter=0))
    assert (await saga.run()).status is SagaStatus.COMPLETED

    assert value(registry, "sagaz_step_retries_total", saga="pm-retry", step="b") == 2
    assert value(registry, "sagaz_step_retries_total", saga="pm-retry", step="a") == 0
    assert value(registry, "sagaz_steps_total", saga="pm-retry", step="b", outcome="failed") == 2
    assert value(registry, "sagaz_steps_total", saga="pm-retry", step="b", outcome="completed") == 1
    assert value(registry, "sagaz_sagas_total", saga="pm-retry", status="completed") == 1


async def test_failed_saga(config: SagaConfig, registry: CollectorRegistry) -> None:
    async def broken(ctx: dict[str, Any]) -> None:
        raise ValueError("cannot undo")

    metered = fast_config(
        config.storage,
        listeners=[PrometheusListener(registry)],
        compensation_retry=RetryPolicy(max_attempts=2, backoff_base=0, jitter=0),
    )
    saga = Saga(name="pm-failed", config=metered)
    saga.add_step("a", noop, broken).add_step("b", fail, retry=NO_RETRY)
    assert (await saga.run()).status is SagaStatus.FAILED

    assert value(registry, "sagaz_sagas_total", saga="pm-failed", status="failed") == 1
    assert (
        value(registry, "sagaz_compensations_total", saga="pm-failed", step="a", outcome="failed")
        == 2
    )
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-failed") == 0


async def test_an_interrupted_run_leaves_no_saga_in_flight(
    metered: SagaConfig, registry: CollectorRegistry, listener: PrometheusListener
) -> None:
    started = asyncio.Event()

    async def forever(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    saga = Saga(name="pm-cut", config=metered).add_step("a", forever)
    task = asyncio.create_task(saga.run())
    await started.wait()
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-cut") == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)

    assert value(registry, "sagaz_sagas_in_flight", saga="pm-cut") == 0
    assert value(registry, "sagaz_sagas_interrupted_total", saga="pm-cut") == 1
    assert value(registry, "sagaz_sagas_total", saga="pm-cut", status="completed") == 0
    assert len(listener._runs) == 0


async def test_listeners_share_the_metrics_of_a_registry(registry: CollectorRegistry) -> None:
    first, second = PrometheusListener(registry), PrometheusListener(registry)
    assert first.metrics is second.metrics
    assert first.registry is registry
    assert SagazMetrics.for_registry(registry) is first.metrics
    with pytest.raises(ConfigurationError, match="already registered"):
        SagazMetrics(registry)
    # Another registry gets its own metrics.
    assert PrometheusListener(CollectorRegistry()).metrics is not first.metrics


async def test_the_default_registry_is_the_global_one() -> None:
    assert PrometheusListener().registry is REGISTRY
    assert SagazMetrics.for_registry(None) is SagazMetrics.for_registry(REGISTRY)


async def test_custom_buckets(registry: CollectorRegistry, config: SagaConfig) -> None:
    metrics = SagazMetrics(registry, saga_buckets=(1.0,), step_buckets=(0.5, 2.0))
    metered = fast_config(config.storage, listeners=[PrometheusListener(metrics=metrics)])
    await Saga(name="pm-buckets", config=metered).add_step("a", noop).run()
    labels = {"saga": "pm-buckets", "step": "a", "outcome": "completed", "le": "0.5"}
    assert value(registry, "sagaz_step_duration_bucket", **labels) == 0  # no such series
    assert value(registry, "sagaz_step_duration_seconds_bucket", **labels) == 1
    assert (
        value(
            registry,
            "sagaz_saga_duration_seconds_bucket",
            saga="pm-buckets",
            status="completed",
            le="1.0",
        )
        == 1
    )


def test_render_metrics(registry: CollectorRegistry) -> None:
    PrometheusListener(registry)
    body, content_type = render_metrics(registry)
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "# TYPE sagaz_sagas_total counter" in text
    assert "# TYPE sagaz_step_duration_seconds histogram" in text

    body, content_type = render_metrics(registry, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


async def test_collect_storage_metrics(
    any_storage: SagaStorage, registry: CollectorRegistry
) -> None:
    config = fast_config(any_storage, outbox=True)

    async def emitting(ctx: dict[str, Any]) -> None:
        emit_event("order.charged", {"amount": 3})

    saga = Saga(name="pm-storage", config=config).add_step("a", emitting)
    await saga.run()
    await start_saga(saga, {"n": 1}, run=False)  # PENDING until a worker takes it
    # A RUNNING saga whose owner stopped renewing its lease.
    any_storage.lease_seconds = 0.01
    await any_storage.create_saga(NewSaga("orphan", "pm-storage", {}, SagaStatus.RUNNING))
    await asyncio.sleep(0.05)

    before = time.time()
    snapshot = await collect_storage_metrics(any_storage, registry)

    pending = snapshot.outbox[OutboxStatus.PENDING]
    assert pending == 4  # saga.started, saga.step_completed, order.charged, saga.completed
    assert value(registry, "sagaz_outbox_events", status="pending") == pending
    assert value(registry, "sagaz_outbox_events", status="sent") == 0
    assert value(registry, "sagaz_outbox_events", status="dead") == 0
    age = value(registry, "sagaz_outbox_oldest_pending_age_seconds")
    assert age == snapshot.outbox_oldest_pending_age
    assert 0 < age < time.time() - before + 60
    assert snapshot.sagas_unfinished == {
        SagaStatus.PENDING: 1,
        SagaStatus.RUNNING: 1,
        SagaStatus.COMPENSATING: 0,
    }
    assert value(registry, "sagaz_sagas_unfinished", status="pending") == 1
    assert value(registry, "sagaz_sagas_unfinished", status="running") == 1
    assert value(registry, "sagaz_sagas_unfinished", status="compensating") == 0
    assert value(registry, "sagaz_saga_oldest_pending_age_seconds") > 0
    assert snapshot.leases_expired == 1
    assert value(registry, "sagaz_saga_leases_expired") == 1
    assert value(registry, "sagaz_saga_leases_held") == 0
    assert snapshot.scanned == 2


async def test_collect_storage_metrics_on_an_empty_storage(registry: CollectorRegistry) -> None:
    storage = InMemorySagaStorage()
    snapshot = await collect_storage_metrics(storage, registry, scan_limit=0)
    assert snapshot.outbox == dict.fromkeys(OutboxStatus, 0)
    assert snapshot.scanned == 0
    assert value(registry, "sagaz_outbox_oldest_pending_age_seconds") == 0
    assert value(registry, "sagaz_saga_leases_expired") == 0


def test_missing_prometheus_client_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'sagaz-core\[prometheus\]'"):
        PrometheusListener(None)
    with pytest.raises(ConfigurationError, match=r"sagaz-core\[prometheus\]"):
        render_metrics()


def test_an_interruption_reported_by_the_engine(
    listener: PrometheusListener, registry: CollectorRegistry
) -> None:
    from sagaz.core import SagaListenerEvent

    event = SagaListenerEvent("saga-i", "pm-report")
    listener.on_saga_started(event)
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-report") == 1
    listener.on_saga_interrupted(event)
    listener.on_saga_interrupted(event)  # once only
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-report") == 0
    assert value(registry, "sagaz_sagas_interrupted_total", saga="pm-report") == 1
    # A terminal event for a run this listener did not see start is still counted.
    listener.on_saga_completed(SagaListenerEvent("saga-j", "pm-report"))
    assert value(registry, "sagaz_sagas_total", saga="pm-report", status="completed") == 1
    assert value(registry, "sagaz_sagas_in_flight", saga="pm-report") == 0
