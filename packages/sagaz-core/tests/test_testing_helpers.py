"""sagaz.core.testing: the helpers users test their own sagas with (real engine, memory storage)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

import sagaz.core.config as config_module
from sagaz.core import (
    ContextNotSerializableError,
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaNotFoundError,
    SagaStatus,
    UnknownSourceError,
    action,
    compensate,
    get_config,
    trigger,
)
from sagaz.core.testing import (
    SagaHistory,
    StrictMemoryStorage,
    assert_compensated_in_order,
    assert_saga_status,
    assert_steps_completed,
    fire_and_wait,
    fresh_config,
    history,
    load_history,
    memory_config,
    run_saga,
)


class PaymentDeclinedError(Exception):
    """The payment step refused the amount."""


class HelperOrderSaga(Saga):
    """reserve -> charge -> ship; charge fails above 100; ship fails on ctx['ship_fails']."""

    saga_name = "testing-helpers-order"
    undone: list[str] = []

    @trigger(source="testing_helpers_order", idempotency_key="order_id")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("ignore"):
            return None
        return {"order_id": event["order_id"], "amount": event["amount"]}

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        self.undone.append("reserve")

    @action("charge")
    def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["amount"] > 100:
            raise PaymentDeclinedError(f"amount {ctx['amount']} over the limit")
        return {"charge": "C-1"}

    @compensate("charge")
    def refund(self, ctx: dict[str, Any]) -> None:
        self.undone.append("charge")

    @action("ship")
    async def ship(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx.get("ship_fails"):
            raise RuntimeError("no courier")
        return {"tracking": "T-1"}


def flaky_saga(failures: int) -> Saga:
    """An imperative saga whose one step fails ``failures`` times, then succeeds."""
    calls = {"n": 0}

    def flaky(ctx: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError(f"attempt {calls['n']} failed")
        return {"calls": calls["n"]}

    return Saga(name="testing-helpers-flaky").add_step(
        "flaky", flaky, retry=RetryPolicy(max_attempts=3, backoff_base=0.0, jitter=0.0)
    )


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAGAZ_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(config_module, "_global_config", None)
    HelperOrderSaga.undone = []


@pytest.fixture
def sagaz_config() -> Iterator[SagaConfig]:
    """The fixture the docs recommend to users."""
    with memory_config() as config:
        yield config


# -- configuration -------------------------------------------------------------


def test_memory_config_installs_and_restores_the_process_wide_config() -> None:
    before = get_config()
    with memory_config() as config:
        assert get_config() is config
        assert isinstance(config.storage, StrictMemoryStorage)
        assert config.storage.durable
    assert get_config() is before


def test_memory_config_restores_even_when_the_block_fails() -> None:
    before = get_config()
    with pytest.raises(ZeroDivisionError), memory_config():
        1 / 0  # noqa: B018
    assert get_config() is before


def test_fresh_config_non_strict_keywords_and_explicit_storage() -> None:
    loose = fresh_config(strict=False, max_parallel=3)
    assert type(loose.storage) is InMemorySagaStorage
    assert not loose.storage.durable
    assert loose.max_parallel == 3
    assert loose.compensation_retry.max_attempts == 3
    assert loose.compensation_retry.backoff_base == 0.0
    mine = InMemorySagaStorage()
    assert fresh_config(storage=mine).storage is mine
    assert fresh_config(storage_url="memory://").storage_url == "memory://"


def test_each_memory_config_starts_empty(sagaz_config: SagaConfig) -> None:
    first = run_saga(HelperOrderSaga, {"order_id": "A", "amount": 1})
    with memory_config() as other:
        with pytest.raises(SagaNotFoundError, match="config the saga ran with"):
            history(first)
        assert other is not sagaz_config
    assert history(first).saga_id == first.saga_id


def test_strict_storage_refuses_a_context_that_is_not_json(sagaz_config: SagaConfig) -> None:
    with pytest.raises(ContextNotSerializableError, match="when"):
        run_saga(HelperOrderSaga, {"order_id": "A", "amount": 1, "when": object()})


def test_non_strict_storage_accepts_any_context() -> None:
    with memory_config(strict=False):
        result = run_saga(HelperOrderSaga, {"order_id": "A", "amount": 1, "when": object()})
    assert result.status is SagaStatus.COMPLETED


# -- running -------------------------------------------------------------------


def test_run_saga_completes_and_records_the_history(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga(), {"order_id": "A1", "amount": 10})
    assert_saga_status(result, "completed")
    assert_steps_completed(result, ["reserve", "charge", "ship"], ordered=True)
    assert result.context["tracking"] == "T-1"

    recorded = history(result)
    recorded.assert_status(SagaStatus.COMPLETED)
    recorded.assert_steps_completed(["ship", "charge", "reserve"])
    recorded.assert_compensated_in_order([])
    assert recorded.kinds[0] == "saga_started"
    assert recorded.kinds[-1] == "saga_completed"
    assert recorded.entries[0].seq == 1
    assert recorded.failed_steps == []
    assert history(result.saga_id).record.saga_id == result.saga_id


def test_run_saga_failure_is_compensated_in_reverse_order(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "A2", "amount": 500})
    assert_saga_status(result, SagaStatus.COMPENSATED)
    assert_steps_completed(result, ["reserve"])
    assert_compensated_in_order(result, ["reserve"])
    assert result.failed_step == "charge"

    recorded = history(result)
    assert_compensated_in_order(recorded, ["reserve"])
    assert_steps_completed(recorded, ["reserve"])
    assert_saga_status(recorded, "COMPENSATED")
    recorded.assert_not_run("ship")
    assert recorded.failed_steps == ["charge"]
    assert HelperOrderSaga.undone == ["reserve"]


def test_two_compensations_run_newest_first(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "A3", "amount": 1, "ship_fails": True})
    recorded = history(result)
    recorded.assert_compensated_in_order(["charge", "reserve"])
    assert HelperOrderSaga.undone == ["charge", "reserve"]
    assert "no courier" in (result.error or "")


def test_run_saga_with_an_explicit_config_leaves_the_global_one_alone() -> None:
    config = fresh_config()
    result = run_saga(HelperOrderSaga(), {"order_id": "B", "amount": 1}, config=config)
    assert history(result, config=config).status is SagaStatus.COMPLETED
    by_class = run_saga(HelperOrderSaga, {"order_id": "C", "amount": 1}, config=config)
    assert history(by_class, config=config).status is SagaStatus.COMPLETED


def test_run_saga_passes_idempotency_and_correlation(sagaz_config: SagaConfig) -> None:
    first = run_saga(
        HelperOrderSaga, {"order_id": "D", "amount": 1}, idempotency_key="k1", correlation_id="c-1"
    )
    again = run_saga(HelperOrderSaga, {"order_id": "D", "amount": 1}, idempotency_key="k1")
    assert first.correlation_id == "c-1"
    assert again.saga_id == first.saga_id
    assert not again.created


def test_retries_are_visible_in_the_history(sagaz_config: SagaConfig) -> None:
    result = run_saga(flaky_saga(failures=2))
    recorded = history(result)
    recorded.assert_attempts("flaky", 3)
    assert recorded.failed_steps == ["flaky"]
    assert "(attempt 3)" in recorded.timeline()
    assert "ConnectionError: attempt 1 failed" in recorded.timeline()
    with pytest.raises(AssertionError, match="to run 1 time"):
        recorded.assert_attempts("flaky", 1)


def test_run_saga_rejects_what_is_not_a_saga() -> None:
    with pytest.raises(TypeError, match="got int"):
        run_saga(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got dict"):
        run_saga(dict)  # type: ignore[arg-type]


async def test_sync_helpers_refuse_a_running_loop_and_name_the_async_way() -> None:
    with memory_config():
        with pytest.raises(RuntimeError, match=r"await saga\.run"):
            run_saga(HelperOrderSaga, {"order_id": "E", "amount": 1})
        result = await HelperOrderSaga().run({"order_id": "E", "amount": 1})
        with pytest.raises(RuntimeError, match="await load_history"):
            history(result)
        recorded = await load_history(result)
    assert isinstance(recorded, SagaHistory)
    recorded.assert_steps_completed(["reserve", "charge", "ship"], ordered=True)


# -- triggers ------------------------------------------------------------------


def test_fire_and_wait_runs_the_triggered_saga(sagaz_config: SagaConfig) -> None:
    [result] = fire_and_wait("testing_helpers_order", {"order_id": "F", "amount": 7})
    assert result.created
    assert_saga_status(result, "COMPLETED")
    [again] = fire_and_wait("testing_helpers_order", {"order_id": "F", "amount": 7})
    assert again.saga_id == result.saga_id
    assert not again.created
    assert fire_and_wait("testing_helpers_order", {"order_id": "G", "ignore": True}) == []


def test_fire_and_wait_raises_for_an_unknown_source(sagaz_config: SagaConfig) -> None:
    with pytest.raises(UnknownSourceError):
        fire_and_wait("testing_helpers_nobody_listens", {})


# -- failure messages ------------------------------------------------------------


def test_failure_messages_name_the_difference_and_show_the_timeline(
    sagaz_config: SagaConfig,
) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "H", "amount": 500})
    recorded = history(result)
    with pytest.raises(AssertionError) as status_error:
        recorded.assert_status("COMPLETED")
    message = str(status_error.value)
    assert "expected status COMPLETED, recorded COMPENSATED" in message
    assert "step_failed charge (attempt 1): PaymentDeclinedError" in message

    with pytest.raises(AssertionError, match=r"missing \['charge'\]"):
        recorded.assert_steps_completed(["reserve", "charge"])
    with pytest.raises(AssertionError, match=r"unexpected \['reserve'\]"):
        recorded.assert_compensated_in_order([])
    with pytest.raises(AssertionError, match="never to start"):
        recorded.assert_not_run("reserve", "ship")


def test_order_mismatch_is_reported_as_such(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "I", "amount": 1, "ship_fails": True})
    with pytest.raises(AssertionError, match="same steps, different order"):
        assert_compensated_in_order(history(result), ["reserve", "charge"])
    with pytest.raises(AssertionError, match="same steps, different order"):
        assert_compensated_in_order(result, ["reserve", "charge"])
    with pytest.raises(AssertionError, match="same steps, different order"):
        assert_steps_completed(result, ["charge", "reserve"], ordered=True)


def test_result_assertions_describe_the_result(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "J", "amount": 500})
    with pytest.raises(AssertionError) as error:
        assert_saga_status(result, "COMPLETED")
    assert "expected status COMPLETED, got COMPENSATED" in str(error.value)
    assert "failed step 'charge'" in str(error.value)


def test_bad_arguments_get_clear_errors(sagaz_config: SagaConfig) -> None:
    result = run_saga(HelperOrderSaga, {"order_id": "K", "amount": 1})
    with pytest.raises(ValueError, match="unknown saga status 'DONE'; use one of PENDING"):
        assert_saga_status(result, "DONE")
    with pytest.raises(TypeError, match="not the string 'reserve'"):
        assert_steps_completed(result, "reserve")
    with pytest.raises(TypeError, match="SagaResult or a SagaHistory, got dict"):
        assert_saga_status({"status": "COMPLETED"}, "COMPLETED")  # type: ignore[arg-type]
