"""Compensation: what is undone, in which order, and what a failed undo leaves behind."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sagaz_core_test_sagas import DiamondSaga, fast_config

from sagaz.core import (
    RetryPolicy,
    Saga,
    SagaCancelledError,
    SagaConfig,
    SagaStatus,
    SagaStorage,
    StepStatus,
    cancel_saga,
    current_step,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

NO_RETRY = RetryPolicy(max_attempts=1)


def compensation_order(record: Any) -> list[str]:
    return [h.step for h in record.history if h.kind.value == "compensation_completed"]


async def test_diamond_compensates_both_branches_before_the_root(
    any_storage: SagaStorage,
) -> None:
    result = await DiamondSaga(config=fast_config(any_storage)).run({"fail": "d"})

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "d"
    assert result.error == "StepFailedError: step d failed on purpose"
    assert sorted(result.completed_steps) == ["a", "b", "c"]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    order = compensation_order(record)
    assert len(order) == 3
    assert set(order[:2]) == {"b", "c"}
    assert order[2] == "a"
    started = [h.step for h in record.history if h.kind.value == "compensation_started"]
    assert started == order  # one at a time, each finished before the next began
    assert result.compensated_steps == order
    assert record.compensated_steps == order
    assert record.steps["d"].status is StepStatus.FAILED
    assert record.steps["d"].compensation_attempts == 0  # d never completed: not undone
    # Compensation starts only after the failure is recorded.
    seq = {(h.kind.value, h.step): h.seq for h in record.history}
    assert seq[("saga_compensating", "d")] > seq[("step_failed", "d")]
    assert seq[("compensation_started", "a")] > seq[("saga_compensating", "d")]
    assert record.history[-1].kind.value == "saga_compensated"


async def test_linear_saga_compensates_in_reverse_order(config: SagaConfig) -> None:
    calls: list[str] = []

    def step(name: str) -> Any:
        async def run(ctx: dict[str, Any]) -> dict[str, Any]:
            calls.append(name)
            if name == "d":
                raise RuntimeError("d broke")
            return {name: f"id-{name}"}

        return run

    def undo(name: str) -> Any:
        def run(ctx: dict[str, Any]) -> None:
            # Each compensation sees the results of every completed step.
            assert ctx[name] == f"id-{name}"
            calls.append(f"undo-{name}")

        return run

    saga = Saga(name="comp-linear", config=config)
    for name in "abcd":
        saga.add_step(name, step(name), undo(name))
    result = await saga.run()

    assert calls == ["a", "b", "c", "d", "undo-c", "undo-b", "undo-a"]
    assert result.status is SagaStatus.COMPENSATED
    assert result.completed_steps == ["a", "b", "c"]
    assert result.compensated_steps == ["c", "b", "a"]
    assert result.failed_step == "d"
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.compensated_steps == ["c", "b", "a"]
    assert record.completed_steps == ["a", "b", "c"]


async def test_steps_without_compensation_are_skipped(config: SagaConfig) -> None:
    undone: list[str] = []

    async def ok(ctx: dict[str, Any]) -> None:
        return None

    async def undo_b(ctx: dict[str, Any]) -> None:
        undone.append("b")

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("c broke")

    saga = Saga(name="comp-skip", config=config)
    saga.add_step("a", ok).add_step("b", ok, undo_b).add_step("c", fail)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert undone == ["b"]
    assert result.compensated_steps == ["b"]
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["a"].status is StepStatus.COMPLETED
    assert record.steps["b"].status is StepStatus.COMPENSATED
    assert [h.step for h in record.history if h.kind.value.startswith("compensation")] == [
        "b",
        "b",
    ]


async def test_failure_of_the_first_step_has_nothing_to_undo(config: SagaConfig) -> None:
    undone: list[str] = []

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("first broke")

    saga = Saga(name="comp-first", config=config)
    saga.add_step("first", fail, lambda ctx: undone.append("first"))
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.completed_steps == []
    assert result.compensated_steps == []
    assert undone == []
    assert result.failed_step == "first"


async def test_a_compensation_that_keeps_failing_leaves_the_saga_failed(
    any_storage: SagaStorage,
) -> None:
    undone: list[str] = []

    async def ok(ctx: dict[str, Any]) -> None:
        return None

    async def undo_a(ctx: dict[str, Any]) -> None:
        undone.append("a")

    async def undo_b(ctx: dict[str, Any]) -> None:
        undone.append("b?")
        raise ConnectionError("refund service down")

    async def fail(ctx: dict[str, Any]) -> None:
        raise ValueError("card declined")

    config = fast_config(any_storage)  # compensation retry: 3 attempts
    saga = Saga(name="comp-stuck", config=config)
    saga.add_step("a", ok, undo_a).add_step("b", ok, undo_b).add_step("c", fail)
    result = await saga.run()

    assert result.status is SagaStatus.FAILED
    assert result.failed_step == "c"
    expected_error = (
        "ValueError: card declined; compensation of step 'b' failed: "
        "ConnectionError: refund service down"
    )
    assert result.error == expected_error
    # The other compensations still ran.
    assert undone == ["b?", "b?", "b?", "a"]
    assert result.compensated_steps == ["a"]
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.FAILED
    assert record.error == expected_error
    assert record.failed_step == "c"
    assert record.steps["b"].status is StepStatus.COMPENSATION_FAILED
    assert record.steps["b"].compensation_attempts == 3
    assert record.steps["b"].compensation_error == "ConnectionError: refund service down"
    assert record.steps["a"].status is StepStatus.COMPENSATED
    assert record.history[-1].kind.value == "saga_failed"


async def test_plain_compensations_run_in_a_worker_thread(config: SagaConfig) -> None:
    seen: dict[str, Any] = {}

    def undo(ctx: dict[str, Any]) -> dict[str, Any]:
        info = current_step()
        seen["thread"] = threading.get_ident()
        seen["info"] = (info.step, info.attempt, info.compensating)
        return {"undone": True}

    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("x")

    saga = Saga(name="comp-thread", config=config)
    saga.add_step("a", lambda ctx: {"a": 1}, undo).add_step("b", fail)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert seen["thread"] != threading.get_ident()
    assert seen["info"] == ("a", 1, True)
    assert result.context["undone"] is True  # a compensation's dict is merged too
    assert "compensate:a" in result.timings


async def test_compensation_returning_a_non_dict_counts_as_failed(config: SagaConfig) -> None:
    async def fail(ctx: dict[str, Any]) -> None:
        raise RuntimeError("x")

    saga = Saga(name="comp-non-dict", config=config)
    saga.add_step("a", lambda ctx: None, lambda ctx: "done", compensation_retry=NO_RETRY).add_step(
        "b", fail
    )
    result = await saga.run()
    assert result.status is SagaStatus.FAILED
    assert result.error is not None
    assert (
        "compensation of step 'a' failed: TypeError: compensation of step 'a' returned a str"
        in (result.error)
    )


async def test_cancelling_a_saga_running_in_this_process_compensates_it_once(
    config: SagaConfig,
) -> None:
    # An operator cancels a saga while its step "b" runs in this very process: the
    # running engine must pick the request up at the next step boundary and undo b
    # and a; nothing else may compensate concurrently, and run() must not raise.
    calls: list[str] = []
    in_b = asyncio.Event()
    finish_b = asyncio.Event()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": 1}

    async def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b start")
        in_b.set()
        await finish_b.wait()
        calls.append("b end")
        return {"b": 1}

    async def c(ctx: dict[str, Any]) -> None:
        calls.append("c")

    def undo(name: str) -> Any:
        async def run(ctx: dict[str, Any]) -> None:
            calls.append(f"undo {name}")

        return run

    saga = Saga(name="comp-cancel-live", config=config)
    saga.add_step("a", a, undo("a")).add_step("b", b, undo("b")).add_step("c", c)
    running = asyncio.create_task(saga.run(saga_id="cancel-live-1"))
    await in_b.wait()

    status = await cancel_saga("cancel-live-1", config)
    assert status is SagaStatus.RUNNING  # the live owner compensates it
    assert calls == ["a", "b start"]  # nothing undone behind the running step's back

    finish_b.set()
    result = await running
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert result.error.startswith("SagaCancelledError")
    assert calls == ["a", "b start", "b end", "undo b", "undo a"]
    record = await config.storage.load("cancel-live-1")
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.compensated_steps == ["b", "a"]


async def test_a_cancel_request_is_honoured_at_the_next_step_boundary(
    any_storage: SagaStorage,
) -> None:
    calls: list[str] = []
    in_b = asyncio.Event()
    finish_b = asyncio.Event()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": 1}

    async def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b")
        in_b.set()
        await finish_b.wait()
        return {"b": 1}

    async def c(ctx: dict[str, Any]) -> None:
        calls.append("c")

    def undo(name: str) -> Any:
        async def run(ctx: dict[str, Any]) -> None:
            calls.append(f"undo {name}")

        return run

    saga = Saga(name="comp-cancel-request", config=fast_config(any_storage))
    saga.add_step("a", a, undo("a")).add_step("b", b, undo("b")).add_step("c", c)
    running = asyncio.create_task(saga.run(saga_id="cancel-req-1"))
    await in_b.wait()
    assert await any_storage.request_cancel("cancel-req-1") is True
    finish_b.set()
    result = await running

    assert result.status is SagaStatus.COMPENSATED
    assert isinstance(result.exception, SagaCancelledError)
    assert result.failed_step == "c"
    assert calls == ["a", "b", "undo b", "undo a"]  # c never ran
    record = await any_storage.load("cancel-req-1")
    assert record is not None
    assert record.steps["c"].status is StepStatus.CANCELLED
    assert record.steps["c"].error == "cancelled by operator"
    assert record.compensated_steps == ["b", "a"]
    # A finished saga cannot be cancelled any more.
    assert await any_storage.request_cancel("cancel-req-1") is False
