"""DjangoSagaStorage against the contract: it must read back what the in-memory reference
backend reads back for the same writes (``records.apply_transition`` is the rule)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import Any

import pytest

from sagaz.core import InMemorySagaStorage, LeaseLostError, SagaConfig, SagaStatus, StorageError
from sagaz.core.records import (
    NewSaga,
    OutboxEvent,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
)
from sagaz.core.storage.base import SagaStorage
from sagaz.integrations.django.storage import DjangoSagaStorage

pytestmark = pytest.mark.django_db(transaction=True)

K = TransitionKind


def _comparable(record: SagaRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    data = record.to_dict()
    data["recoveries"] = record.recoveries
    data["cancel_requested"] = record.cancel_requested
    data["leased"] = record.lease_owner is not None
    return data


def _new(
    name: str = "order", key: str | None = None, status: SagaStatus = SagaStatus.PENDING
) -> NewSaga:
    return NewSaga(
        str(uuid.uuid4()),
        name,
        {"order_id": 1, "nested": {"b": 2, "a": [1.5, None]}},
        status,
        "corr-1",
        key,
        created_at=time.time(),
    )


def _event(saga_id: str, kind: str = "saga.step_completed") -> OutboxEvent:
    return OutboxEvent(str(uuid.uuid4()), saga_id, kind, {"saga_id": saga_id, "x": 1}, "corr-1")


async def _scenario(storage: SagaStorage) -> list[Any]:
    """The same writes on any backend; what each read returns, comparable."""
    seen: list[Any] = []
    t0 = 1_700_000_000.0
    running = NewSaga("s-run", "order", {"a": 1}, SagaStatus.RUNNING, "c1", "k1", created_at=t0)
    seen.append(
        await storage.create_saga(
            running, [Transition(K.SAGA_STARTED, at=t0)], [_fixed_event("e0", "s-run")]
        )
    )
    seen.append(
        await storage.create_saga(
            NewSaga("s-dup", "order", {}, SagaStatus.PENDING, None, "k1", created_at=t0)
        )
    )
    seen.append(
        await storage.record(
            "s-run",
            [Transition(K.STEP_STARTED, "reserve", 1, at=t0 + 1)],
        )
    )
    seen.append(
        await storage.record(
            "s-run",
            [
                Transition(K.STEP_COMPLETED, "reserve", 1, result={"r": 1}, at=t0 + 2),
                Transition(K.STEP_STARTED, "charge", 1, at=t0 + 2),
            ],
            {"a": 1, "r": 1},
            [_fixed_event("e1", "s-run")],
        )
    )
    seen.append(
        await storage.record(
            "s-run",
            [
                Transition(K.STEP_FAILED, "charge", 1, error="ValueError: no", at=t0 + 3),
                Transition(K.SAGA_COMPENSATING, "charge", error="ValueError: no", at=t0 + 3),
                Transition(K.COMPENSATION_STARTED, "reserve", 1, at=t0 + 4),
            ],
        )
    )
    seen.append(
        await storage.record(
            "s-run",
            [
                Transition(
                    K.COMPENSATION_FAILED, "reserve", 1, error="RuntimeError: down", at=t0 + 5
                ),
                Transition(K.SAGA_FAILED, "charge", error="compensation failed", at=t0 + 5),
            ],
        )
    )
    seen.append(_comparable(await storage.load("s-run")))
    seen.append(await storage.record("missing", [Transition(K.STEP_STARTED, "x", 1)]))
    # leases: a PENDING saga is claimable; a finished one is not
    pending = NewSaga(
        "s-pend", "order", {"p": True}, SagaStatus.PENDING, "c2", None, created_at=t0 + 10
    )
    seen.append(await storage.create_saga(pending))
    seen.append(await storage.claim("s-run"))
    claimed = await storage.claim("s-pend")
    seen.append(_comparable(claimed))
    seen.append(_comparable(await storage.claim("s-pend")))  # ours already: claimable again
    seen.append(
        [_comparable(r) for r in await storage.claim_runnable(10)]
    )  # ours are not re-claimed
    seen.append(await storage.renew_leases())
    seen.append(await storage.release_leases(["s-pend"]))
    seen.append([r.saga_id for r in await storage.claim_runnable(10, ["other"])])
    seen.append([r.saga_id for r in await storage.claim_runnable(10, [])])
    seen.append([_comparable(r) for r in await storage.claim_runnable(10, ["order"])])
    seen.append(await storage.request_cancel("s-pend"))
    seen.append(await storage.request_cancel("s-run"))
    seen.append(await storage.record("s-pend", [Transition(K.SAGA_STARTED, at=t0 + 11)]))
    seen.append(await storage.release_leases())
    # reopen
    seen.append(_comparable(await storage.reopen("s-pend", Transition(K.SAGA_RETRIED, at=t0 + 12))))
    reopened = await storage.reopen("s-run", Transition(K.SAGA_COMPENSATING, "charge", at=t0 + 13))
    seen.append(_comparable(reopened))
    seen.append(
        await storage.record(
            "s-run",
            [
                Transition(K.COMPENSATION_STARTED, "reserve", 2, at=t0 + 14),
                Transition(K.COMPENSATION_COMPLETED, "reserve", 2, at=t0 + 15),
                Transition(K.SAGA_COMPENSATED, "charge", at=t0 + 15),
            ],
        )
    )
    seen.append(_comparable(await storage.load("s-run")))
    # queries
    seen.append([_comparable(r) for r in await storage.list_sagas()])
    seen.append(
        [r.saga_id for r in await storage.list_sagas(SagaQuery(status=SagaStatus.COMPENSATED))]
    )
    seen.append([r.saga_id for r in await storage.list_sagas(SagaQuery(saga_name="nope"))])
    seen.append(
        [r.saga_id for r in await storage.list_sagas(SagaQuery(correlation_id="c2", limit=1))]
    )
    seen.append(
        [
            r.saga_id
            for r in await storage.list_sagas(
                SagaQuery(created_after=t0 + 5, created_before=t0 + 20)
            )
        ]
    )
    seen.append([r.saga_id for r in await storage.list_sagas(SagaQuery(offset=1, limit=1))])
    seen.append(await storage.list_sagas(SagaQuery(limit=0)))
    # trigger events
    event = TriggerEvent("ev-1", "order_created", {"order_id": 7}, "corr-ev", created_at=t0 + 30)
    sagas = [
        NewSaga(
            "s-t1",
            "order",
            {"order_id": 7},
            SagaStatus.PENDING,
            "corr-ev",
            "order_created:7",
            created_at=t0 + 30,
        ),
    ]
    seen.append(await storage.record_trigger_event(event, sagas))
    seen.append(event.saga_ids)
    again = TriggerEvent("ev-2", "order_created", {"order_id": 7}, "corr-ev", created_at=t0 + 31)
    seen.append(
        await storage.record_trigger_event(
            again,
            [
                NewSaga(
                    "s-t2",
                    "order",
                    {"order_id": 7},
                    SagaStatus.PENDING,
                    "corr-ev",
                    "order_created:7",
                    created_at=t0 + 31,
                )
            ],
        )
    )
    seen.append(
        [e.to_dict() | {"payload": e.payload} for e in await storage.find_trigger_events("corr-ev")]
    )
    seen.append([e.event_id for e in await storage.find_trigger_events("corr-ev", "other")])
    # outbox
    seen.append(await storage.outbox_counts())
    await storage.create_saga(
        NewSaga("s-out", "order", {}, SagaStatus.RUNNING, None, None, created_at=t0 + 40),
        [Transition(K.SAGA_STARTED, at=t0 + 40)],
        [_fixed_event("o1", "s-out"), _fixed_event("o2", "s-out")],
    )
    first = await storage.claim_outbox(10)
    seen.append([(r.seq > 0, r.event.event_id) for r in first])
    seen.append([r.event.event_id for r in await storage.claim_outbox(10)])  # claimed / blocked
    await storage.outbox_failed("e0", "boom", time.time() + 3600)
    await storage.outbox_sent(["o1"])
    seen.append([r.event.event_id for r in await storage.claim_outbox(10)])  # o2 now free
    await storage.outbox_failed("o2", "dead", None)
    await storage.outbox_sent([])
    seen.append(await storage.outbox_counts())
    seen.append(
        [
            (r.event.event_id, r.status, r.attempts, r.last_error)
            for r in await storage.list_outbox()
        ]
    )
    seen.append([r.event.event_id for r in await storage.list_outbox(OutboxStatus.DEAD, 5)])
    seen.append(await storage.list_outbox(limit=0))
    seen.append(await storage.claim_outbox(0))
    # inbox
    if hasattr(storage, "inbox_seen"):  # newer contract
        seen.append(await storage.inbox_seen("c", "e1"))
    seen.append(await storage.inbox_mark("c", "e1"))
    if hasattr(storage, "inbox_seen"):
        seen.append(await storage.inbox_seen("c", "e1"))
    seen.append(await storage.inbox_mark("c", "e1"))
    seen.append(await storage.inbox_mark("d", "e1"))
    return seen


def _fixed_event(event_id: str, saga_id: str) -> OutboxEvent:
    return OutboxEvent(
        event_id, saga_id, "saga.step_completed", {"saga_id": saga_id}, None, created_at=1.0
    )


async def test_same_reads_as_memory() -> None:
    memory = await _scenario(InMemorySagaStorage())
    django = await _scenario(DjangoSagaStorage())
    for i, (m, d) in enumerate(zip(memory, django, strict=True)):
        assert m == d, f"read {i} differs: memory {m!r} != django {d!r}"


async def test_fencing_and_lease_takeover() -> None:
    a, b = DjangoSagaStorage(), DjangoSagaStorage()
    b._owner = (a.owner_id and __import__("os").getpid(), "other-owner")
    a.lease_seconds = 0.2
    new = _new(status=SagaStatus.RUNNING)
    await a.create_saga(new, [Transition(K.SAGA_STARTED)])
    assert await b.claim(new.saga_id) is None  # a holds a live lease
    with pytest.raises(LeaseLostError):
        await b.record(new.saga_id, [Transition(K.STEP_STARTED, "x", 1)])
    await asyncio.sleep(0.3)
    taken = await b.claim(new.saga_id)
    assert taken is not None
    assert taken.lease_owner == "other-owner"
    with pytest.raises(LeaseLostError):
        await a.record(new.saga_id, [Transition(K.STEP_STARTED, "x", 1)])
    loaded = await b.load(new.saga_id)
    assert loaded is not None
    assert loaded.history[-1].kind is K.SAGA_STARTED


async def test_a_leased_start_is_leased_in_the_same_write() -> None:
    """NewSaga(leased=True): PENDING, leased to its creator as a claim would; a duplicate
    is not leased; after the creator dies, another worker takes the saga over."""
    a, b = DjangoSagaStorage(), DjangoSagaStorage()
    b._owner = (__import__("os").getpid(), "other-owner")
    before = time.time()
    new = dataclasses.replace(_new(key="lz"), leased=True)
    assert await a.create_saga(new) == (new.saga_id, True)
    dup = dataclasses.replace(_new(key="lz"), leased=True)
    assert await b.create_saga(dup) == (new.saga_id, False)
    fired = dataclasses.replace(_new(), leased=True)
    dup2 = dataclasses.replace(_new(key="lz"), leased=True)
    event = TriggerEvent(str(uuid.uuid4()), "orders", {}, "corr-1")
    assert await b.record_trigger_event(event, [fired, dup2]) == [
        (fired.saga_id, True),
        (new.saga_id, False),
    ]
    record = await a.load(new.saga_id)
    assert record is not None
    assert record.status is SagaStatus.PENDING
    assert record.lease_owner == a.owner_id
    assert record.lease_expires_at is not None
    assert before + a.lease_seconds <= record.lease_expires_at <= time.time() + a.lease_seconds
    other = await a.load(fired.saga_id)
    assert other is not None
    assert other.lease_owner == "other-owner"
    assert await b.claim(new.saga_id) is None  # a live lease
    assert await a.renew_leases() == 1
    a.lease_seconds = 0.2
    await a.renew_leases()
    await asyncio.sleep(0.3)
    taken = await b.claim_runnable(10)
    assert [r.saga_id for r in taken] == [new.saga_id]
    with pytest.raises(LeaseLostError):
        await a.record(new.saga_id, [Transition(K.SAGA_STARTED)])


async def test_concurrent_idempotent_starts_create_one_saga() -> None:
    storage = DjangoSagaStorage()
    news = [_new(key="same") for _ in range(12)]
    results = await asyncio.gather(*(storage.create_saga(n) for n in news))
    assert sum(created for _, created in results) == 1
    assert len({saga_id for saga_id, _ in results}) == 1


async def test_concurrent_claimers_never_share_a_saga() -> None:
    owners = []
    for i in range(3):
        storage = DjangoSagaStorage()
        storage._owner = (__import__("os").getpid(), f"owner-{i}")
        owners.append(storage)
    for _ in range(30):
        await owners[0].create_saga(_new())
    batches = await asyncio.gather(*(s.claim_runnable(12) for s in owners for _ in range(2)))
    ids = [r.saga_id for batch in batches for r in batch]
    assert len(ids) == len(set(ids)) == 30


async def test_duplicate_id_and_bad_json_are_storage_errors() -> None:
    storage = DjangoSagaStorage()
    new = _new()
    await storage.create_saga(new)
    with pytest.raises(StorageError, match="already recorded"):
        await storage.create_saga(new)
    clash = _new(key="kk")
    clash.saga_id = new.saga_id
    with pytest.raises(StorageError, match="already recorded"):
        await storage.create_saga(clash)
    keyed = _new(key="kk2")
    assert await storage.create_saga(keyed) == (keyed.saga_id, True)
    with pytest.raises(StorageError, match="already recorded"):  # same id, same key
        await storage.create_saga(keyed)
    again = _new(key="kk2")
    assert await storage.create_saga(again) == (keyed.saga_id, False)  # same key, new id
    bad = _new()
    bad.context = {"when": object()}
    with pytest.raises(StorageError, match="context of saga"):
        await storage.create_saga(bad)


async def test_ping_open_close_and_reopen() -> None:
    storage = DjangoSagaStorage(max_threads=2)
    async with storage:
        await storage.ping()
        assert storage.is_open
    assert not storage.is_open
    await storage.ping()
    await storage.close()
    with pytest.raises(ValueError, match="max_threads"):
        DjangoSagaStorage(max_threads=0)
    assert "default" in repr(storage)


async def test_engine_runs_match_memory() -> None:
    from sagaz_django_testproject.shop.sagas import OrderSaga

    async def run(storage: SagaStorage, amount: int, broken: bool) -> dict[str, Any]:
        config = SagaConfig(storage=storage, outbox=True)
        result = await OrderSaga(config=config).run(
            {"order_id": "o", "amount": amount, "break_refund": broken}
        )
        record = await storage.load(result.saga_id)
        assert record is not None
        return {
            "status": record.status,
            "steps": {
                n: (s.status, s.attempts, s.result, s.error) for n, s in record.steps.items()
            },
            "kinds": [h.kind for h in record.history],
            "error": record.error,
            "failed": record.failed_step,
            "context": record.context,
            "leased": record.lease_owner,
            "events": [
                r.event.event_type
                for r in await storage.list_outbox(limit=1000)
                if r.event.saga_id == result.saga_id
            ],
        }

    for amount, broken in ((10, False), (5000, False), (800, False), (800, True)):
        assert await run(DjangoSagaStorage(), amount, broken) == await run(
            InMemorySagaStorage(), amount, broken
        )
