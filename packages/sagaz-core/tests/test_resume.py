"""start_saga / resume_saga, and resuming after the process was killed (SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sagaz_core_test_sagas as helpers
from sagaz_core_test_sagas import (
    CrashCompensationSaga,
    CrashForwardSaga,
    crash_config,
    fast_config,
    read_log,
)

from sagaz.core import (
    Saga,
    SagaConfig,
    SagaDefinitionError,
    SagaNotFoundError,
    SagaRecord,
    SagaStatus,
    SagaStorage,
    SagaWorker,
    StepStatus,
    UnknownSagaError,
    action,
    cancel_saga,
    fire_event,
    get_runner,
    import_saga_modules,
    recover_unfinished,
    registry,
    resume_saga,
    start_saga,
    storage_from_url,
    trigger,
)
from sagaz.core.records import NewSaga

pytestmark = pytest.mark.usefixtures("isolated_config")


def journal_saga(name: str, config: SagaConfig, calls: list[str]) -> Saga:
    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": ctx["n"] + 1}

    def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b")
        return {"b": ctx["a"] + 1}

    return Saga(name=name, config=config).add_step("a", a).add_step("b", b)


# -- start_saga / resume_saga --------------------------------------------------------------


async def test_start_saga_records_pending_and_nothing_runs_until_resumed(
    any_storage: SagaStorage,
) -> None:
    config = fast_config(any_storage)
    calls: list[str] = []
    saga = journal_saga("res-start-later", config, calls)

    saga_id, created = await start_saga(saga, {"n": 1}, run=False)
    await asyncio.sleep(0.05)

    assert created
    assert calls == []
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.PENDING
    assert record.steps == {}
    assert record.context == {"n": 1}
    assert len(get_runner()) == 0

    result = await resume_saga(saga_id, config)  # found by name in the registry

    assert result.saga_id == saga_id
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"n": 1, "a": 2, "b": 3}
    assert calls == ["a", "b"]
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert [h.kind.value for h in record.history][:2] == ["saga_started", "step_started"]


async def test_start_saga_runs_in_the_background(any_storage: SagaStorage) -> None:
    config = fast_config(any_storage)
    calls: list[str] = []
    saga = journal_saga("res-start-now", config, calls)

    saga_id, created = await start_saga(saga, {"n": 10})
    assert created
    await get_runner().drain()

    assert calls == ["a", "b"]
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert record.context == {"n": 10, "a": 11, "b": 12}


def count_calls(storage: SagaStorage, *names: str) -> dict[str, int]:
    """Count the calls of ``storage``'s methods ``names`` (they still run for real)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(storage, name)

        def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _real(*args, **kwargs)

        setattr(storage, name, counted)
    return counts


async def test_a_saga_started_to_run_here_is_created_leased_and_never_claimed(
    any_storage: SagaStorage,
) -> None:
    config = fast_config(any_storage)
    calls: list[str] = []
    saga = journal_saga("res-leased-start", config, calls)
    counts = count_calls(any_storage, "claim", "load", "create_saga", "record")

    saga_id, created = await start_saga(saga, {"n": 1}, idempotency_key="once")
    assert created
    assert counts == {"claim": 0, "load": 0, "create_saga": 1, "record": 0}
    # Leased to this process by the write that created it (no claim was made).
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.lease_owner == any_storage.owner_id
    assert record.lease_expires_at is not None
    await get_runner().drain()
    # A duplicate start neither runs nor leases anything.
    assert await start_saga(saga, {"n": 2}, idempotency_key="once") == (saga_id, False)
    assert len(get_runner()) == 0

    assert calls == ["a", "b"]
    assert counts["claim"] == 0
    assert counts["load"] == 1  # the test's own read above
    done = await any_storage.load(saga_id)
    assert done is not None
    assert done.status is SagaStatus.COMPLETED
    assert done.context == {"n": 1, "a": 2, "b": 3}
    assert done.lease_owner is None
    assert [h.kind.value for h in done.history][:2] == ["saga_started", "step_started"]


