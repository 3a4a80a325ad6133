"""Structured logging: saga fields on records, one line per transition, no host config."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    LoggingListener,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaContextManager,
    SagaStatus,
)
from sagaz.core.observability import (
    SAGA_LOG_FIELDS,
    OpenTelemetryListener,
    PrometheusListener,
    SagaLogAdapter,
    SagaLogFilter,
    saga_log_fields,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

NO_RETRY = RetryPolicy(max_attempts=1)
step_logger = logging.getLogger("tests.observability.steps")


class Capture(logging.Handler):
    """Keeps the records it handles (with a filter of the caller's choice)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class JsonFormatter(logging.Formatter):
    """What a JSON log formatter does: every non-standard attribute becomes a key."""

    STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data = {k: v for k, v in record.__dict__.items() if k not in self.STANDARD}
        data["message"] = record.getMessage()
        return json.dumps(data, default=str)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def fail(ctx: dict[str, Any]) -> None:
    raise RuntimeError("declined")


async def test_logging_listener_records_carry_the_saga_fields(
    config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    listening = fast_config(config.storage, listeners=[LoggingListener()])
    saga = Saga(name="log-fields", config=listening)
    saga.add_step("a", noop, noop).add_step("b", fail, retry=NO_RETRY)
    with caplog.at_level(logging.DEBUG, logger="sagaz"):
        result = await saga.run(correlation_id="corr-9")

    records = [r for r in caplog.records if r.name == "sagaz.events"]
    kinds = [r.saga_event for r in records]  # type: ignore[attr-defined]
    assert kinds == [
        "saga.started",
        "step.started",
        "step.completed",
        "step.started",
        "step.failed",
        "saga.compensating",
        "compensation.started",
        "compensation.completed",
        "saga.compensated",
    ]
    for record in records:
        for field in SAGA_LOG_FIELDS:
            assert hasattr(record, field), (field, record.getMessage())
        assert record.saga_id == result.saga_id  # type: ignore[attr-defined]
        assert record.saga_name == "log-fields"  # type: ignore[attr-defined]
        assert record.correlation_id == "corr-9"  # type: ignore[attr-defined]
    by_kind = {r.saga_event: r for r in records}  # type: ignore[attr-defined]
    failed = by_kind["step.failed"]
    assert (failed.step, failed.attempt) == ("b", 1)  # type: ignore[attr-defined]
    assert failed.error == "RuntimeError: declined"  # type: ignore[attr-defined]
    assert failed.duration >= 0  # type: ignore[attr-defined]
    assert failed.levelno == logging.WARNING
    assert by_kind["saga.started"].saga_status == "RUNNING"  # type: ignore[attr-defined]
    assert by_kind["saga.started"].step is None  # type: ignore[attr-defined]
    assert by_kind["saga.compensating"].step == "b"  # type: ignore[attr-defined]
    assert by_kind["saga.compensated"].saga_status == "COMPENSATED"  # type: ignore[attr-defined]
    assert by_kind["step.completed"].error is None  # type: ignore[attr-defined]

    line = json.loads(JsonFormatter().format(failed))
    assert line["saga_id"] == result.saga_id
    assert line["step"] == "b"
    assert line["attempt"] == 1
    assert line["correlation_id"] == "corr-9"
    assert line["saga_event"] == "step.failed"


async def test_one_info_line_per_saga_transition_with_debug_steps(
    config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    listening = fast_config(config.storage, listeners=[LoggingListener(step_level=logging.DEBUG)])
    saga = Saga(name="log-lines", config=listening)
    saga.add_step("a", noop).add_step("b", noop).add_step("c", noop)
    with caplog.at_level(logging.DEBUG, logger="sagaz"):
        result = await saga.run()

    mine = [r for r in caplog.records if r.name == "sagaz.events"]
    info = [r.getMessage() for r in mine if r.levelno >= logging.INFO]
    assert info == [
        f"saga log-lines ({result.saga_id}) started",
        f"saga log-lines ({result.saga_id}) completed",
    ]
    assert len([r for r in mine if r.levelno == logging.DEBUG]) == 6  # 3 steps x 2


async def test_nothing_at_info_per_step_by_default_with_every_observability_listener(
    config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    listeners = [OpenTelemetryListener(TracerProvider()), PrometheusListener(CollectorRegistry())]
    observed = fast_config(config.storage, listeners=listeners)
    ok = Saga(name="log-quiet", config=observed).add_step("a", noop).add_step("b", noop)
    bad = Saga(name="log-quiet-comp", config=observed)
    bad.add_step("a", noop, noop).add_step("b", fail, retry=NO_RETRY)
    with caplog.at_level(logging.DEBUG):
        assert (await ok.run()).status is SagaStatus.COMPLETED
        assert (await bad.run()).status is SagaStatus.COMPENSATED
    noisy = [r for r in caplog.records if r.name.startswith("sagaz") and r.levelno >= logging.INFO]
    assert noisy == []


async def test_the_filter_adds_saga_fields_to_every_record_of_a_step(config: SagaConfig) -> None:
    handler = Capture()
    handler.addFilter(SagaLogFilter())
    step_logger.addHandler(handler)
    step_logger.setLevel(logging.DEBUG)

    async def step(ctx: dict[str, Any]) -> None:
        step_logger.info("charging")
        step_logger.info("explicit", extra={"step": "mine"})

    def sync_step(ctx: dict[str, Any]) -> None:  # runs in a worker thread
        step_logger.info("in a thread")

    try:
        saga = Saga(name="log-filter", config=config).add_step("a", step).add_step("b", sync_step)
        result = await saga.run(correlation_id="corr-f")
        step_logger.info("outside")
    finally:
        step_logger.removeHandler(handler)
        step_logger.setLevel(logging.NOTSET)

    charging, explicit, thread, outside = handler.records
    for record, name in ((charging, "a"), (thread, "b")):
        assert record.saga_id == result.saga_id  # type: ignore[attr-defined]
        assert record.saga_name == "log-filter"  # type: ignore[attr-defined]
        assert record.step == name  # type: ignore[attr-defined]
        assert record.attempt == 1  # type: ignore[attr-defined]
        assert record.correlation_id == "corr-f"  # type: ignore[attr-defined]
    assert explicit.step == "mine"  # type: ignore[attr-defined]  # explicit extra wins
    assert not hasattr(outside, "saga_id")


def test_the_filter_outside_sagas() -> None:
    record = logging.makeLogRecord({"msg": "x"})
    assert SagaLogFilter().filter(record) is True
    assert not hasattr(record, "saga_id")

    record = logging.makeLogRecord({"msg": "x"})
    assert SagaLogFilter(always=True).filter(record) is True
    assert all(getattr(record, f) is None for f in SAGA_LOG_FIELDS)
    formatted = logging.Formatter("%(saga_id)s %(correlation_id)s %(message)s").format(record)
    assert formatted == "None None x"

    with SagaContextManager.scope(correlation_id="req-1"):
        record = logging.makeLogRecord({"msg": "x"})
        SagaLogFilter().filter(record)
        assert record.correlation_id == "req-1"  # type: ignore[attr-defined]
        assert record.saga_id is None  # type: ignore[attr-defined]
        assert saga_log_fields() == {**dict.fromkeys(SAGA_LOG_FIELDS), "correlation_id": "req-1"}
    assert saga_log_fields() is None


async def test_the_adapter_in_step_code(config: SagaConfig) -> None:
    handler = Capture()
    step_logger.addHandler(handler)
    step_logger.setLevel(logging.DEBUG)
    log = SagaLogAdapter(step_logger)
    tagged = SagaLogAdapter(step_logger, {"service": "payments"})

    async def step(ctx: dict[str, Any]) -> None:
        log.info("charging")
        tagged.warning("tagged", extra={"attempt": 99})

    try:
        result = await Saga(name="log-adapter", config=config).add_step("a", step).run()
        log.info("outside")
    finally:
        step_logger.removeHandler(handler)
        step_logger.setLevel(logging.NOTSET)

    charging, tag, outside = handler.records
    assert charging.saga_id == result.saga_id  # type: ignore[attr-defined]
    assert charging.step == "a"  # type: ignore[attr-defined]
    assert tag.service == "payments"  # type: ignore[attr-defined]
    assert tag.attempt == 99  # type: ignore[attr-defined]
    assert tag.step == "a"  # type: ignore[attr-defined]
    assert not hasattr(outside, "saga_id")


def test_importing_observability_configures_nothing_and_imports_no_extras() -> None:
    code = (
        "import logging, sys\n"
        "root = list(logging.getLogger().handlers)\n"
        "import sagaz.core.observability as o\n"
        "o.LoggingListener()\n"
        "assert logging.getLogger().handlers == root, logging.getLogger().handlers\n"
        "hs = logging.getLogger('sagaz').handlers\n"
        "assert [type(h).__name__ for h in hs] == ['NullHandler'], hs\n"
        "bad = [m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus_client'))]\n"
        "assert not bad, bad\n"
        "assert sorted(o.__all__) == sorted(set(o.__all__))\n"
        "assert all(hasattr(o, n) for n in o.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
