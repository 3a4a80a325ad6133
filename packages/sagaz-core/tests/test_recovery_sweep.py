"""RecoverySweep: SagaWorker embedded on an app's loop, running what it claims on the runner.

SQLite files, two storage objects on one file = two owners (two owner ids).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from sagaz.core import (
    InProcessRunner,
    RecoverySweep,
    Saga,
    SagaConfig,
    SagaStatus,
    action,
    storage_from_url,
)
from sagaz.core.records import NewSaga
from sagaz.core.recovery import default_sweep_interval
from sagaz.core.registry import SagaRegistry


class SweptSaga(Saga):
    saga_name = "core-test-swept"

    @action("one")
    async def one(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"one": ctx["n"]}

    @action("two", depends_on=["one"])
    async def two(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"two": ctx["one"] + 1}


async def _leave_leased(url: str, lease_seconds: float, n: int) -> str:
    other = storage_from_url(url)
    other.lease_seconds = lease_seconds
    saga_id = str(uuid.uuid4())
    async with other:
        new = NewSaga(
            saga_id, SweptSaga.saga_name, {"n": n}, SagaStatus.PENDING, None, None, leased=True
        )
        await other.create_saga(new)
    return saga_id


async def _status(config: SagaConfig, saga_id: str) -> SagaStatus:
    record = await config.storage.load(saga_id)
    assert record is not None
    return record.status


async def _until(config: SagaConfig, saga_id: str, status: SagaStatus) -> None:
    async with asyncio.timeout(10):
        while await _status(config, saga_id) is not status:
            await asyncio.sleep(0.05)


async def test_takes_over_expired_leases_and_leaves_live_ones(sqlite_url: str) -> None:
    dead = await _leave_leased(sqlite_url, 0.3, 1)
    live = await _leave_leased(sqlite_url, 120, 2)
    config = SagaConfig(storage_url=sqlite_url, lease_seconds=1.0)
    runner = InProcessRunner()
    sweep = RecoverySweep(config, interval=0.1, concurrency=2, runner=runner)
    try:
        await sweep.start()
        assert sweep.running
        assert "running every 0.1s" in repr(sweep)
        await _until(config, dead, SagaStatus.COMPLETED)
        await asyncio.sleep(0.3)  # more sweeps: the live owner's saga is left alone
        record = await config.storage.load(live)
        assert record is not None
        assert record.status is SagaStatus.PENDING
        assert record.lease_owner != config.storage.owner_id
        assert sweep.stats.claimed == 1
        assert sweep.stats.completed == 1
    finally:
        await sweep.stop()
        await runner.drain()
        await config.storage.close()
    assert not sweep.running
    assert "stopped" in repr(sweep)
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


async def test_a_saga_that_cannot_be_built_is_left_for_later(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    saga_id = await _leave_leased(sqlite_url, 0.01, 3)
    await asyncio.sleep(0.05)  # the lease has expired

    class Broken(SagaRegistry):
        def create(self, name: str, config: SagaConfig | None = None) -> Saga:
            raise RuntimeError("cannot build")

    broken = Broken()
    broken.register_class(SweptSaga.saga_name, SweptSaga)
    config = SagaConfig(storage_url=sqlite_url, lease_seconds=1.0)
    sweep = RecoverySweep(config, interval=5, saga_registry=broken)
    try:
        await sweep.start()  # the first claim has happened when start returns
        assert sweep.stats.crashed == 1
        assert "cannot build saga" in caplog.text
        assert await _status(config, saga_id) is SagaStatus.PENDING
    finally:
        await sweep.stop()
        await sweep.stop()  # stopping twice is harmless
        await config.storage.close()


def test_options_are_checked() -> None:
    assert default_sweep_interval(30) == 15
    assert default_sweep_interval(0.01) == 0.1
    with pytest.raises(ValueError, match="interval must be > 0"):
        RecoverySweep(SagaConfig(), interval=0)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        RecoverySweep(SagaConfig(), concurrency=0)
    assert RecoverySweep(SagaConfig()).stats.claimed == 0