async def test_a_cancel_before_the_run_begins_is_honoured_by_that_run(
    memory_storage: SagaStorage,
) -> None:
    # Cancelled between its creation and the start of its run (in memory nothing awaits
    # in between, so the run has not begun): the submitted run compensates it before any
    # step runs, and cancel_saga does not claim and run it a second time.
    any_storage = memory_storage
    config = fast_config(any_storage)
    calls: list[str] = []
    saga = journal_saga("res-leased-cancel", config, calls)
    saga_id, _ = await start_saga(saga, {"n": 1})
    assert await cancel_saga(saga_id, config) is SagaStatus.PENDING  # left to the run
    await get_runner().drain()
    assert calls == []
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPENSATED
    assert saga_id not in any_storage.running_here


async def test_submit_created_refuses_a_saga_that_was_not_created_leased(
    config: SagaConfig,
) -> None:
    saga = journal_saga("res-not-leased", config, [])
    with pytest.raises(ValueError, match="leased=True"):
        get_runner().submit_created(saga, NewSaga("nl-1", saga.name, {}))
    assert len(get_runner()) == 0


class LeasedOrderSaga(Saga):
    saga_name = "res-leased-order"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": ctx["order_id"]}

    @trigger(source="res-leased-order-placed", idempotency_key="order_id")
    def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": event["order_id"]}


async def test_a_fired_event_runs_its_sagas_without_claiming_them(any_storage: SagaStorage) -> None:
    config = fast_config(any_storage)
    counts = count_calls(any_storage, "claim", "record_trigger_event")
    source = "res-leased-order-placed"
    fired = await fire_event(source, {"order_id": "L1"}, config=config, wait=True)
    assert counts == {"claim": 0, "record_trigger_event": 1}
    (saga_id,) = fired.saga_ids
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert record.lease_owner is None
    assert record.context == {"order_id": "L1", "reserved": "L1"}
    again = await fire_event(source, {"order_id": "L1"}, config=config)
    assert again.duplicate
    assert len(get_runner()) == 0
    assert counts["claim"] == 0


async def test_a_started_saga_whose_creator_died_is_taken_over_by_a_worker(
    sqlite_url: str,
) -> None:
    calls: list[str] = []
    saga = journal_saga("res-leased-dead", fast_config(), calls)
    dead = fast_config(storage_from_url(sqlite_url), lease_seconds=0.5)  # the creator
    alive = fast_config(storage_from_url(sqlite_url), lease_seconds=0.5)  # a worker
    try:
        saga_id, created = await start_saga(saga.with_config(dead), {"n": 7})
        assert created
        # The creator "dies" before its run begins: the task is cancelled unstarted, so
        # nothing is recorded and no lease is released: only its expiry frees the saga.
        await get_runner().shutdown()
        record = await alive.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.PENDING
        assert record.history == []
        assert record.lease_owner == dead.storage.owner_id
        assert record.lease_expires_at is not None
        assert calls == []
        assert await alive.storage.claim(saga_id) is None  # a live lease

        worker = SagaWorker(alive, poll_interval=0.05, grace_period=1.0)
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        while (await alive.storage.load(saga_id)).status is not SagaStatus.COMPLETED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the worker never took the saga over"
            await asyncio.sleep(0.02)
        finished = time.time()
        worker.stop()
        stats = await running

        assert finished >= record.lease_expires_at  # not before the lease ran out
        assert stats.claimed == 1
        assert stats.completed == 1
        assert calls == ["a", "b"]
        final = await alive.storage.load(saga_id)
        assert final is not None
        assert final.context == {"n": 7, "a": 8, "b": 9}
        assert final.lease_owner is None
    finally:
        await dead.storage.close()
        await alive.storage.close()


async def test_start_saga_with_a_known_key_returns_the_first_saga(config: SagaConfig) -> None:
    calls: list[str] = []
    saga = journal_saga("res-start-key", config, calls)
    first, created_first = await start_saga(saga, {"n": 1}, idempotency_key="k1")
    second, created_second = await start_saga(saga, {"n": 2}, idempotency_key="k1")
    await get_runner().drain()
    assert (created_first, created_second) == (True, False)
    assert first == second
    assert calls == ["a", "b"]
    assert len(await config.storage.list_sagas()) == 1


