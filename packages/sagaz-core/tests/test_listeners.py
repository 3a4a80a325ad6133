"""Listeners: which events fire and in what order; failures in listeners; logging."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    LoggingListener,
    RetryPolicy,
    Saga,
    SagaListener,
    SagaListenerEvent,
    SagaStatus,
    SagaStorage,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

METHODS = [
    "on_saga_started",
    "on_saga_completed",
    "on_saga_compensating",
    "on_saga_compensated",
    "on_saga_failed",
    "on_step_started",
    "on_step_completed",
    "on_step_failed",
    "on_compensation_started",
    "on_compensation_completed",
    "on_compensation_failed",
]


class Recorder(SagaListener):
    """Records (method, step, attempt) and the events themselves."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int]] = []
        self.events: list[tuple[str, SagaListenerEvent]] = []

    def __getattribute__(self, name: str) -> Any:
        if name in METHODS:

            def record(event: SagaListenerEvent) -> None:
                self.calls.append((name, event.step, event.attempt))
                self.events.append((name, event))

            return record
        return super().__getattribute__(name)


class AsyncRecorder(SagaListener):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def on_saga_started(self, event: SagaListenerEvent) -> None:
        await asyncio.sleep(0)
        self.calls.append("started")

    async def on_step_completed(self, event: SagaListenerEvent) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"step {event.step}")

    async def on_saga_completed(self, event: SagaListenerEvent) -> None:
        await asyncio.sleep(0)
        self.calls.append("completed")


class Exploding(SagaListener):
    def on_saga_started(self, event: SagaListenerEvent) -> None:
        raise RuntimeError("listener bug")

    async def on_step_completed(self, event: SagaListenerEvent) -> None:
        raise ValueError("async listener bug")


