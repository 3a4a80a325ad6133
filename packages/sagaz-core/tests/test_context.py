"""SagaContextManager scopes and correlation ids."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from typing import Any

import pytest

from sagaz.core import (
    CORRELATION_ID_HEADER,
    Saga,
    SagaConfig,
    SagaContextManager,
    correlation_id_from_header,
    current_correlation_id,
    current_step,
    generate_correlation_id,
    is_valid_correlation_id,
    start_saga,
)

pytestmark = pytest.mark.usefixtures("isolated_config")


# -- get / set / scope -------------------------------------------------------------


def test_scope_sets_values_and_restores_on_exit() -> None:
    assert SagaContextManager.get("user") is None
    assert SagaContextManager.get("user", "nobody") == "nobody"
    with SagaContextManager.scope(user="ann", correlation_id="c-1"):
        assert SagaContextManager.get("user") == "ann"
        SagaContextManager.set("tenant", "t1")
        assert SagaContextManager.snapshot() == {
            "user": "ann",
            "correlation_id": "c-1",
            "tenant": "t1",
        }
        with SagaContextManager.scope(user="bob"):
            # A nested scope starts fresh and hides the outer values.
            assert SagaContextManager.get("user") == "bob"
            assert SagaContextManager.get("tenant") is None
        assert SagaContextManager.get("user") == "ann"
        assert SagaContextManager.get("tenant") == "t1"
    assert SagaContextManager.snapshot() == {}


def test_scope_is_restored_when_the_block_raises() -> None:
    with pytest.raises(KeyError), SagaContextManager.scope(correlation_id="c-err"):
        raise KeyError("x")
    assert current_correlation_id() is None


def test_snapshot_is_a_copy() -> None:
    with SagaContextManager.scope(a=1):
        snap = SagaContextManager.snapshot()
        snap["a"] = 2
        assert SagaContextManager.get("a") == 1


async def test_scopes_are_isolated_between_concurrent_tasks() -> None:
    seen: dict[str, list[Any]] = {}

    async def request(cid: str) -> None:
        with SagaContextManager.scope(correlation_id=cid):
            values = []
            for _ in range(5):
                await asyncio.sleep(0.001)
                values.append(current_correlation_id())
            SagaContextManager.set("last", cid)
            await asyncio.sleep(0.001)
            values.append(SagaContextManager.get("last"))
            seen[cid] = values

    await asyncio.gather(*(request(f"req-{i}") for i in range(10)))
    for cid, values in seen.items():
        assert values == [cid] * 6
    assert current_correlation_id() is None
    assert SagaContextManager.get("last") is None


async def test_set_in_a_task_does_not_leak_to_its_parent() -> None:
    async def child() -> str | None:
        SagaContextManager.set("correlation_id", "child")
        return current_correlation_id()

    with SagaContextManager.scope(correlation_id="parent"):
        assert await asyncio.create_task(child()) == "child"
        assert current_correlation_id() == "parent"


async def test_to_thread_sees_the_scope_but_a_plain_thread_does_not() -> None:
    with SagaContextManager.scope(correlation_id="thread-test"):
        assert await asyncio.to_thread(current_correlation_id) == "thread-test"

        seen: list[str | None] = []
        thread = threading.Thread(target=lambda: seen.append(current_correlation_id()))
        thread.start()
        thread.join()
        assert seen == [None]

        # A thread that runs a copy of the context sees it; its writes stay there.
        ctx = contextvars.copy_context()
        seen.clear()

        def in_copy() -> None:
            seen.append(current_correlation_id())
            SagaContextManager.set("correlation_id", "changed-in-thread")

        thread = threading.Thread(target=ctx.run, args=(in_copy,))
        thread.start()
        thread.join()
        assert seen == ["thread-test"]
        assert current_correlation_id() == "thread-test"


def test_threads_have_separate_scopes() -> None:
    barrier = threading.Barrier(4)
    seen: dict[int, list[str | None]] = {}

    def worker(n: int) -> None:
        with SagaContextManager.scope(correlation_id=f"t-{n}"):
            barrier.wait()
            seen[n] = [current_correlation_id()]
            barrier.wait()
            seen[n].append(current_correlation_id())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {n: [f"t-{n}", f"t-{n}"] for n in range(4)}


def test_a_non_string_correlation_id_in_the_scope_is_ignored() -> None:
    with SagaContextManager.scope(correlation_id=123):
        assert current_correlation_id() is None


# -- correlation ids ------------------------------------------------------------------


def test_generated_ids_are_uuid4_and_valid() -> None:
    ids = {generate_correlation_id() for _ in range(20)}
    assert len(ids) == 20
    for cid in ids:
        assert uuid.UUID(cid).version == 4
        assert is_valid_correlation_id(cid)


@pytest.mark.parametrize(
    "value",
    ["abc", "ABC-123_x.y:z", "a" * 128, "0", str(uuid.uuid4()), "trace:span.1-2_3"],
)
def test_valid_correlation_ids(value: str) -> None:
    assert is_valid_correlation_id(value)
    assert correlation_id_from_header(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 129,
        "abc\r\nX-Evil: 1",
        "abc\nX-Evil: 1",
        "abc\n",
        "abc\r",
        "has space",
        "semi;colon",
        "slash/",
        "<script>",
        "caf\u00e9",
        "null\x00byte",
        "tab\t",
    ],
)
def test_invalid_correlation_ids_are_replaced_by_a_new_uuid(value: str) -> None:
    assert not is_valid_correlation_id(value)
    replacement = correlation_id_from_header(value)
    assert replacement != value
    assert uuid.UUID(replacement).version == 4


def test_non_strings_are_not_valid_correlation_ids() -> None:
    for value in (None, 123, b"abc", ["abc"]):
        assert not is_valid_correlation_id(value)
    assert uuid.UUID(correlation_id_from_header(None)).version == 4
    assert CORRELATION_ID_HEADER == "X-Correlation-ID"


# -- sagas store the scope's correlation id ---------------------------------------------


async def test_a_saga_run_in_a_scope_stores_its_correlation_id(config: SagaConfig) -> None:
    seen: list[str | None] = []

    async def a(ctx: dict[str, Any]) -> None:
        seen.append(current_step().correlation_id)
        seen.append(current_correlation_id())

    def b(ctx: dict[str, Any]) -> None:  # runs in a worker thread
        seen.append(current_step().correlation_id)
        seen.append(current_correlation_id())

    saga = Saga(name="ctx-scope", config=config).add_step("a", a).add_step("b", b)
    with SagaContextManager.scope(correlation_id="req-42"):
        result = await saga.run()

    assert result.correlation_id == "req-42"
    assert seen == ["req-42"] * 4
    record = await config.storage.load(result.saga_id)
    assert record is not None
    assert record.correlation_id == "req-42"
    found = await config.storage.list_sagas()
    assert [r.saga_id for r in found if r.correlation_id == "req-42"] == [result.saga_id]


async def test_an_explicit_correlation_id_wins_and_none_is_stored_outside_a_scope(
    config: SagaConfig,
) -> None:
    saga = Saga(name="ctx-explicit", config=config).add_step("a", lambda ctx: None)
    with SagaContextManager.scope(correlation_id="from-scope"):
        explicit = await saga.run(correlation_id="explicit")
    outside = await saga.run()
    assert explicit.correlation_id == "explicit"
    assert outside.correlation_id is None
    record = await config.storage.load(outside.saga_id)
    assert record is not None
    assert record.correlation_id is None


async def test_start_saga_in_a_scope_stores_its_correlation_id(config: SagaConfig) -> None:
    saga = Saga(name="ctx-start", config=config).add_step("a", lambda ctx: None)
    with SagaContextManager.scope(correlation_id="req-start"):
        saga_id, created = await start_saga(saga, {}, run=False)
    record = await config.storage.load(saga_id)
    assert created
    assert record is not None
    assert record.correlation_id == "req-start"
