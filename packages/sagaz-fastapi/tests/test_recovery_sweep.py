"""The lifespan's recovery sweep: sagas a crashed process left leased are resumed.

A saga leased to a dead owner (another storage object on the same database, so another
owner id, closed without releasing) is taken over by a freshly started app once its
short lease expires, with no request; a saga whose owner's lease is still live is not
touched; and the lifespan leaves no task behind.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sagaz_fastapi_support import Backend, wait_until
from sagaz_fastapi_testapp import WebOrderSaga, create_app

from sagaz.core import SagaConfig, SagaRecord, SagaStatus, storage_from_url
from sagaz.core.records import NewSaga
from sagaz.integrations.fastapi import create_lifespan


async def _leave_leased(url: str, lease_seconds: float, order_id: str) -> str:
    """Record a PENDING saga leased to a fresh owner that then goes away unreleased."""
    storage = storage_from_url(url)
    storage.lease_seconds = lease_seconds
    saga_id = str(uuid.uuid4())
    async with storage:
        new = NewSaga(
            saga_id,
            WebOrderSaga.saga_name,
            {"order_id": order_id, "amount": 1, "gate": None},
            SagaStatus.PENDING,
            None,
            None,
            leased=True,
        )
        await storage.create_saga(new)
    return saga_id


def _load(url: str, saga_id: str) -> SagaRecord:
    async def load() -> SagaRecord:
        async with storage_from_url(url) as storage:
            record = await storage.load(saga_id)
        assert record is not None
        return record

    return asyncio.run(load())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
def test_a_saga_leased_to_a_dead_owner_is_resumed_without_any_request(backend: Backend) -> None:
    dead = asyncio.run(_leave_leased(backend.url, 1.0, "dead-owner"))
    live = asyncio.run(_leave_leased(backend.url, 120.0, "live-owner"))
    live_owner = _load(backend.url, live).lease_owner
    assert live_owner is not None
    config = SagaConfig(storage_url=backend.url, lease_seconds=1.0)
    with TestClient(create_app(config)):
        # Still leased at start-up: the start-up sweep cannot have it yet.
        done = wait_until(
            lambda: _load(backend.url, dead).status is SagaStatus.COMPLETED,
            timeout=15,
            interval=0.1,
            what="the dead owner's saga to be resumed",
        )
        assert done
        # Two more sweeps (every 0.5 s) leave the live owner's saga alone.
        asyncio.run(asyncio.sleep(1.2))
        untouched = _load(backend.url, live)
        assert untouched.status is SagaStatus.PENDING
        assert untouched.lease_owner == live_owner
    resumed = _load(backend.url, dead)
    assert resumed.context["payment_id"] == "PAY-dead-owner"
    assert resumed.context["tracking_id"] == "TRK-dead-owner"


def test_recover_false_sweeps_nothing(backend: Backend) -> None:
    pending = asyncio.run(_leave_leased(backend.url, 0.01, "left-to-a-worker"))
    config = SagaConfig(storage_url=backend.url, lease_seconds=1.0)
    with TestClient(create_app(config, recover=False)):
        asyncio.run(asyncio.sleep(0.3))
    assert _load(backend.url, pending).status is SagaStatus.PENDING


def test_shutdown_leaves_no_task_behind(backend: Backend) -> None:
    saga_id = asyncio.run(_leave_leased(backend.url, 0.01, "expired"))
    config = SagaConfig(storage_url=backend.url, lease_seconds=1.0)
    lifespan = create_lifespan(config, recover_interval=0.05, recover_concurrency=1)

    async def serve() -> list[str]:
        async with lifespan(FastAPI()):
            # The start-up sweep claimed the expired saga before the app serves.
            await asyncio.sleep(0.3)
        current = asyncio.current_task()
        return [t.get_name() for t in asyncio.all_tasks() if t is not current]

    assert asyncio.run(serve()) == []
    assert _load(backend.url, saga_id).status is SagaStatus.COMPLETED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recover_interval": 0}, "recover_interval must be > 0"),
        ({"recover_concurrency": 0}, "recover_concurrency must be >= 1"),
    ],
)
def test_bad_sweep_options_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_lifespan(**kwargs)
