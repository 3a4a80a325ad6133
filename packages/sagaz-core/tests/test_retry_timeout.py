"""Retries with backoff, step and saga timeouts, for steps and compensations."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaStatus,
    SagaStorage,
    SagaTimeoutError,
    StepStatus,
    StepTimeoutError,
    action,
    compensate,
    current_step,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

QUICK = {"backoff_base": 0.001, "jitter": 0.0}


def history(record: Any, *kinds: str) -> list[tuple[str, str | None, int]]:
    return [(h.kind.value, h.step, h.attempt) for h in record.history if h.kind.value in kinds]


# -- RetryPolicy ---------------------------------------------------------------------


def test_delay_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(
        max_attempts=6, backoff_base=0.1, multiplier=2.0, backoff_max=0.5, jitter=0
    )
    assert [policy.delay(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    tripled = RetryPolicy(backoff_base=1.0, multiplier=3.0, backoff_max=100, jitter=0)
    assert [tripled.delay(n) for n in (1, 2, 3)] == pytest.approx([1.0, 3.0, 9.0])


def test_jitter_scales_the_delay_down_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(backoff_base=1.0, multiplier=2.0, backoff_max=100, jitter=0.5)
    delays = [policy.delay(2) for _ in range(300)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(set(delays)) > 1  # it is random
    assert min(delays) < 1.5 < max(delays)


def test_should_retry_counts_attempts_and_filters_exceptions() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(ConnectionError, TimeoutError))
    assert policy.should_retry(1, ConnectionError())
    assert policy.should_retry(2, ConnectionResetError())  # a subclass
    assert not policy.should_retry(3, ConnectionError())  # attempts exhausted
    assert not policy.should_retry(1, ValueError())
    assert not RetryPolicy().should_retry(1, RuntimeError())  # default: one attempt


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"backoff_base": -1}, "must be >= 0"),
        ({"backoff_max": -0.5}, "must be >= 0"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"jitter": 1.5}, r"jitter must be within \[0, 1\]"),
        ({"jitter": -0.1}, r"jitter must be within \[0, 1\]"),
    ],
)
def test_retry_policy_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)


# -- step retries --------------------------------------------------------------------


async def test_step_fails_twice_then_succeeds_on_the_third_attempt(
    any_storage: SagaStorage,
) -> None:
    attempts: list[int] = []

    async def flaky(ctx: dict[str, Any]) -> dict[str, Any]:
        attempt = current_step().attempt
        attempts.append(attempt)
        if attempt < 3:
            raise ConnectionError(f"try {attempt} failed")
        return {"charged": attempt}

    saga = Saga(name="retry-flaky", config=fast_config(any_storage))
    saga.add_step("charge", flaky, retry=RetryPolicy(max_attempts=3, **QUICK))
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert attempts == [1, 2, 3]
    assert result.context == {"charged": 3}
    record = await any_storage.load(result.saga_id)
    assert record is not None
    step = record.steps["charge"]
    assert step.status is StepStatus.COMPLETED
    assert step.attempts == 3
    assert step.error is None
    assert history(record, "step_started", "step_failed", "step_completed") == [
        ("step_started", "charge", 1),
        ("step_failed", "charge", 1),
        ("step_started", "charge", 2),
        ("step_failed", "charge", 2),
        ("step_started", "charge", 3),
        ("step_completed", "charge", 3),
    ]
    errors = [h.error for h in record.history if h.kind.value == "step_failed"]
    assert errors == ["ConnectionError: try 1 failed", "ConnectionError: try 2 failed"]


async def test_step_that_keeps_failing_uses_every_attempt_then_compensates(
    config: SagaConfig,
) -> None:
    calls: list[str] = []

    async def reserve(ctx: dict[str, Any]) -> None:
        calls.append("reserve")

    async def release(ctx: dict[str, Any]) -> None:
        calls.append("release")

    async def charge(ctx: dict[str, Any]) -> None:
        calls.append("charge")
        raise ConnectionError("down")

    saga = Saga(name="retry-exhausted", config=config)
    saga.add_step("reserve", reserve, release)
    saga.add_step("charge", charge, retry=RetryPolicy(max_attempts=4, **QUICK))
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert calls == ["reserve", "charge", "charge", "charge", "charge", "release"]
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["charge"].attempts == 4
    assert record.steps["charge"].status is StepStatus.FAILED
    assert record.steps["charge"].error == "ConnectionError: down"


async def test_retry_on_filters_which_exceptions_are_retried(config: SagaConfig) -> None:
    calls: dict[str, int] = {"network": 0, "bug": 0}

    async def network(ctx: dict[str, Any]) -> dict[str, Any]:
        calls["network"] += 1
        if calls["network"] == 1:
            raise ConnectionResetError("reset")
        return {}

    async def bug(ctx: dict[str, Any]) -> None:
        calls["bug"] += 1
        raise ValueError("not retryable")

    policy = RetryPolicy(max_attempts=5, retry_on=(ConnectionError,), **QUICK)
    saga = Saga(name="retry-filter", config=config)
    saga.add_step("network", network, retry=policy).add_step("bug", bug, retry=policy)
    result = await saga.run()

    assert calls == {"network": 2, "bug": 1}
    assert result.failed_step == "bug"
    assert result.error == "ValueError: not retryable"
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["network"].attempts == 2
    assert record.steps["bug"].attempts == 1


async def test_config_retry_is_the_default_and_a_step_policy_overrides_it(
    memory_storage: SagaStorage,
) -> None:
    calls: dict[str, int] = {"plain": 0, "own": 0}

    def failing(name: str) -> Any:
        async def run(ctx: dict[str, Any]) -> None:
            calls[name] += 1
            raise OSError(name)

        return run

    config = fast_config(memory_storage, retry=RetryPolicy(max_attempts=3, **QUICK))
    plain = Saga(name="retry-default", config=config).add_step("plain", failing("plain"))
    own = Saga(name="retry-own", config=config).add_step(
        "own", failing("own"), retry=RetryPolicy(max_attempts=2, **QUICK)
    )
    await plain.run()
    await own.run()
    assert calls == {"plain": 3, "own": 2}


async def test_backoff_waits_grow_between_attempts(config: SagaConfig) -> None:
    stamps: list[float] = []

    async def flaky(ctx: dict[str, Any]) -> None:
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise ConnectionError("again")

    policy = RetryPolicy(max_attempts=4, backoff_base=0.03, multiplier=2.0, jitter=0)
    result = (
        await Saga(name="retry-backoff", config=config).add_step("flaky", flaky, retry=policy).run()
    )

    assert result.status is SagaStatus.COMPLETED
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Each wait lasts at least policy.delay(n): 0.03, 0.06, 0.12 seconds.
    for gap, expected in zip(gaps, (0.03, 0.06, 0.12), strict=True):
        assert gap >= expected - 0.005


async def test_declarative_retry_applies(config: SagaConfig) -> None:
    calls: list[int] = []

    class DeclarativeRetrySaga(Saga):
        saga_name = "retry-declarative"

        @action("flaky", retry=RetryPolicy(max_attempts=2, **QUICK))
        async def flaky(self, ctx: dict[str, Any]) -> None:
            calls.append(current_step().attempt)
            if len(calls) == 1:
                raise ConnectionError("first")

    result = await DeclarativeRetrySaga(config=config).run()
    assert result.status is SagaStatus.COMPLETED
    assert calls == [1, 2]


# -- step timeouts -------------------------------------------------------------------


async def test_step_timeout_records_a_step_timeout_error(any_storage: SagaStorage) -> None:
    undone: list[str] = []

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"r": 1}

    async def release(ctx: dict[str, Any]) -> None:
        undone.append("reserve")

    async def hang(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    saga = Saga(name="timeout-step", config=fast_config(any_storage))
    saga.add_step("reserve", reserve, release)
    saga.add_step("hang", hang, timeout=0.05)
    began = time.monotonic()
    result = await saga.run()

    assert time.monotonic() - began < 2
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "hang"
    assert isinstance(result.exception, StepTimeoutError)
    assert result.error is not None
    assert result.error.startswith("StepTimeoutError: step 'hang' timed out after 0.05s")
    assert undone == ["reserve"]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.steps["hang"].status is StepStatus.FAILED
    assert (record.steps["hang"].error or "").startswith("StepTimeoutError")


async def test_a_timed_out_attempt_is_retried(config: SagaConfig) -> None:
    attempts: list[int] = []

    async def slow_then_fast(ctx: dict[str, Any]) -> dict[str, Any]:
        attempt = current_step().attempt
        attempts.append(attempt)
        if attempt == 1:
            await asyncio.sleep(10)
        return {"attempt": attempt}

    saga = Saga(name="timeout-retry", config=config).add_step(
        "s", slow_then_fast, timeout=0.05, retry=RetryPolicy(max_attempts=2, **QUICK)
    )
    result = await saga.run()
    assert result.status is SagaStatus.COMPLETED
    assert attempts == [1, 2]
    assert result.context == {"attempt": 2}
    record = await config.storage.load(result.saga_id)
    assert record is not None
    failed = [h.error for h in record.history if h.kind.value == "step_failed"]
    assert len(failed) == 1
    assert (failed[0] or "").startswith("StepTimeoutError")


async def test_config_step_timeout_applies_to_sync_steps(memory_storage: SagaStorage) -> None:
    release = threading.Event()
    finished: list[bool] = []

    def blocking(ctx: dict[str, Any]) -> None:
        release.wait(5)
        finished.append(True)

    config = fast_config(memory_storage, step_timeout=0.05)
    result = await Saga(name="timeout-sync", config=config).add_step("block", blocking).run()
    assert finished == []  # the saga did not wait for the thread
    assert result.failed_step == "block"
    assert isinstance(result.exception, StepTimeoutError)
    release.set()  # let the worker thread finish before the loop closes
    await asyncio.sleep(0.05)


# -- saga timeout --------------------------------------------------------------------


async def test_saga_timeout_compensates_and_names_the_step_in_flight(
    any_storage: SagaStorage,
) -> None:
    undone: list[str] = []

    async def quick(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"quick": True}

    async def release(ctx: dict[str, Any]) -> None:
        undone.append("quick")

    async def slow(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    async def never(ctx: dict[str, Any]) -> None:
        undone.append("never ran, must not run")

    config = fast_config(any_storage, saga_timeout=0.1)
    saga = Saga(name="timeout-saga", config=config)
    saga.add_step("quick", quick, release).add_step("slow", slow).add_step("never", never)
    began = time.monotonic()
    result = await saga.run()

    assert time.monotonic() - began < 2
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "slow"
    assert isinstance(result.exception, SagaTimeoutError)
    assert result.error is not None
    assert result.error.startswith("SagaTimeoutError")
    assert "0.1s" in result.error
    assert undone == ["quick"]
    assert result.compensated_steps == ["quick"]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.failed_step == "slow"
    assert record.steps["slow"].status is StepStatus.CANCELLED
    assert record.steps["quick"].status is StepStatus.COMPENSATED
    assert "never" not in record.steps


async def test_saga_timeout_in_a_dag_cancels_every_running_step(config: SagaConfig) -> None:
    async def root(ctx: dict[str, Any]) -> None:
        return None

    async def slow(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    slow_config = fast_config(config.storage, saga_timeout=0.1)
    saga = Saga(name="timeout-saga-dag", config=slow_config)
    saga.add_step("root", root)
    saga.add_step("left", slow, depends_on=["root"])
    saga.add_step("right", slow, depends_on=["root"])
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step in {"left", "right"}
    assert isinstance(result.exception, SagaTimeoutError)
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["left"].status is StepStatus.CANCELLED
    assert record.steps["right"].status is StepStatus.CANCELLED


async def test_saga_timeout_during_a_retry_backoff_names_the_retrying_step(
    memory_storage: SagaStorage,
) -> None:
    # The saga times out while "charge" waits to be retried: charge is the step in
    # flight, and the result and the record must say so.
    undone: list[str] = []

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"r": 1}

    async def release(ctx: dict[str, Any]) -> None:
        undone.append("reserve")

    async def charge(ctx: dict[str, Any]) -> None:
        raise ConnectionError("down")

    config = fast_config(memory_storage, saga_timeout=0.2)
    saga = Saga(name="timeout-in-backoff", config=config)
    saga.add_step("reserve", reserve, release)
    saga.add_step("charge", charge, retry=RetryPolicy(max_attempts=5, backoff_base=5.0, jitter=0))
    began = time.monotonic()
    result = await saga.run()

    assert time.monotonic() - began < 2
    assert result.status is SagaStatus.COMPENSATED
    assert isinstance(result.exception, SagaTimeoutError)
    assert undone == ["reserve"]
    assert result.failed_step == "charge"
    record = await memory_storage.load(result.saga_id)
    assert record is not None
    assert record.failed_step == "charge"


# -- compensation retries and timeouts -------------------------------------------------


async def test_compensation_is_retried_until_it_succeeds(any_storage: SagaStorage) -> None:
    attempts: list[int] = []

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": "R"}

    async def release(ctx: dict[str, Any]) -> None:
        info = current_step()
        assert info.compensating
        assert info.step == "reserve"
        attempts.append(info.attempt)
        if info.attempt < 3:
            raise ConnectionError(f"release {info.attempt} failed")

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = Saga(name="comp-retry", config=fast_config(any_storage))
    saga.add_step(
        "reserve", reserve, release, compensation_retry=RetryPolicy(max_attempts=3, **QUICK)
    )
    saga.add_step("fail", fail)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert attempts == [1, 2, 3]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    step = record.steps["reserve"]
    assert step.status is StepStatus.COMPENSATED
    assert step.compensation_attempts == 3
    assert step.compensation_error is None
    assert history(record, "compensation_started", "compensation_failed") == [
        ("compensation_started", "reserve", 1),
        ("compensation_failed", "reserve", 1),
        ("compensation_started", "reserve", 2),
        ("compensation_failed", "reserve", 2),
        ("compensation_started", "reserve", 3),
    ]


async def test_config_compensation_retry_is_the_default(memory_storage: SagaStorage) -> None:
    attempts: list[int] = []

    async def release(ctx: dict[str, Any]) -> None:
        attempts.append(current_step().attempt)
        raise ConnectionError("still down")

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    config = fast_config(memory_storage, compensation_retry=RetryPolicy(max_attempts=2, **QUICK))
    saga = Saga(name="comp-retry-default", config=config)
    saga.add_step("reserve", lambda ctx: None, release).add_step("fail", fail)
    result = await saga.run()
    assert attempts == [1, 2]
    assert result.status is SagaStatus.FAILED


async def test_compensation_timeout_fails_the_saga(any_storage: SagaStorage) -> None:
    class SlowUndoSaga(Saga):
        saga_name = "comp-timeout"

        @action("reserve")
        async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return {"reservation": "R"}

        @compensate("reserve", timeout=0.05, retry=RetryPolicy(max_attempts=2, **QUICK))
        async def release(self, ctx: dict[str, Any]) -> None:
            await asyncio.sleep(10)

        @action("charge")
        async def charge(self, ctx: dict[str, Any]) -> None:
            raise RuntimeError("declined")

    began = time.monotonic()
    result = await SlowUndoSaga(config=fast_config(any_storage)).run()

    assert time.monotonic() - began < 2
    assert result.status is SagaStatus.FAILED
    assert result.failed_step == "charge"
    assert result.error is not None
    assert result.error.startswith("RuntimeError: declined; ")
    assert "compensation of step 'reserve' failed: StepTimeoutError" in result.error
    assert "timed out after 0.05s (attempt 2)" in result.error
    record = await any_storage.load(result.saga_id)
    assert record is not None
    step = record.steps["reserve"]
    assert step.status is StepStatus.COMPENSATION_FAILED
    assert step.compensation_attempts == 2
    assert (step.compensation_error or "").startswith("StepTimeoutError")


async def test_config_step_timeout_also_bounds_compensations(memory_storage: SagaStorage) -> None:
    async def release(ctx: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    config = fast_config(
        memory_storage, step_timeout=0.05, compensation_retry=RetryPolicy(max_attempts=1)
    )
    saga = Saga(name="comp-timeout-default", config=config)
    saga.add_step("reserve", lambda ctx: None, release).add_step("fail", fail)
    began = time.monotonic()
    result = await saga.run()
    assert time.monotonic() - began < 2
    assert result.status is SagaStatus.FAILED
    assert result.error is not None
    assert "compensation of step 'reserve' failed: StepTimeoutError: compensation of step " in (
        result.error
    )
