"""The Flask extension's recovery sweep: sagas a crashed process left leased are resumed.

A saga leased to a dead owner (another storage object on the same database, so another
owner id, closed without releasing) is taken over by a freshly started app once its
short lease expires, without any request; a saga whose owner's lease is still live is
not touched; closing the app stops the sweep.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from sagaz_flask_example import OrderSaga
from sagaz_flask_helpers import PostgresSchema, require_postgres, sagaz_of, wait_for

from sagaz.core import SagaRecord, SagaStatus, storage_from_url
from sagaz.core.records import NewSaga


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    require_postgres()
    schema = PostgresSchema("sagaz_flask_sweep", pool=2)
    try:
        yield schema.url
    finally:
        schema.drop()


async def _leave_leased(url: str, lease_seconds: float, order_id: str) -> str:
    """Record a PENDING saga leased to a fresh owner that then goes away unreleased."""
    storage = storage_from_url(url)
    storage.lease_seconds = lease_seconds
    saga_id = str(uuid.uuid4())
    async with storage:
        await storage.create_saga(
            NewSaga(
                saga_id,
                OrderSaga.saga_name,
                {"order_id": order_id, "amount": 10},
                SagaStatus.PENDING,
                None,
                None,
                leased=True,
            )
        )
    return saga_id


def _load(url: str, saga_id: str) -> SagaRecord:
    async def load() -> SagaRecord:
        async with storage_from_url(url) as storage:
            record = await storage.load(saga_id)
        assert record is not None
        return record

    return asyncio.run(load())


def _sweep_tasks() -> list[str]:
    """Names of the recovery sweep tasks on the background loop (none once it stopped)."""
    from sagaz.core.portal import get_portal

    async def names() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if "recovery" in t.get_name()]

    return get_portal().call(names)


def test_a_saga_leased_to_a_dead_owner_is_resumed_without_any_request(
    url: str, make_app: Callable[..., Flask]
) -> None:
    dead = asyncio.run(_leave_leased(url, 1.0, "dead-owner"))
    live = asyncio.run(_leave_leased(url, 120.0, "live-owner"))
    live_owner = _load(url, live).lease_owner
    app = make_app(url, lease_seconds=1.0)
    sagaz = sagaz_of(app)
    assert sagaz.start_recovery(app) is True  # what an app factory does at start-up
    sweep = sagaz.state(app).recovery_sweep
    assert sweep is not None
    assert sweep.interval == 0.5
    wait_for(lambda: _load(url, dead).status is SagaStatus.COMPLETED, timeout=15, interval=0.1)
    assert _load(url, dead).context["tracking_id"] == "TRK-dead-owner"
    threading.Event().wait(1.2)  # two more sweeps leave the live owner's saga alone
    untouched = _load(url, live)
    assert untouched.status is SagaStatus.PENDING
    assert untouched.lease_owner == live_owner
    assert _sweep_tasks() == ["sagaz-recovery-sweep"]
    sagaz.close(app, shutdown_loop=False)
    assert sagaz.state(app).recovery_sweep is None
    assert _sweep_tasks() == []


def test_the_first_request_starts_the_sweep(sqlite_url: str, make_app: Any) -> None:
    expired = asyncio.run(_leave_leased(sqlite_url, 0.01, "expired"))
    app = make_app(sqlite_url, lease_seconds=1.0)
    assert sagaz_of(app).state(app).recovery_sweep is None  # init_app does no I/O
    assert app.test_client().get("/no-such-route").status_code == 404
    assert sagaz_of(app).state(app).recovery_sweep is not None
    wait_for(lambda: _load(sqlite_url, expired).status is SagaStatus.COMPLETED, timeout=10)


def test_no_sweep_when_sagas_are_left_to_a_worker(sqlite_url: str, make_app: Any) -> None:
    expired = asyncio.run(_leave_leased(sqlite_url, 0.01, "for-the-worker"))
    app = make_app(sqlite_url, run_in_process=False)
    sagaz = sagaz_of(app)
    assert sagaz.start_recovery(app) is False
    assert app.test_client().get("/health").status_code == 200
    assert sagaz.state(app).recovery_sweep is None
    assert _load(sqlite_url, expired).status is SagaStatus.PENDING