async def test_resume_saga_finds_a_declarative_class_by_name(config: SagaConfig) -> None:
    saga_id, _ = await start_saga(helpers.DiamondSaga(config=config), {}, run=False)
    result = await resume_saga(saga_id, config)
    assert result.status is SagaStatus.COMPLETED
    assert sorted(result.completed_steps) == ["a", "b", "c", "d"]


async def test_resume_saga_uses_the_global_config(isolated_config: SagaConfig) -> None:
    calls: list[str] = []
    saga = journal_saga("res-global", isolated_config, calls)
    saga_id, _ = await start_saga(saga, {"n": 0}, run=False)
    result = await resume_saga(saga_id)
    assert result.status is SagaStatus.COMPLETED
    assert calls == ["a", "b"]


async def test_resume_saga_of_an_unknown_id(config: SagaConfig) -> None:
    with pytest.raises(SagaNotFoundError, match="no saga 'nope'"):
        await resume_saga("nope", config)


async def test_resume_saga_of_an_unregistered_name(config: SagaConfig) -> None:
    await config.storage.create_saga(NewSaga("orphan-1", "res-nobody-defines-this", {}))
    with pytest.raises(UnknownSagaError, match="'res-nobody-defines-this'"):
        await resume_saga("orphan-1", config)


async def test_resuming_a_finished_saga_runs_nothing(config: SagaConfig) -> None:
    calls: list[str] = []
    saga = journal_saga("res-finished", config, calls)
    done = await saga.run({"n": 1})
    again = await resume_saga(done.saga_id, config)
    assert again.status is SagaStatus.COMPLETED
    assert again.context == done.context
    assert calls == ["a", "b"]


async def test_recover_unfinished_submits_pending_sagas(config: SagaConfig) -> None:
    calls: list[str] = []
    saga = journal_saga("res-recover", config, calls)
    ids = [(await start_saga(saga, {"n": n}, run=False))[0] for n in range(3)]
    submitted = await recover_unfinished(config)
    await get_runner().drain()
    assert sorted(submitted) == sorted(ids)
    assert calls.count("a") == 3
    for saga_id in ids:
        record = await config.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.COMPLETED


