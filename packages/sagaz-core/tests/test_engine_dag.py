"""The engine on DAG sagas: concurrency, the parallelism bound and failure policies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    FailurePolicy,
    Saga,
    SagaConfig,
    SagaStatus,
    SagaStorage,
    StepStatus,
)

pytestmark = pytest.mark.usefixtures("isolated_config")


class Timeline:
    """Start and end times of each step, and how many ran at once."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}
        self.running = 0
        self.peak = 0
        self.undone: list[str] = []

    def step(
        self, name: str, seconds: float = 0.0, fail: bool = False
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def run(ctx: dict[str, Any]) -> dict[str, Any]:
            self.spans[name] = [time.monotonic()]
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                await asyncio.sleep(seconds)
                if fail:
                    raise RuntimeError(f"{name} failed")
            finally:
                self.running -= 1
            self.spans[name].append(time.monotonic())
            return {name: True}

        return run

    def undo(self, name: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def run(ctx: dict[str, Any]) -> None:
            self.undone.append(name)

        return run

    def overlap(self, a: str, b: str) -> bool:
        (a0, a1), (b0, b1) = self.spans[a], self.spans[b]
        return a0 < b1 and b0 < a1


async def test_independent_steps_overlap_in_time(any_storage: SagaStorage) -> None:
    t = Timeline()
    saga = Saga(name="dag-overlap", config=fast_config(any_storage))
    saga.add_step("a", t.step("a"))
    saga.add_step("b", t.step("b", 0.15), depends_on=["a"])
    saga.add_step("c", t.step("c", 0.15), depends_on=["a"])
    saga.add_step("d", t.step("d"), depends_on=["b", "c"])
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert t.overlap("b", "c")
    assert t.peak == 2
    # d waits for both of its dependencies; b and c wait for a.
    assert t.spans["d"][0] >= max(t.spans["b"][1], t.spans["c"][1])
    assert min(t.spans["b"][0], t.spans["c"][0]) >= t.spans["a"][1]
    assert result.context == {"a": True, "b": True, "c": True, "d": True}
    assert result.completed_steps[0] == "a"
    assert result.completed_steps[-1] == "d"
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert all(s.status is StepStatus.COMPLETED for s in record.steps.values())
    # In the recorded history, d starts only after b and c completed.
    seq = {(h.kind.value, h.step): h.seq for h in record.history}
    assert seq[("step_started", "d")] > seq[("step_completed", "b")]
    assert seq[("step_started", "d")] > seq[("step_completed", "c")]
    assert record.context == result.context


async def test_a_step_starts_as_soon_as_its_own_dependencies_are_done(config: SagaConfig) -> None:
    # a -> slow, a -> fast -> after_fast: after_fast must not wait for slow (no level barrier).
    t = Timeline()
    saga = Saga(name="dag-no-barrier", config=config)
    saga.add_step("a", t.step("a"))
    saga.add_step("slow", t.step("slow", 0.3), depends_on=["a"])
    saga.add_step("fast", t.step("fast", 0.01), depends_on=["a"])
    saga.add_step("after_fast", t.step("after_fast", 0.01), depends_on=["fast"])
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert t.spans["after_fast"][0] < t.spans["slow"][1]
    assert t.overlap("slow", "after_fast")


@pytest.mark.parametrize(("limit", "expected_peak"), [(1, 1), (2, 2), (10, 6)])
async def test_max_parallel_bounds_concurrent_steps(
    memory_storage: SagaStorage, limit: int, expected_peak: int
) -> None:
    t = Timeline()
    saga = Saga(name=f"dag-bound-{limit}", config=fast_config(memory_storage, max_parallel=limit))
    for i in range(6):
        saga.add_step(f"s{i}", t.step(f"s{i}", 0.03), depends_on=[])
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert sorted(result.completed_steps) == [f"s{i}" for i in range(6)]
    assert t.peak == expected_peak


async def test_fail_fast_cancels_a_running_sibling_and_does_not_compensate_it(
    any_storage: SagaStorage,
) -> None:
    t = Timeline()
    config = fast_config(any_storage, failure_policy=FailurePolicy.FAIL_FAST)
    saga = Saga(name="dag-fail-fast", config=config)
    saga.add_step("a", t.step("a"), t.undo("a"))
    saga.add_step("slow", t.step("slow", 5.0), t.undo("slow"), depends_on=["a"])
    saga.add_step("boom", t.step("boom", 0.02, fail=True), t.undo("boom"), depends_on=["a"])
    saga.add_step("after", t.step("after"), t.undo("after"), depends_on=["slow", "boom"])
    began = time.monotonic()
    result = await saga.run()

    assert time.monotonic() - began < 2.0  # slow was not waited for
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "boom"
    assert result.error == "RuntimeError: boom failed"
    assert result.compensated_steps == ["a"]
    assert t.undone == ["a"]
    assert len(t.spans["slow"]) == 1  # started, never finished
    assert "after" not in t.spans
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.steps["slow"].status is StepStatus.CANCELLED
    assert record.steps["boom"].status is StepStatus.FAILED
    assert record.steps["a"].status is StepStatus.COMPENSATED
    assert "after" not in record.steps
    history = [(h.kind.value, h.step) for h in record.history]
    assert ("step_cancelled", "slow") in history
    assert ("compensation_started", "slow") not in history


async def test_wait_all_lets_a_running_sibling_finish_and_compensates_it(
    any_storage: SagaStorage,
) -> None:
    t = Timeline()
    config = fast_config(any_storage, failure_policy="wait_all")
    saga = Saga(name="dag-wait-all", config=config)
    saga.add_step("a", t.step("a"), t.undo("a"))
    saga.add_step("slow", t.step("slow", 0.2), t.undo("slow"), depends_on=["a"])
    saga.add_step("boom", t.step("boom", 0.02, fail=True), t.undo("boom"), depends_on=["a"])
    saga.add_step("after_slow", t.step("after_slow"), t.undo("after_slow"), depends_on=["slow"])
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "boom"
    assert len(t.spans["slow"]) == 2  # it finished
    assert t.spans["slow"][1] > t.spans["boom"][0]
    assert "after_slow" not in t.spans  # nothing new starts after the failure
    assert t.undone == ["slow", "a"]
    assert result.compensated_steps == ["slow", "a"]
    assert sorted(result.completed_steps) == ["a", "slow"]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.steps["slow"].status is StepStatus.COMPENSATED
    assert record.steps["a"].status is StepStatus.COMPENSATED
    assert record.steps["boom"].status is StepStatus.FAILED
    assert "after_slow" not in record.steps


async def test_fail_fast_does_not_leave_a_plain_function_step_uncompensated(
    config: SagaConfig,
) -> None:
    # A plain step runs in a worker thread, which cancellation cannot stop: when its
    # sibling fails, the step still finishes its work. The saga must then undo it
    # (or wait for it and undo it), never report COMPENSATED with its effect in place.
    effects: list[str] = []

    def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.2)
        effects.append("charged")
        return {"charged": True}

    def refund(ctx: dict[str, Any]) -> None:
        effects.append("refunded")

    def release(ctx: dict[str, Any]) -> None:
        effects.append("released")

    def check_stock(ctx: dict[str, Any]) -> None:
        time.sleep(0.02)
        raise LookupError("out of stock")

    saga = Saga(name="dag-sync-fail-fast", config=config)
    saga.add_step("reserve", reserve, release)
    saga.add_step("charge", charge, refund, depends_on=["reserve"])
    saga.add_step("check_stock", check_stock, depends_on=["reserve"])
    result = await saga.run()
    deadline = time.monotonic() + 5
    while "charged" not in effects:  # let the worker thread of "charge" finish
        assert time.monotonic() < deadline, "charge never finished"
        await asyncio.sleep(0.01)

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "check_stock"
    assert result.error == "LookupError: out of stock"
    assert "charged" in effects
    assert "refunded" in effects, f"charge ran to completion but was never undone: {effects}"
