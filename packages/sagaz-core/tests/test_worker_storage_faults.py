"""Storage outages seen by workers and in-flight sagas (found by tests/reliability).

- ``sagaz worker`` exited when one claim hit a database restart ("server closed the
  connection unexpectedly"); it must log, back off and claim again.
- A saga whose run raised on a storage error kept its lease renewed by its process's lease
  keeper for as long as the process ran other sagas, so no worker could ever resume it; its
  lease must be released instead.

SQLite storage whose writes fail on cue stands in for the database restart (the real
restart of a private PostgreSQL server is in tests/reliability/test_database_faults.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sagaz.core import Saga, SagaConfig, SagaStatus, StorageError, action, start_saga
from sagaz.core.records import OutboxEvent, SagaRecord, Transition, TransitionKind
from sagaz.core.registry import SagaRegistry
from sagaz.core.storage.sqlite import SQLiteSagaStorage
from sagaz.core.worker import SagaWorker


class FaultySQLite(SQLiteSagaStorage):
    """SQLite storage whose next ``claim_failures`` claims and whose write of a step's
    completion (``fail_completion_of``) fail like a database that went away."""

    claim_failures = 0
    fail_completion_of: str | None = None

    async def claim_runnable(self, limit: int, saga_names: Sequence[str]) -> list[SagaRecord]:
        if self.claim_failures:
            self.claim_failures -= 1
            raise StorageError("could not claim runnable sagas: server closed the connection")
        return await super().claim_runnable(limit, saga_names)

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Any = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        step = self.fail_completion_of
        if step is not None and any(
            t.kind is TransitionKind.STEP_COMPLETED and t.step == step for t in transitions
        ):
            self.fail_completion_of = None
            raise StorageError("could not record: terminating connection")
        return await super().record(saga_id, transitions, context, events)


class TwoSteps(Saga):
    saga_name = "faults-two-steps"

    @action("a")
    async def a(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"a": True}

    @action("b")
    async def b(self, ctx: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(float(ctx.get("sleep", 0)))
        return {"b": True}


@pytest.fixture
async def storage(tmp_path: Path) -> Any:
    store = FaultySQLite(str(tmp_path / "faults.db"))
    store.lease_seconds = 0.3
    try:
        yield store
    finally:
        await store.close()


def registry_of(*sagas: type[Saga]) -> SagaRegistry:
    reg = SagaRegistry()
    for saga in sagas:
        reg.register_class(saga.saga_name, saga)
    return reg


async def test_a_worker_survives_failing_claims_and_then_runs_the_sagas(
    storage: FaultySQLite,
) -> None:
    config = SagaConfig(storage=storage)
    saga_id, _ = await start_saga(TwoSteps(config=config), {}, run=False)
    storage.claim_failures = 3
    worker = SagaWorker(
        config, poll_interval=0.01, grace_period=1, saga_registry=registry_of(TwoSteps)
    )
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(500):
            record = await storage.load(saga_id)
            assert record is not None
            if record.status is SagaStatus.COMPLETED or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done(), f"the worker stopped: {task.exception()!r}"
        assert record.status is SagaStatus.COMPLETED
        assert storage.claim_failures == 0
    finally:
        worker.stop()
        stats = await asyncio.wait_for(task, 10)
    assert stats.completed == 1


async def test_a_saga_interrupted_by_a_storage_error_releases_its_lease(
    storage: FaultySQLite,
) -> None:
    config = SagaConfig(storage=storage)
    saga = TwoSteps(config=config)
    storage.fail_completion_of = "b"
    # Another saga keeps this process's lease keeper busy, as in a worker or a web app.
    async with storage.holding_leases():
        with pytest.raises(StorageError):
            await saga.run({})
        await asyncio.sleep(storage.lease_seconds * 3)
        (record,) = await storage.list_sagas()
        assert record.status is SagaStatus.RUNNING
        assert record.lease_owner is None, (
            f"the lease is still held by {record.lease_owner} (renewed by its keeper): no "
            "worker could resume the saga"
        )
        # And a worker resumes it at once.
        resumed = await saga.resume(record.saga_id)
    assert resumed.status is SagaStatus.COMPLETED
    assert resumed.completed_steps == ["a", "b"]
