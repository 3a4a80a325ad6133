"""Starting a saga in the caller's database transaction.

::

    with transaction.atomic():
        order = Order.objects.create(...)
        saga_id = atomic_saga_start(OrderSaga, {"order_id": order.pk})

The PENDING saga row (and, with ``SAGAZ["OUTBOX"]``, its ``saga.started`` outbox event)
is written with the ORM in the caller's own thread and transaction: the order and the
saga commit together or not at all. After the commit the saga runs promptly: in this
process when ``SAGAZ["RUN_IN_PROCESS"]`` is on (submitted to the portal loop's runner),
else on the next poll of ``manage.py sagaz_worker``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import IntegrityError, transaction
from django.db.transaction import TransactionManagementError

from sagaz.core.context import current_correlation_id
from sagaz.core.engine import check_json
from sagaz.core.observability.tracecontext import current_trace_context
from sagaz.core.saga import Saga
from sagaz.core.status import SagaStatus
from sagaz.integrations.django.conf import get_settings
from sagaz.integrations.django.storage import dumps

__all__ = ["atomic_saga_start"]

logger = logging.getLogger("sagaz.django")


def _saga_name(saga: type[Saga] | Saga) -> str:
    if isinstance(saga, Saga):
        return saga.name
    if isinstance(saga, type) and issubclass(saga, Saga):
        if not saga._declared:
            raise TypeError(
                f"{saga.__qualname__} has no @action steps; pass a declarative saga class "
                "or an imperative Saga(name=...) instance"
            )
        return saga.saga_name_of()
    raise TypeError(
        f"atomic_saga_start needs a Saga subclass or instance, got {type(saga).__name__}"
    )


def _run_after_commit(saga_name: str, saga_id: str) -> None:
    from sagaz.integrations.django.runtime import submit_in_process

    try:
        submit_in_process(saga_name, saga_id)
    except Exception:
        logger.exception(
            "sagaz: could not run saga %s (%s) in this process after commit; it stays "
            "PENDING until sagaz_worker runs it",
            saga_id,
            saga_name,
        )


def atomic_saga_start(
    saga_class: type[Saga] | Saga,
    context: Mapping[str, Any],
    *,
    using: str | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """Record a PENDING saga in the current ``transaction.atomic()`` block; return its id.

    ``using`` is the database alias of the transaction; it must be the one sagas are
    stored in (``SAGAZ["DATABASE"]``, the default). With ``SAGAZ["OUTBOX"]`` the saga's
    ``saga.started`` event is written to the outbox in the same transaction. A second
    start with the same ``idempotency_key`` (for this saga) returns the first saga's id
    and writes nothing (race-free: a unique constraint). ``correlation_id`` defaults to
    the request's (see :class:`~sagaz.integrations.django.middleware.SagaContextMiddleware`).

    Raises :class:`~django.db.transaction.TransactionManagementError` outside an atomic
    block. Sync code only: from an async view, wrap the whole atomic block in
    ``sync_to_async``.
    """
    from sagaz.integrations.django.models import OutboxMessage, SagaInstance

    values = get_settings()
    alias = values.database if using is None else using
    if alias != values.database:
        raise ValueError(
            f"atomic_saga_start(using={alias!r}): sagas are stored in database "
            f"{values.database!r} (SAGAZ['DATABASE']); the saga row can only share a "
            "transaction with writes to that database"
        )
    if not transaction.get_connection(alias).in_atomic_block:
        raise TransactionManagementError(
            "atomic_saga_start must be called inside transaction.atomic() (database "
            f"{alias!r}), so that the saga commits or rolls back with your writes: "
            "with transaction.atomic(): ...; atomic_saga_start(OrderSaga, {...})"
        )
    name = _saga_name(saga_class)
    if not isinstance(context, Mapping):
        raise TypeError(
            f"a saga context must be a dict, got {type(context).__name__}; pass e.g. "
            "{'order_id': 42}"
        )
    ctx = dict(context)
    check_json(ctx, "initial context")
    saga_id = str(uuid.uuid4())
    now = time.time()
    trace = current_trace_context()  # the request's span, when OpenTelemetry traces it
    row = SagaInstance(
        saga_id=saga_id,
        saga_name=name,
        status=SagaStatus.PENDING.value,
        context=dumps(ctx, f"the context of saga {saga_id!r}"),
        correlation_id=correlation_id if correlation_id is not None else current_correlation_id(),
        idempotency_key=idempotency_key,
        created_at=now,
        updated_at=now,
        trace_context=None if trace is None else dumps(trace, "the trace context"),
    )
    sagas = SagaInstance.objects.using(alias)
    if idempotency_key is None:
        sagas.bulk_create([row])
    else:
        try:
            with transaction.atomic(using=alias):  # a savepoint: a duplicate undoes only it
                sagas.bulk_create([row])
        except IntegrityError:
            existing = sagas.filter(saga_name=name, idempotency_key=idempotency_key)
            found: list[str] = list(existing.values_list("saga_id", flat=True)[:1])
            if found:
                return found[0]
            raise
    if values.outbox:
        payload = {"saga_id": saga_id, "saga_name": name}
        OutboxMessage.objects.using(alias).bulk_create(
            [
                OutboxMessage(
                    event_id=str(uuid.uuid4()),
                    saga_id=saga_id,
                    event_type="saga.started",
                    payload=dumps(payload, "the saga.started event"),
                    correlation_id=row.correlation_id,
                    created_at=now,
                )
            ]
        )
    if values.run_in_process:
        transaction.on_commit(lambda: _run_after_commit(name, saga_id), using=alias)
    return saga_id