async def test_resume_after_an_interrupted_run_in_process(config: SagaConfig) -> None:
    # The task running the saga dies inside step 2 (as in a crash): what was recorded
    # lets a resume skip step 1, re-run step 2 and go on.
    calls: list[str] = []
    gate = asyncio.Event()

    async def one(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("one")
        return {"one": 1}

    async def two(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("two")
        if calls.count("two") == 1:
            gate.set()
            await asyncio.sleep(10)
        return {"two": ctx["one"] + 1}

    async def three(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("three")
        return {"three": ctx["two"] + 1}

    saga = Saga(name="res-interrupted", config=config)
    saga.add_step("one", one).add_step("two", two).add_step("three", three)
    task = asyncio.create_task(saga.run(saga_id="interrupted-1"))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = await config.storage.load("interrupted-1")
    assert record is not None
    assert record.status is SagaStatus.RUNNING
    assert record.steps["one"].status is StepStatus.COMPLETED
    assert record.steps["two"].status is StepStatus.RUNNING

    result = await resume_saga("interrupted-1", config)
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"one": 1, "two": 2, "three": 3}
    assert calls == ["one", "two", "two", "three"]
    record = await config.storage.load("interrupted-1")
    assert record is not None
    assert record.recoveries == 1
    assert "saga_resumed" in [h.kind.value for h in record.history]


# -- killed with SIGKILL, resumed from SQLite ---------------------------------------------

HELPER = Path(helpers.__file__).resolve()
LEASE_SECONDS = 1.0


async def poll(
    check: Callable[[], Awaitable[Any]], proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> Any:
    """Poll ``check`` until it returns something truthy (the child must stay alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the child exited early ({proc.returncode}): {err.decode()}")
        await asyncio.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting for the child")


async def wait_for_lease_expiry(storage: SagaStorage, saga_id: str) -> SagaRecord:
    deadline = time.monotonic() + LEASE_SECONDS * 10
    while True:
        record = await storage.load(saga_id)
        assert record is not None
        expires = record.lease_expires_at
        if expires is None or expires < time.time():
            return record
        assert time.monotonic() < deadline, f"lease of {saga_id} never expired: {record}"
        await asyncio.sleep(0.05)


def start_child(
    kind: str, db: Path, log: Path, block: Path, lease: float = LEASE_SECONDS
) -> subprocess.Popen[bytes]:
    block.write_text("blocked")
    return subprocess.Popen(
        [sys.executable, str(HELPER), kind, str(db), str(log), str(block), str(lease)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


async def test_a_saga_killed_in_step_two_resumes_from_sqlite(tmp_path: Path) -> None:
    db, log, block = tmp_path / "crash.db", tmp_path / "run.log", tmp_path / "block"
    url = f"sqlite:///{db}"
    storage = storage_from_url(url)
    proc = start_child("forward", db, log, block)
    try:

        async def step_two_running() -> SagaRecord | None:
            if not db.exists():
                return None
            for record in await storage.list_sagas():
                step = record.steps.get("step2")
                if step is not None and step.status is StepStatus.RUNNING:
                    return record
            return None

        running = await poll(step_two_running, proc)
        kill(proc)
        saga_id = running.saga_id
        assert read_log(log) == ["step1", "step2"]

        record = await storage.load(saga_id)
        assert record is not None
        assert record.saga_name == CrashForwardSaga.saga_name_of()
        assert record.status is SagaStatus.RUNNING
        assert record.steps["step1"].status is StepStatus.COMPLETED
        assert record.steps["step1"].result == {"one": 1}
        assert record.steps["step2"].status is StepStatus.RUNNING
        assert "step3" not in record.steps

        block.unlink()
        config = crash_config(url, LEASE_SECONDS)
        config.storage = storage  # one connection for the whole test
        await wait_for_lease_expiry(storage, saga_id)
        result = await resume_saga(saga_id, config)

        assert result.status is SagaStatus.COMPLETED
        assert result.context == {
            "log": str(log),
            "block": str(block),
            "one": 1,
            "two": 2,
            "three": 3,
        }
        lines = read_log(log)
        assert lines.count("step1") == 1  # skipped on resume: its recorded result was used
        assert lines.count("step2") == 2  # in flight when killed: at least once
        assert lines.count("step3") == 1
        assert lines == ["step1", "step2", "step2", "step3"]
        # Both runs of step 2 got the same step key (for the services it calls).
        assert read_log(log, keys=True) == [f"key {saga_id}:step2"] * 2
        final = await storage.load(saga_id)
        assert final is not None
        assert final.status is SagaStatus.COMPLETED
        assert final.recoveries == 1
        assert final.completed_steps == ["step1", "step2", "step3"]
        assert final.lease_owner is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        await storage.close()


async def test_a_saga_killed_while_compensating_resumes_compensating(tmp_path: Path) -> None:
    db, log, block = tmp_path / "crash.db", tmp_path / "run.log", tmp_path / "block"
    url = f"sqlite:///{db}"
    storage = storage_from_url(url)
    proc = start_child("compensation", db, log, block)
    try:

        async def undoing_s2() -> SagaRecord | None:
            if not db.exists():
                return None
            for record in await storage.list_sagas():
                step = record.steps.get("s2")
                if step is not None and step.status is StepStatus.COMPENSATING:
                    return record
            return None

        compensating = await poll(undoing_s2, proc)
        kill(proc)
        saga_id = compensating.saga_id
        assert read_log(log) == ["s1", "s2", "s3", "s4", "undo-s3", "undo-s2"]
        record = await storage.load(saga_id)
        assert record is not None
        assert record.saga_name == CrashCompensationSaga.saga_name_of()
        assert record.status is SagaStatus.COMPENSATING
        assert record.failed_step == "s4"
        assert record.steps["s3"].status is StepStatus.COMPENSATED
        assert record.steps["s2"].status is StepStatus.COMPENSATING
        assert record.steps["s1"].status is StepStatus.COMPLETED

        block.unlink()
        config = crash_config(url, LEASE_SECONDS)
        config.storage = storage
        await wait_for_lease_expiry(storage, saga_id)
        result = await resume_saga(saga_id, config)

        assert result.status is SagaStatus.COMPENSATED
        assert result.failed_step == "s4"
        assert result.compensated_steps == ["s3", "s2", "s1"]
        # As in the record (and in a run that was never interrupted).
        assert result.completed_steps == ["s1", "s2", "s3"]
        lines = read_log(log)
        assert lines == ["s1", "s2", "s3", "s4", "undo-s3", "undo-s2", "undo-s2", "undo-s1"]
        final = await storage.load(saga_id)
        assert final is not None
        assert final.status is SagaStatus.COMPENSATED
        assert final.compensated_steps == ["s3", "s2", "s1"]
        assert final.error == "StepFailedError: s4 fails on purpose"
        assert final.recoveries == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        await storage.close()


async def test_a_live_lease_keeps_another_process_from_resuming(tmp_path: Path) -> None:
    db, log, block = tmp_path / "crash.db", tmp_path / "run.log", tmp_path / "block"
    url = f"sqlite:///{db}"
    storage = storage_from_url(url)
    proc = start_child("forward", db, log, block, lease=30.0)
    try:

        async def step_two_running() -> SagaRecord | None:
            if not db.exists():
                return None
            for record in await storage.list_sagas():
                if record.steps.get("step2") and record.steps["step2"].status is StepStatus.RUNNING:
                    return record
            return None

        running = await poll(step_two_running, proc)
        config = crash_config(url, LEASE_SECONDS)
        config.storage = storage
        # The child is alive and renews its lease: resuming here runs nothing.
        result = await resume_saga(running.saga_id, config)
        assert result.status is SagaStatus.RUNNING
        assert read_log(log) == ["step1", "step2"]
        # Unblocked, the child itself finishes the saga.
        block.unlink()
        proc.communicate(timeout=20)
        assert proc.returncode == 0
        final = await storage.load(running.saga_id)
        assert final is not None
        assert final.status is SagaStatus.COMPLETED
        assert read_log(log) == ["step1", "step2", "step3"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        await storage.close()


async def test_resuming_a_saga_that_runs_in_this_process_does_not_run_it_twice(
    any_storage: SagaStorage,
) -> None:
    # resume_saga (or recover_unfinished) called while the saga is still running here:
    # a live owner holds it, so nothing may run a second time, and the first run
    # finishes normally.
    config = fast_config(any_storage)
    calls: list[str] = []
    entered = asyncio.Event()
    release = asyncio.Event()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        entered.set()
        await release.wait()
        return {"a": 1}

    async def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b")
        return {"b": 2}

    saga = Saga(name="res-live-here", config=config).add_step("a", a).add_step("b", b)
    saga_id, _ = await start_saga(saga, {})
    await entered.wait()

    second = asyncio.create_task(resume_saga(saga_id, config))
    await asyncio.sleep(0.05)
    release.set()
    (second_result,) = await asyncio.gather(second, return_exceptions=True)
    await get_runner().drain()

    assert calls == ["a", "b"], f"steps ran: {calls}"
    assert not isinstance(second_result, BaseException), repr(second_result)
    assert second_result.status in {SagaStatus.RUNNING, SagaStatus.COMPLETED}
    record = await any_storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert [h.kind.value for h in record.history].count("step_started") == 2


# -- the in-process runner, recovery and parking -------------------------------------------


async def test_runner_shutdown_leaves_sagas_recorded_for_a_later_resume(
    config: SagaConfig,
) -> None:
    calls: list[str] = []
    hang = asyncio.Event()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": 1}

    async def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("b")
        if calls.count("b") == 1:
            hang.set()
            await asyncio.sleep(10)
        return {"b": 2}

    saga = Saga(name="res-shutdown", config=config).add_step("a", a).add_step("b", b)
    saga_id, _ = await start_saga(saga, {})
    runner = get_runner()
    assert len(runner) == 1
    await hang.wait()
    await runner.shutdown()

    record = await config.storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.RUNNING
    assert record.steps["b"].status is StepStatus.RUNNING
    result = await resume_saga(saga_id, config)
    assert result.status is SagaStatus.COMPLETED
    assert calls == ["a", "b", "b"]


async def test_a_crashing_background_saga_is_logged(
    config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    saga = Saga(name="res-crash-log", config=config).add_step("a", lambda ctx: None)
    task = get_runner().submit(saga, "no-such-saga")
    await get_runner().drain()
    assert isinstance(task.exception(), SagaNotFoundError)
    errors = [r for r in caplog.records if r.name == "sagaz.runner"]
    assert len(errors) == 1
    assert "sagaz:res-crash-log:no-such-saga crashed" in errors[0].getMessage()


async def test_recover_unfinished_skips_sagas_nobody_defines(
    config: SagaConfig, caplog: pytest.LogCaptureFixture
) -> None:
    await config.storage.create_saga(NewSaga("orphan-2", "res-undefined-name", {}))
    calls: list[str] = []
    known = journal_saga("res-recover-known", config, calls)
    known_id, _ = await start_saga(known, {"n": 1}, run=False)

    submitted = await recover_unfinished(config)
    await get_runner().drain()

    assert submitted == [known_id]
    assert calls == ["a", "b"]
    orphan = await config.storage.load("orphan-2")
    assert orphan is not None
    assert orphan.status is SagaStatus.PENDING
    assert any(
        "orphan-2" in r.getMessage() and "res-undefined-name" in r.getMessage()
        for r in caplog.records
        if r.name == "sagaz.runner"
    )


async def test_a_saga_that_keeps_crashing_is_parked_as_failed(memory_storage: SagaStorage) -> None:
    config = fast_config(memory_storage, max_recoveries=1)
    calls: list[str] = []
    entered = asyncio.Event()

    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append("a")
        return {"a": 1}

    async def undo_a(ctx: dict[str, Any]) -> None:
        calls.append("undo a")

    async def crashy(ctx: dict[str, Any]) -> None:
        calls.append("crashy")
        entered.set()
        await asyncio.sleep(10)

    saga = Saga(name="res-parked", config=config).add_step("a", a, undo_a)
    saga.add_step("crashy", crashy)

    async def interrupt(run: Any) -> None:
        entered.clear()
        task = asyncio.create_task(run)
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await interrupt(saga.run(saga_id="parked-1"))  # the first "crash"
    await interrupt(resume_saga("parked-1", config))  # recovered once, crashes again
    result = await resume_saga("parked-1", config)  # max_recoveries=1: parked

    assert result.status is SagaStatus.FAILED
    assert result.error is not None
    assert "parked after 1 recoveries" in result.error
    assert calls == ["a", "crashy", "crashy"]  # nothing ran the third time, nothing undone
    record = await memory_storage.load("parked-1")
    assert record is not None
    assert record.status is SagaStatus.FAILED
    assert record.recoveries == 1
    assert record.lease_owner is None


async def test_resume_with_the_wrong_saga_definition(config: SagaConfig) -> None:
    calls: list[str] = []
    saga_id, _ = await start_saga(journal_saga("res-right", config, calls), {"n": 1}, run=False)
    wrong = helpers.DiamondSaga(config=config)
    with pytest.raises(SagaDefinitionError, match="is a 'res-right', not a 'test-diamond'"):
        await wrong.resume(saga_id)
    # The lease was released: the right definition can still run it.
    result = await resume_saga(saga_id, config)
    assert result.status is SagaStatus.COMPLETED
    assert calls == ["a", "b"]


def test_import_saga_modules_registers_their_sagas() -> None:
    imported = import_saga_modules(["sagaz_core_test_sagas", "  ", ""])
    assert imported == ["sagaz_core_test_sagas"]
    assert {"test-diamond", "test-crash-forward", "test-fragile-undo"} <= set(registry.names)
    assert registry.saga_class("test-diamond") is helpers.DiamondSaga
    with pytest.raises(ImportError):
        import_saga_modules(["no_such_module_for_sagaz_tests"])


# -- workers --------------------------------------------------------------------------------


def blocking_once_saga(name: str, calls: list[str], entered: asyncio.Event) -> Saga:
    async def a(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append(f"a {ctx['n']}")
        return {"a": ctx["n"]}

    async def b(ctx: dict[str, Any]) -> dict[str, Any]:
        calls.append(f"b {ctx['n']}")
        if ctx.get("hang") and calls.count(f"b {ctx['n']}") == 1:
            entered.set()
            await asyncio.sleep(30)
        return {"b": ctx["a"] + 1}

    return Saga(name=name).add_step("a", a).add_step("b", b)


async def test_a_worker_runs_pending_sagas_and_takes_over_a_dead_owners_saga(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    entered = asyncio.Event()
    saga = blocking_once_saga("res-worker", calls, entered)
    dead = fast_config(storage_from_url(sqlite_url), lease_seconds=0.3)  # the "dead" process
    alive = fast_config(storage_from_url(sqlite_url), lease_seconds=0.3)  # the worker's
    try:
        interrupted = asyncio.create_task(
            saga.with_config(dead).run({"n": 1, "hang": True}, saga_id="w-dead")
        )
        await entered.wait()
        interrupted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await interrupted
        pending_id, _ = await start_saga(saga.with_config(dead), {"n": 2}, run=False)
        await dead.storage.create_saga(NewSaga("w-orphan", "res-worker-nobody", {}))
        assert dead.storage.owner_id != alive.storage.owner_id

        worker = SagaWorker(alive, poll_interval=0.05, grace_period=1.0)
        running = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        for saga_id in ("w-dead", pending_id):
            while (await alive.storage.load(saga_id)).status is not SagaStatus.COMPLETED:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, f"{saga_id} never completed"
                await asyncio.sleep(0.02)
        worker.stop()
        stats = await running

        assert stats.claimed == 2
        assert stats.completed == 2
        assert stats.crashed == 0
        assert stats.lost == 0
        assert sorted(calls) == ["a 1", "a 2", "b 1", "b 1", "b 2"]
        taken_over = await alive.storage.load("w-dead")
        assert taken_over is not None
        assert taken_over.recoveries == 1
        assert taken_over.context["b"] == 2
        orphan = await alive.storage.load("w-orphan")
        assert orphan is not None
        assert orphan.status is SagaStatus.PENDING
        assert any(
            r.name == "sagaz.worker" and "w-orphan" in r.getMessage() for r in caplog.records
        )
    finally:
        await dead.storage.close()
        await alive.storage.close()


async def test_a_stopping_worker_releases_what_it_could_not_finish(sqlite_url: str) -> None:
    calls: list[str] = []
    entered = asyncio.Event()
    saga = blocking_once_saga("res-worker-stop", calls, entered)
    config = fast_config(storage_from_url(sqlite_url), lease_seconds=5)
    try:
        saga_id, _ = await start_saga(saga.with_config(config), {"n": 3, "hang": True}, run=False)
        worker = SagaWorker(config, poll_interval=0.05, grace_period=0.1, concurrency=1)
        running = asyncio.create_task(worker.run())
        await entered.wait()
        worker.stop()
        stats = await running

        assert stats.claimed == 1
        assert stats.completed == 0
        assert stats.released >= 1
        record = await config.storage.load(saga_id)
        assert record is not None
        assert record.status is SagaStatus.RUNNING
        assert record.lease_owner is None  # another worker may take it at once
        result = await resume_saga(saga_id, config)
        assert result.status is SagaStatus.COMPLETED
        assert calls == ["a 3", "b 3", "b 3"]
    finally:
        await config.storage.close()


def test_worker_options_are_checked(config: SagaConfig) -> None:
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        SagaWorker(config, concurrency=0)
    with pytest.raises(ValueError, match="poll_interval must be > 0"):
        SagaWorker(config, poll_interval=0)
    assert SagaWorker(config, saga_names=["x"]).saga_names == ["x"]
