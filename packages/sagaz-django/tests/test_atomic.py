"""atomic_saga_start: the saga row and its outbox row share the caller's transaction."""

from __future__ import annotations

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import TestCase, TransactionTestCase, override_settings
from sagaz_django_helpers import wait_finished
from sagaz_django_testproject.settings import SAGAZ
from sagaz_django_testproject.shop.models import Order
from sagaz_django_testproject.shop.sagas import OrderSaga, PingSaga

from sagaz.core import Saga, SagaContextManager
from sagaz.core.errors import ContextNotSerializableError
from sagaz.integrations.django import atomic_saga_start
from sagaz.integrations.django.models import OutboxMessage, SagaInstance


class Boom(Exception):
    pass


def _order_then_fail(reference: str) -> None:
    with transaction.atomic():
        Order.objects.create(reference=reference)
        atomic_saga_start(OrderSaga, {"order_id": reference})
        raise Boom


class AtomicStartInTestCase(TestCase):
    """Inside Django's TestCase (every test is itself a transaction)."""

    def test_saga_and_outbox_row_commit_with_the_orm_write(self) -> None:
        with self.captureOnCommitCallbacks() as callbacks, transaction.atomic():
            order = Order.objects.create(reference="A-1", amount=10)
            saga_id = atomic_saga_start(OrderSaga, {"order_id": order.pk, "amount": 10})
        row = SagaInstance.objects.get(saga_id=saga_id)
        assert row.status == "PENDING"
        assert row.saga_name == "order"
        assert row.context_data == {"order_id": order.pk, "amount": 10}
        events = list(OutboxMessage.objects.filter(saga_id=saga_id))
        assert [e.event_type for e in events] == ["saga.started"]
        assert len(callbacks) == 1

    def test_an_exception_after_the_start_rolls_back_both(self) -> None:
        with pytest.raises(Boom):
            _order_then_fail("A-2")
        assert not Order.objects.exists()
        assert not SagaInstance.objects.exists()
        assert not OutboxMessage.objects.exists()

    def test_duplicate_idempotency_key_returns_the_first_saga(self) -> None:
        with transaction.atomic():
            first = atomic_saga_start(OrderSaga, {"order_id": 3}, idempotency_key="k-3")
            second = atomic_saga_start(OrderSaga, {"order_id": 3}, idempotency_key="k-3")
            Order.objects.create(reference="after-duplicate")  # the transaction is intact
        assert first == second
        assert SagaInstance.objects.count() == 1
        assert OutboxMessage.objects.count() == 1

    def test_correlation_id_from_the_request_scope(self) -> None:
        with SagaContextManager.scope(correlation_id="req-42"), transaction.atomic():
            saga_id = atomic_saga_start(PingSaga(), {"n": 1})
            explicit = atomic_saga_start(PingSaga, {"n": 2}, correlation_id="mine")
        assert SagaInstance.objects.get(saga_id=saga_id).correlation_id == "req-42"
        assert SagaInstance.objects.get(saga_id=explicit).correlation_id == "mine"

    def test_bad_arguments(self) -> None:
        with transaction.atomic():
            with pytest.raises(TypeError, match="Saga subclass"):
                atomic_saga_start(object, {})  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="no @action"):
                atomic_saga_start(Saga, {})
            with pytest.raises(TypeError, match="must be a dict"):
                atomic_saga_start(OrderSaga, [1])  # type: ignore[arg-type]
            with pytest.raises(ContextNotSerializableError, match="'when'"):
                atomic_saga_start(OrderSaga, {"when": object()})
            with pytest.raises(ValueError, match="SAGAZ\\['DATABASE'\\]"):
                atomic_saga_start(OrderSaga, {}, using="other")

    @override_settings(SAGAZ={**SAGAZ, "OUTBOX": False, "RUN_IN_PROCESS": False})
    def test_without_outbox_only_the_saga_row(self) -> None:
        with self.captureOnCommitCallbacks() as callbacks, transaction.atomic():
            saga_id = atomic_saga_start(OrderSaga, {"order_id": 5})
        assert SagaInstance.objects.filter(saga_id=saga_id).exists()
        assert not OutboxMessage.objects.exists()
        assert callbacks == []


class AtomicStartCommitted(TransactionTestCase):
    """Real commits and rollbacks (no enclosing test transaction)."""

    def test_outside_atomic_raises(self) -> None:
        with pytest.raises(TransactionManagementError, match=r"inside transaction\.atomic"):
            atomic_saga_start(OrderSaga, {"order_id": 1})
        assert not SagaInstance.objects.exists()

    def test_rollback_leaves_no_trace(self) -> None:
        with pytest.raises(Boom):
            _order_then_fail("B-1")
        assert not Order.objects.exists()
        assert not SagaInstance.objects.exists()
        assert not OutboxMessage.objects.exists()

    def test_committed_saga_runs_in_process_once(self) -> None:
        with transaction.atomic():
            Order.objects.create(reference="B-2")
            ok = atomic_saga_start(OrderSaga, {"order_id": "B-2", "amount": 10})
            declined = atomic_saga_start(OrderSaga, {"order_id": "B-3", "amount": 5000})
        assert wait_finished(ok, declined) == {ok: "COMPLETED", declined: "COMPENSATED"}
        started = OutboxMessage.objects.filter(saga_id=ok, event_type="saga.started")
        assert started.count() == 1  # the engine does not write a second saga.started
        kinds = list(OutboxMessage.objects.filter(saga_id=ok).values_list("event_type", flat=True))
        assert kinds[0] == "saga.started"
        assert kinds[-1] == "saga.completed"

    def test_concurrent_duplicate_keys_start_one_saga(self) -> None:
        import threading

        from django.db import connections

        ids: list[str] = []
        barrier = threading.Barrier(4)

        def start() -> None:
            try:
                barrier.wait()
                with transaction.atomic():
                    ids.append(atomic_saga_start(PingSaga, {"n": 1}, idempotency_key="same-key"))
            finally:
                connections.close_all()

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 4
        assert len(set(ids)) == 1
        wait_finished(ids[0])
        assert SagaInstance.objects.count() == 1
