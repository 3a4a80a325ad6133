"""The Django plugin's recovery sweep: sagas a crashed process left leased are resumed.

A saga leased to a dead owner (another storage object on the project's database, so
another owner id) is taken over by the process's sweep once its short lease expires,
without any request; a saga whose owner's lease is still live is not touched; stopping
the sweep leaves no task behind. Runs on the test database (SQLite, or PostgreSQL with
``SAGAZ_TEST_DB=postgres``).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from django.test import override_settings
from django.test.client import Client
from sagaz_django_testproject.settings import SAGAZ
from sagaz_django_testproject.shop.sagas import OrderSaga

from sagaz.core import SagaRecord, SagaStatus
from sagaz.core.portal import run_sync
from sagaz.core.records import NewSaga
from sagaz.integrations.django import runtime
from sagaz.integrations.django.storage import DjangoSagaStorage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def short_lease() -> Iterator[None]:
    """The project's storage with a 1 s lease (sweeps every 0.5 s); sweep stopped after."""
    runtime.stop_recovery()  # a sweep an earlier test's request started
    storage = runtime.get_storage()
    before = storage.lease_seconds
    storage.lease_seconds = 1.0
    try:
        yield
    finally:
        runtime.stop_recovery()
        storage.lease_seconds = before


async def _leave_leased(lease_seconds: float, order_id: str) -> str:
    """Record a PENDING saga leased to another owner that then goes away unreleased."""
    other = DjangoSagaStorage(runtime.get_storage().alias)
    other.lease_seconds = lease_seconds
    saga_id = str(uuid.uuid4())
    await other.ensure_open()
    await other.create_saga(
        NewSaga(
            saga_id,
            OrderSaga.saga_name,
            {"order_id": order_id, "amount": 10, "break_refund": False},
            SagaStatus.PENDING,
            None,
            None,
            leased=True,
        )
    )
    await other.close()
    return saga_id


def _load(saga_id: str) -> SagaRecord:
    record = run_sync(runtime.get_storage().load, saga_id)
    assert record is not None
    return record


def _wait(saga_id: str, status: SagaStatus, timeout: float = 15.0) -> SagaRecord:
    deadline = time.monotonic() + timeout
    while (record := _load(saga_id)).status is not status:
        assert time.monotonic() < deadline, f"saga {saga_id} is {record.status}, not {status}"
        time.sleep(0.1)
    return record


def _sweep_tasks() -> list[str]:
    async def names() -> list[str]:
        return [t.get_name() for t in asyncio.all_tasks() if "recovery" in t.get_name()]

    return run_sync(names)


@pytest.mark.usefixtures("short_lease")
def test_a_saga_leased_to_a_dead_owner_is_resumed_without_any_request() -> None:
    dead = run_sync(_leave_leased, 1.0, "dead-owner")
    live = run_sync(_leave_leased, 120.0, "live-owner")
    live_owner = _load(live).lease_owner
    assert runtime.start_recovery() is True  # what wsgi.py does to sweep before a request
    sweep = runtime.recovery_sweep()
    assert sweep is not None
    assert sweep.interval == 0.5
    assert _wait(dead, SagaStatus.COMPLETED).context["shipment"] == "S-dead-owner"
    threading.Event().wait(1.2)  # two more sweeps leave the live owner's saga alone
    untouched = _load(live)
    assert untouched.status is SagaStatus.PENDING
    assert untouched.lease_owner == live_owner
    assert _sweep_tasks() == ["sagaz-recovery-sweep"]
    runtime.stop_recovery()
    assert runtime.recovery_sweep() is None
    assert _sweep_tasks() == []


@pytest.mark.usefixtures("short_lease")
def test_the_first_request_starts_the_sweep() -> None:
    expired = run_sync(_leave_leased, 0.01, "expired")
    runtime.stop_recovery()
    Client().get("/no-such-page/")
    assert runtime.recovery_sweep() is not None
    _wait(expired, SagaStatus.COMPLETED)


@pytest.mark.usefixtures("short_lease")
def test_no_sweep_when_sagas_are_left_to_the_worker() -> None:
    with override_settings(SAGAZ={**SAGAZ, "RUN_IN_PROCESS": False}):
        runtime.get_storage().lease_seconds = 1.0
        expired = run_sync(_leave_leased, 0.01, "for-the-worker")
        assert runtime.start_recovery() is False
        Client().get("/no-such-page/")
        assert runtime.recovery_sweep() is None
        time.sleep(0.3)
        assert _load(expired).status is SagaStatus.PENDING
