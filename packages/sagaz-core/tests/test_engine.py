"""The engine on sequential sagas: running steps, merging results, recording, results,
the durable-context rule and idempotency."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sagaz_core_test_sagas import fast_config

from sagaz.core import (
    ContextNotSerializableError,
    InMemorySagaStorage,
    RetryPolicy,
    Saga,
    SagaConfig,
    SagaError,
    SagaStatus,
    SagaStorage,
    StepStatus,
    TransitionKind,
    current_step,
    emit_event,
)

pytestmark = pytest.mark.usefixtures("isolated_config")

K = TransitionKind


def kinds(record: Any) -> list[tuple[str, str | None]]:
    return [(h.kind.value, h.step) for h in record.history]


# -- running steps -----------------------------------------------------------------


async def test_sync_steps_run_in_a_worker_thread_and_async_ones_on_the_loop(
    config: SagaConfig,
) -> None:
    threads: dict[str, int] = {}

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        threads["reserve"] = threading.get_ident()
        return {"reservation": f"R-{ctx['order']}"}

    def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        threads["charge"] = threading.get_ident()
        # A plain step sees the results of the steps before it.
        return {"payment": f"P-{ctx['reservation']}"}

    saga = Saga(name="eng-sync-async", config=config)
    saga.add_step("reserve", reserve).add_step("charge", charge)
    loop_thread = threading.get_ident()
    result = await saga.run({"order": 7})

    assert result.status is SagaStatus.COMPLETED
    assert threads["reserve"] == loop_thread
    assert threads["charge"] != loop_thread
    assert result.context == {"order": 7, "reservation": "R-7", "payment": "P-R-7"}
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.context == result.context
    assert record.steps["reserve"].result == {"reservation": "R-7"}
    assert record.steps["charge"].result == {"payment": "P-R-7"}


async def test_step_returning_none_leaves_the_context_and_later_results_override(
    config: SagaConfig,
) -> None:
    async def nothing(ctx: dict[str, Any]) -> None:
        return None

    async def override(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"amount": ctx["amount"] * 2}

    saga = Saga(name="eng-merge", config=config).add_step("nothing", nothing)
    saga.add_step("override", override)
    result = await saga.run({"amount": 5})
    assert result.context == {"amount": 10}
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["nothing"].status is StepStatus.COMPLETED
    assert record.steps["nothing"].result == {}


async def test_async_callable_object_is_awaited(config: SagaConfig) -> None:
    class Step:
        async def __call__(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return {"thread": threading.get_ident()}

    saga = Saga(name="eng-callable", config=config).add_step("call", Step())
    assert saga.definition.steps["call"].action_is_async
    result = await saga.run()
    assert result.context["thread"] == threading.get_ident()


async def test_sync_step_may_return_an_awaitable(config: SagaConfig) -> None:
    async def later() -> dict[str, Any]:
        return {"late": True}

    def step(ctx: dict[str, Any]) -> Any:
        return later()

    result = await Saga(name="eng-awaitable", config=config).add_step("s", step).run()
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"late": True}


async def test_step_returning_a_non_dict_fails_clearly(config: SagaConfig) -> None:
    undone: list[str] = []

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    async def release(ctx: dict[str, Any]) -> None:
        undone.append("reserve")

    async def bad(ctx: dict[str, Any]) -> Any:
        return ["not", "a", "dict"]

    saga = Saga(name="eng-non-dict", config=config)
    saga.add_step("reserve", reserve, release)
    saga.add_step("bad", bad, retry=RetryPolicy(max_attempts=3, backoff_base=0))
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "bad"
    assert result.error is not None
    assert result.error.startswith("TypeError: step 'bad' returned a list")
    assert "return a dict" in result.error
    assert isinstance(result.exception, TypeError)
    assert undone == ["reserve"]
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["bad"].status is StepStatus.FAILED
    assert record.steps["bad"].error == result.error
    assert record.steps["bad"].attempts == 1  # a programming error is not retried
    assert "reserved" in record.context


async def test_current_step_gives_a_stable_step_key(config: SagaConfig) -> None:
    seen: list[Any] = []

    async def first(ctx: dict[str, Any]) -> None:
        seen.append(current_step())

    def second(ctx: dict[str, Any]) -> None:
        seen.append(current_step())

    saga = Saga(name="eng-current-step", config=config)
    saga.add_step("first", first).add_step("second", second)
    result = await saga.run(saga_id="fixed-id-1")

    assert result.saga_id == "fixed-id-1"
    assert [(s.step, s.attempt, s.compensating) for s in seen] == [
        ("first", 1, False),
        ("second", 1, False),
    ]
    assert [s.step_key for s in seen] == ["fixed-id-1:first", "fixed-id-1:second"]
    assert all(s.saga_id == "fixed-id-1" and s.saga_name == "eng-current-step" for s in seen)
    with pytest.raises(RuntimeError, match="only available inside a running saga step"):
        current_step()


async def test_context_must_be_a_mapping(config: SagaConfig) -> None:
    saga = Saga(name="eng-context-type", config=config).add_step("a", lambda ctx: None)
    with pytest.raises(TypeError, match="must be a dict"):
        await saga.run([("a", 1)])  # type: ignore[arg-type]
    assert await config.storage.list_sagas() == []


# -- what is recorded ----------------------------------------------------------------


async def test_each_transition_is_recorded_before_the_next_step_runs(
    any_storage: SagaStorage,
) -> None:
    config = fast_config(any_storage)
    seen: dict[str, Any] = {}

    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": "R1"}

    async def charge(ctx: dict[str, Any]) -> dict[str, Any]:
        record = await any_storage.load(current_step().saga_id)
        assert record is not None
        seen["status"] = record.status
        seen["steps"] = {n: s.status for n, s in record.steps.items()}
        seen["reserve_result"] = record.steps["reserve"].result
        return {"payment": "P1"}

    saga = Saga(name="eng-durable-order", config=config)
    saga.add_step("reserve", reserve).add_step("charge", charge)
    result = await saga.run({"order": 1})

    assert seen == {
        "status": SagaStatus.RUNNING,
        "steps": {"reserve": StepStatus.COMPLETED, "charge": StepStatus.RUNNING},
        "reserve_result": {"reservation": "R1"},
    }
    record = await any_storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert kinds(record) == [
        ("saga_started", None),
        ("step_started", "reserve"),
        ("step_completed", "reserve"),
        ("step_started", "charge"),
        ("step_completed", "charge"),
        ("saga_completed", None),
    ]
    assert [h.seq for h in record.history] == list(range(1, 7))
    assert record.context == {"order": 1, "reservation": "R1", "payment": "P1"}
    assert record.completed_steps == ["reserve", "charge"]
    assert record.error is None
    assert record.failed_step is None
    listed = await any_storage.list_sagas()
    assert [r.saga_id for r in listed] == [result.saga_id]
    assert listed[0].status is SagaStatus.COMPLETED


async def test_result_fields_of_a_completed_saga(config: SagaConfig) -> None:
    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"a": 1}

    def b(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"b": 2}

    saga = Saga(name="eng-result-ok", config=config).add_step("a", a).add_step("b", b)
    result = await saga.run({"x": 0})

    uuid.UUID(result.saga_id)
    assert result.saga_name == "eng-result-ok"
    assert result.status is SagaStatus.COMPLETED
    assert result.succeeded
    assert result.context == {"x": 0, "a": 1, "b": 2}
    assert result.completed_steps == ["a", "b"]
    assert result.compensated_steps == []
    assert result.failed_step is None
    assert result.error is None
    assert result.exception is None
    assert result.created is True
    assert set(result.timings) == {"a", "b", "total"}
    assert result.timings["a"] >= 0.009
    assert result.timings["total"] >= result.timings["a"] + result.timings["b"]
    data = result.to_dict()
    assert data["state"] == "COMPLETED"
    assert data["saga_id"] == result.saga_id
    assert data["completed_steps"] == ["a", "b"]


async def test_result_fields_of_a_compensated_saga(config: SagaConfig) -> None:
    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"a": 1}

    async def undo_a(ctx: dict[str, Any]) -> None:
        return None

    async def b(ctx: dict[str, Any]) -> None:
        raise ValueError("card declined")

    saga = Saga(name="eng-result-failed", config=config)
    saga.add_step("a", a, undo_a).add_step("b", b)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert not result.succeeded
    assert result.completed_steps == ["a"]
    assert result.compensated_steps == ["a"]
    assert result.failed_step == "b"
    assert result.error == "ValueError: card declined"
    assert isinstance(result.exception, ValueError)
    assert {"a", "compensate:a", "total"} <= set(result.timings)
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert record.failed_step == "b"
    assert record.error == "ValueError: card declined"
    assert record.steps["b"].error == "ValueError: card declined"


async def test_events_emitted_by_a_step_are_written_with_its_completion(
    any_storage: SagaStorage,
) -> None:
    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        emit_event("stock.reserved", {"sku": "X1", "qty": 2})
        return {"reservation": "R1"}

    async def charge(ctx: dict[str, Any]) -> None:
        emit_event("payment.attempted", {"amount": 5})  # dropped: the step fails
        raise ValueError("declined")

    config = fast_config(any_storage, outbox=True)
    saga = Saga(name="eng-emit", config=config)
    saga.add_step("reserve", reserve, lambda ctx: None).add_step("charge", charge)
    result = await saga.run(correlation_id="corr-emit")
    assert result.status is SagaStatus.COMPENSATED

    events = [r.event for r in await any_storage.list_outbox()]
    types = [e.event_type for e in events]
    assert types == [
        "saga.started",
        "saga.step_completed",
        "stock.reserved",
        "saga.compensated",
    ]
    assert all(e.saga_id == result.saga_id for e in events)
    assert all(e.correlation_id == "corr-emit" for e in events)
    assert events[2].payload == {"sku": "X1", "qty": 2}
    assert events[1].payload["step"] == "reserve"
    assert events[1].payload["result"] == {"reservation": "R1"}


async def test_emit_event_needs_the_outbox_and_a_step(config: SagaConfig) -> None:
    async def step(ctx: dict[str, Any]) -> None:
        emit_event("x.happened")

    result = await Saga(name="eng-emit-off", config=config).add_step("s", step).run()
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "needs the transactional outbox" in result.error
    with pytest.raises(RuntimeError, match="only available inside a running saga step"):
        emit_event("x.happened")

    async def bad_type(ctx: dict[str, Any]) -> None:
        emit_event("")

    async def bad_payload(ctx: dict[str, Any]) -> None:
        emit_event("x.happened", {"at": dt.date(2030, 1, 1)})

    outbox_config = fast_config(config.storage, outbox=True)
    r1 = await Saga(name="eng-emit-type", config=outbox_config).add_step("s", bad_type).run()
    r2 = await Saga(name="eng-emit-json", config=outbox_config).add_step("s", bad_payload).run()
    assert r1.error is not None
    assert r1.error.startswith("ValueError: emit_event needs")
    assert isinstance(r2.exception, ContextNotSerializableError)
    assert r2.exception.key == "at"


# -- the durable-context rule -----------------------------------------------------------


async def test_non_json_step_result_fails_the_step_with_durable_storage(
    sqlite_config: SagaConfig,
) -> None:
    async def reserve(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reservation": "R1"}

    async def release(ctx: dict[str, Any]) -> None:
        return None

    async def schedule(ctx: dict[str, Any]) -> dict[str, Any]:
        return {"ok": 1, "ship_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)}

    saga = Saga(name="eng-durable-json", config=sqlite_config)
    saga.add_step("reserve", reserve, release).add_step("schedule", schedule)
    result = await saga.run({"order": 1})

    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "schedule"
    assert isinstance(result.exception, ContextNotSerializableError)
    assert result.exception.key == "ship_at"
    assert result.error is not None
    assert "'ship_at'" in result.error
    assert "datetime" in result.error
    assert "ship_at" not in result.context
    assert "ok" not in result.context
    record = await sqlite_config.storage.load(result.saga_id)
    assert record is not None
    assert record.steps["schedule"].status is StepStatus.FAILED
    assert "ContextNotSerializableError" in (record.steps["schedule"].error or "")
    assert record.context == {"order": 1, "reservation": "R1"}


async def test_non_json_initial_context_raises_before_anything_is_recorded(
    sqlite_config: SagaConfig,
) -> None:
    ran: list[str] = []
    saga = Saga(name="eng-durable-initial", config=sqlite_config)
    saga.add_step("a", lambda ctx: ran.append("a"))
    with pytest.raises(ContextNotSerializableError, match="'when'") as info:
        await saga.run({"order": 1, "when": dt.date(2030, 1, 1)})
    assert info.value.key == "when"
    assert ran == []
    await sqlite_config.storage.ensure_open()
    assert await sqlite_config.storage.list_sagas() == []


async def test_memory_storage_accepts_non_json_values(config: SagaConfig) -> None:
    marker = object()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        assert ctx["obj"] is marker
        return {"when": dt.date(2030, 1, 1), "obj2": marker}

    result = await Saga(name="eng-memory-json", config=config).add_step("a", a).run({"obj": marker})
    assert result.status is SagaStatus.COMPLETED
    assert result.context["when"] == dt.date(2030, 1, 1)
    assert result.context["obj2"] is marker


# -- idempotency ---------------------------------------------------------------------


async def test_run_with_an_idempotency_key_twice_runs_once(any_storage: SagaStorage) -> None:
    config = fast_config(any_storage)
    calls: list[str] = []

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": ctx["n"]}

    def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b")
        return {"b": 2}

    saga = Saga(name="eng-idem", config=config).add_step("a", a).add_step("b", b)
    first = await saga.run({"n": 1}, idempotency_key="order-1")
    second = await saga.run({"n": 99}, idempotency_key="order-1")

    assert first.created is True
    assert second.created is False
    assert second.saga_id == first.saga_id
    assert second.status is SagaStatus.COMPLETED
    assert second.context == {"n": 1, "a": 1, "b": 2}
    assert second.completed_steps == ["a", "b"]
    assert calls == ["a", "b"]
    records = await any_storage.list_sagas()
    assert [r.saga_id for r in records] == [first.saga_id]
    assert records[0].idempotency_key == "order-1"
    # Another key starts another saga.
    third = await saga.run({"n": 3}, idempotency_key="order-2")
    assert third.created
    assert third.saga_id != first.saga_id
    assert calls == ["a", "b", "a", "b"]


async def test_idempotency_keys_are_per_saga_name(config: SagaConfig) -> None:
    one = Saga(name="eng-idem-one", config=config).add_step("a", lambda ctx: None)
    two = Saga(name="eng-idem-two", config=config).add_step("a", lambda ctx: None)
    r1 = await one.run(idempotency_key="k")
    r2 = await two.run(idempotency_key="k")
    assert r1.created
    assert r2.created
    assert r1.saga_id != r2.saga_id


async def test_fifty_concurrent_runs_with_one_key_make_one_saga(any_storage: SagaStorage) -> None:
    config = fast_config(any_storage)
    calls: list[int] = []

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append(ctx["n"])
        await asyncio.sleep(0.01)
        return {"done": True}

    async def b(ctx: dict[str, Any]) -> None:
        return None

    saga = Saga(name="eng-idem-race", config=config).add_step("a", a).add_step("b", b)
    results = await asyncio.gather(
        *(saga.run({"n": n}, idempotency_key="same-key") for n in range(50))
    )

    ids = {r.saga_id for r in results}
    assert len(ids) == 1
    assert sum(r.created for r in results) == 1
    assert len(calls) == 1
    records = await any_storage.list_sagas()
    assert len(records) == 1
    assert records[0].status is SagaStatus.COMPLETED
    assert records[0].saga_id in ids
    winner = next(r for r in results if r.created)
    assert winner.status is SagaStatus.COMPLETED
    assert records[0].context["n"] == calls[0] == winner.context["n"]


async def test_reusing_a_saga_id_never_overwrites_the_recorded_saga(
    any_storage: SagaStorage,
) -> None:
    config = fast_config(any_storage)
    calls: list[int] = []

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append(ctx["n"])
        return {"a": ctx["n"]}

    saga = Saga(name="eng-same-id", config=config).add_step("a", a)
    first = await saga.run({"n": 1}, saga_id="fixed-id")
    assert first.status is SagaStatus.COMPLETED

    with pytest.raises(SagaError, match="fixed-id"):
        await saga.run({"n": 2}, saga_id="fixed-id")

    assert calls == [1]
    record = await any_storage.load("fixed-id")
    assert record is not None
    assert record.context == {"n": 1, "a": 1}
    assert [h.kind.value for h in record.history].count("saga_started") == 1
    assert len(await any_storage.list_sagas()) == 1


async def test_saga_without_config_uses_the_global_one(isolated_config: SagaConfig) -> None:
    saga = Saga(name="eng-global").add_step("a", lambda ctx: {"a": 1})
    result = await saga.run()
    assert saga.config is isolated_config
    assert isinstance(isolated_config.storage, InMemorySagaStorage)
    record = await isolated_config.storage.load(result.saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED


def test_a_script_using_sqlite_storage_exits_without_closing_it(tmp_path: Path) -> None:
    # The README's quick start: asyncio.run(saga.run(...)) on sqlite:///..., nothing
    # closed explicitly. The interpreter must still exit when the script ends.
    script = textwrap.dedent(
        """
        import asyncio
        from sagaz.core import Saga, SagaConfig

        async def reserve(ctx):
            return {"reserved": True}

        config = SagaConfig(storage_url="sqlite:///sagas.db")
        saga = Saga(name="script", config=config).add_step("reserve", reserve)
        print(asyncio.run(saga.run({"order_id": "A-1"})).status.value)
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script ran the saga ({exc.stdout!r}) but never exited")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "COMPLETED"


