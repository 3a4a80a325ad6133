"""load_saga / saga_diagram (sync, through the portal) and their async twins, on the
tests' real database, against what the plugin's own URLs answer."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from django.db import transaction
from django.test import Client
from sagaz_django_helpers import wait_finished
from sagaz_django_testproject.shop.sagas import OrderSaga

from sagaz.core import SagaNotFoundError, SagaRecord, UnknownSagaError, to_mermaid
from sagaz.integrations.django import (
    aload_saga,
    asaga_diagram,
    atomic_saga_start,
    load_saga,
    saga_diagram,
)

pytestmark = pytest.mark.django_db(transaction=True)

UNKNOWN = "0b6f3f4e-0000-4000-8000-000000000000"


def _finished(order_id: str, amount: int) -> str:
    with transaction.atomic():
        saga_id = atomic_saga_start(OrderSaga, {"order_id": order_id, "amount": amount})
    wait_finished(saga_id)
    return saga_id


@pytest.mark.parametrize(("amount", "state"), [(10, "COMPLETED"), (700, "COMPENSATED")])
def test_load_saga_and_saga_diagram_match_the_status_urls(
    client: Client, amount: int, state: str
) -> None:
    saga_id = _finished(f"L-{amount}", amount)
    record = load_saga(saga_id)
    assert isinstance(record, SagaRecord)
    assert record.saga_id == saga_id
    assert record.status.value == state
    assert record.context["order_id"] == f"L-{amount}"
    status = client.get(f"/sagaz/status/{saga_id}").json()
    assert status["state"] == state
    assert status["completed_steps"] == record.completed_steps

    mermaid = saga_diagram(saga_id)
    assert mermaid == to_mermaid(OrderSaga(), record)
    assert f"%% saga: order ({state})" in mermaid
    assert client.get(f"/sagaz/status/{saga_id}/diagram").json()["mermaid"] == mermaid
    # A record already loaded is drawn without reading it again; direction is passed on.
    assert saga_diagram(record, direction="LR").startswith("flowchart LR\n")
    assert load_saga(saga_id, using="default") == record


def test_a_saga_is_visible_once_its_transaction_committed() -> None:
    with transaction.atomic():
        saga_id = atomic_saga_start(OrderSaga, {"order_id": "L-uncommitted", "amount": 1})
        assert load_saga(saga_id) is None  # read through the storage: committed data only
    wait_finished(saga_id)
    found = load_saga(saga_id)
    assert found is not None
    assert found.status.value == "COMPLETED"


@pytest.mark.parametrize("saga_id", [UNKNOWN, "not a valid id", "x" * 200])
def test_unknown_or_invalid_ids(saga_id: str) -> None:
    assert load_saga(saga_id) is None
    with pytest.raises(SagaNotFoundError, match="no saga with id"):
        saga_diagram(saga_id)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"'elsewhere' is not a database alias .*default"):
        load_saga(UNKNOWN, using="elsewhere")
    saga_id = _finished("L-direction", 5)
    with pytest.raises(ValueError, match="direction must be one of"):
        saga_diagram(saga_id, direction="UP")
    record = load_saga(saga_id)
    assert record is not None
    orphan = dataclasses.replace(record, saga_name="not-registered-anywhere")
    with pytest.raises(UnknownSagaError):
        saga_diagram(orphan)


async def test_the_async_twins_read_the_same() -> None:
    saga_id = await asyncio.to_thread(_finished, "L-async", 20)
    record = await aload_saga(saga_id)
    assert record is not None
    assert record.status.value == "COMPLETED"
    assert await asaga_diagram(saga_id) == to_mermaid(OrderSaga(), record)
    assert await aload_saga(UNKNOWN) is None
    with pytest.raises(SagaNotFoundError):
        await asaga_diagram(UNKNOWN)


async def test_the_sync_functions_refuse_an_event_loop_thread() -> None:
    with pytest.raises(RuntimeError, match=r"await aload_saga\(\.\.\.\)"):
        load_saga(UNKNOWN)
    with pytest.raises(RuntimeError, match=r"await asaga_diagram\(\.\.\.\)"):
        saga_diagram(UNKNOWN)