async def ok(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def undo(ctx: dict[str, Any]) -> None:
    return None


async def test_events_of_a_completed_saga_in_order(any_storage: SagaStorage) -> None:
    rec = Recorder()
    config = fast_config(any_storage, listeners=[rec])
    saga = Saga(name="lst-completed", config=config).add_step("a", ok).add_step("b", ok)
    result = await saga.run(correlation_id="corr-1")

    assert rec.calls == [
        ("on_saga_started", None, 0),
        ("on_step_started", "a", 1),
        ("on_step_completed", "a", 1),
        ("on_step_started", "b", 1),
        ("on_step_completed", "b", 1),
        ("on_saga_completed", None, 0),
    ]
    for _, event in rec.events:
        assert event.saga_id == result.saga_id
        assert event.saga_name == "lst-completed"
        assert event.correlation_id == "corr-1"
    completed = dict(rec.events)["on_step_completed"]
    assert completed.duration is not None
    assert completed.duration >= 0
    assert dict(rec.events)["on_saga_completed"].status is SagaStatus.COMPLETED


async def test_events_of_a_compensated_saga_in_order(config: Any) -> None:
    rec = Recorder()
    attempts: list[int] = []

    async def flaky_fail(ctx: dict[str, Any]) -> None:
        attempts.append(1)
        raise ConnectionError(f"down {len(attempts)}")

    listening = fast_config(config.storage, listeners=[rec])
    saga = Saga(name="lst-compensated", config=listening)
    saga.add_step("a", ok, undo)
    saga.add_step("b", flaky_fail, retry=RetryPolicy(max_attempts=2, backoff_base=0, jitter=0))
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert rec.calls == [
        ("on_saga_started", None, 0),
        ("on_step_started", "a", 1),
        ("on_step_completed", "a", 1),
        ("on_step_started", "b", 1),
        ("on_step_failed", "b", 1),
        ("on_step_started", "b", 2),
        ("on_step_failed", "b", 2),
        ("on_saga_compensating", "b", 0),
        ("on_compensation_started", "a", 1),
        ("on_compensation_completed", "a", 1),
        ("on_saga_compensated", None, 0),
    ]
    events = rec.events
    failed = [e for name, e in events if name == "on_step_failed"]
    assert [str(e.error) for e in failed] == ["down 1", "down 2"]
    assert all(isinstance(e.error, ConnectionError) for e in failed)
    compensating = dict(events)["on_saga_compensating"]
    assert compensating.status is SagaStatus.COMPENSATING
    assert isinstance(compensating.error, ConnectionError)
    assert dict(events)["on_saga_compensated"].status is SagaStatus.COMPENSATED


async def test_events_of_a_failed_saga(config: Any) -> None:
    rec = Recorder()

    async def bad_undo(ctx: dict[str, Any]) -> None:
        raise OSError("undo broke")

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("x")

    listening = fast_config(
        config.storage, listeners=[rec], compensation_retry=RetryPolicy(max_attempts=1)
    )
    saga = Saga(name="lst-failed", config=listening).add_step("a", ok, bad_undo)
    saga.add_step("b", fail)
    result = await saga.run()

    assert result.status is SagaStatus.FAILED
    assert [c[0] for c in rec.calls][-4:] == [
        "on_saga_compensating",
        "on_compensation_started",
        "on_compensation_failed",
        "on_saga_failed",
    ]
    assert isinstance(dict(rec.events)["on_compensation_failed"].error, OSError)
    assert dict(rec.events)["on_saga_failed"].status is SagaStatus.FAILED


async def test_async_listeners_are_awaited(config: Any) -> None:
    listener = AsyncRecorder()
    listening = fast_config(config.storage, listeners=[listener])
    saga = Saga(name="lst-async", config=listening).add_step("a", ok).add_step("b", ok)
    await saga.run()
    assert listener.calls == ["started", "step a", "step b", "completed"]


async def test_a_raising_listener_is_logged_and_the_saga_goes_on(
    config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    after = Recorder()
    listening = fast_config(config.storage, listeners=[Exploding(), after])
    saga = Saga(name="lst-raising", config=listening).add_step("a", ok)
    with caplog.at_level(logging.ERROR, logger="sagaz"):
        result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    # The listener after the broken one was still called for every event.
    assert [c[0] for c in after.calls] == [
        "on_saga_started",
        "on_step_started",
        "on_step_completed",
        "on_saga_completed",
    ]
    failures = [r for r in caplog.records if r.name.startswith("sagaz")]
    assert len(failures) == 2
    assert all(r.levelno == logging.ERROR for r in failures)
    assert "on_saga_started" in failures[0].getMessage()
    assert result.saga_id in failures[0].getMessage()
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is RuntimeError
    assert "on_step_completed" in failures[1].getMessage()
    assert failures[1].exc_info is not None
    assert failures[1].exc_info[0] is ValueError


def test_the_sagaz_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("sagaz").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers), (
        f"the 'sagaz' logger has no NullHandler (handlers: {handlers})"
    )


async def test_nothing_is_logged_at_info_per_step_by_default(
    config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("x")

    ok_saga = Saga(name="lst-quiet", config=config).add_step("a", ok).add_step("b", ok)
    bad_saga = Saga(name="lst-quiet-comp", config=config).add_step("a", ok, undo)
    bad_saga.add_step("b", fail)
    with caplog.at_level(logging.DEBUG):
        await ok_saga.run()
        await bad_saga.run()
    noisy = [r for r in caplog.records if r.name.startswith("sagaz") and r.levelno >= logging.INFO]
    assert noisy == []


async def test_logging_listener_logs_one_line_per_transition_with_fields(
    config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("declined")

    listening = fast_config(config.storage, listeners=[LoggingListener()])
    saga = Saga(name="lst-logging", config=listening).add_step("a", ok, undo)
    saga.add_step("b", fail)
    with caplog.at_level(logging.INFO, logger="sagaz.events"):
        result = await saga.run(correlation_id="corr-log")

    records = [r for r in caplog.records if r.name == "sagaz.events"]
    messages = [r.getMessage() for r in records]
    assert len(records) == 9
    assert messages[0] == f"saga lst-logging ({result.saga_id}) started"
    assert (
        f"saga lst-logging ({result.saga_id}) step b attempt 1 failed: RuntimeError: declined"
        in (messages)
    )
    levels = {r.getMessage().split(") ", 1)[1]: r.levelno for r in records}
    assert levels["compensated"] == logging.WARNING
    assert levels["step b attempt 1 failed: RuntimeError: declined"] == logging.WARNING
    assert levels["step a attempt 1 completed"] == logging.INFO
    for r in records:
        assert r.saga_id == result.saga_id  # type: ignore[attr-defined]
        assert r.saga_name == "lst-logging"  # type: ignore[attr-defined]
        assert r.correlation_id == "corr-log"  # type: ignore[attr-defined]
    step_records = [r for r in records if r.step is not None]  # type: ignore[attr-defined]
    assert {r.step for r in step_records} == {"a", "b"}  # type: ignore[attr-defined]


async def test_logging_listener_is_silent_when_its_level_is_disabled(
    config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    listening = fast_config(config.storage, listeners=[LoggingListener(level=logging.DEBUG)])
    saga = Saga(name="lst-logging-quiet", config=listening).add_step("a", ok)
    with caplog.at_level(logging.INFO, logger="sagaz.events"):
        await saga.run()
    assert [r for r in caplog.records if r.name == "sagaz.events"] == []