# -- sync callers: the per-process portal ----------------------------------------------------


def test_sync_code_runs_sagas_on_one_background_loop(config: SagaConfig) -> None:
    from sagaz.core.portal import get_portal, run_sync, shutdown_portal

    loops: list[int] = []

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        loops.append(id(asyncio.get_running_loop()))
        return {"thread": threading.get_ident()}

    saga = Saga(name="eng-portal", config=config).add_step("a", a)
    try:
        first = run_sync(saga.run, {"n": 1})
        second = run_sync(saga.run, {"n": 2})
        assert first.status is SagaStatus.COMPLETED
        assert second.status is SagaStatus.COMPLETED
        assert first.context["thread"] == second.context["thread"] != threading.get_ident()
        assert len(set(loops)) == 1  # one loop for every call, not one per call
        assert get_portal() is get_portal()

        # A saga started through the portal keeps running after the call returns.
        release = threading.Event()

        def slow(ctx: dict[str, Any]) -> dict[str, Any]:
            release.wait(5)
            return {"slow": True}

        background = Saga(name="eng-portal-bg", config=config).add_step("slow", slow)
        saga_id, created = run_sync(start_saga_for_portal, background)
        assert created
        assert run_sync(config.storage.load, saga_id).status is not SagaStatus.COMPLETED
        release.set()
        deadline = time.monotonic() + 5
        while run_sync(config.storage.load, saga_id).status is not SagaStatus.COMPLETED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        shutdown_portal()
    shutdown_portal()  # idempotent


async def start_saga_for_portal(saga: Saga) -> tuple[str, bool]:
    from sagaz.core import start_saga

    return await start_saga(saga, {})
