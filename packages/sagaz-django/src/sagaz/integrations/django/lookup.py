"""Read a saga's record and draw its execution from your own views.

::

    from sagaz.integrations.django import load_saga, saga_diagram

    def order_status(request, saga_id):             # a sync view (WSGI or ASGI)
        record = load_saga(saga_id)                 # SagaRecord or None
        if record is None:
            return JsonResponse({"error": "not_found"}, status=404)
        return JsonResponse({"state": record.status.value,
                             "mermaid": saga_diagram(record)})

    async def order_status_async(request, saga_id):  # an async view
        record = await aload_saga(saga_id)
        ...

The sync functions go through the plugin's per-process portal loop
(:func:`sagaz.core.portal.run_sync`) and the storage's own ORM threads, like the plugin's
sync views: the ORM never runs on an event loop thread and no event loop is created per
call. They read committed data: a saga started with
:func:`~sagaz.integrations.django.atomic_saga_start` is visible once its transaction has
committed. The ``a``-prefixed twins (Django's naming for async APIs, as ``aget``) await
the storage directly from async code.
"""

from __future__ import annotations

import asyncio
import threading

from sagaz.core.context import is_valid_correlation_id
from sagaz.core.diagrams import to_mermaid
from sagaz.core.errors import SagaNotFoundError
from sagaz.core.portal import run_sync
from sagaz.core.records import SagaRecord
from sagaz.core.registry import SagaRegistry, registry
from sagaz.integrations.django.runtime import get_config, get_storage
from sagaz.integrations.django.storage import DjangoSagaStorage

__all__ = ["aload_saga", "asaga_diagram", "load_saga", "saga_diagram"]

_lock = threading.Lock()
#: Storages of database aliases other than ``SAGAZ["DATABASE"]`` (``using=...``).
_other_storages: dict[str, DjangoSagaStorage] = {}


def _storage(using: str | None) -> DjangoSagaStorage:
    """The storage of the alias ``using`` (None: the plugin's, ``SAGAZ["DATABASE"]``)."""
    from django.conf import settings

    default = get_storage()
    if using is None or using == default.alias:
        return default
    databases = getattr(settings, "DATABASES", {})
    if not isinstance(using, str) or using not in databases:
        raise ValueError(
            f"using={using!r} is not a database alias of settings.DATABASES "
            f"({', '.join(databases) or 'none'}); pass one of them, or leave it out for "
            f"SAGAZ['DATABASE'] ({default.alias!r})"
        )
    with _lock:
        storage = _other_storages.get(using)
        if storage is None:
            storage = _other_storages[using] = DjangoSagaStorage(using)
        return storage


def _sync_only(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{name}() blocks, so it cannot be called from async code (an event loop runs in "
        f"this thread); use `await a{name}(...)` there"
    )


async def aload_saga(saga_id: str, *, using: str | None = None) -> SagaRecord | None:
    """The record of saga ``saga_id`` (status, steps, history, context), or None.

    ``using`` is the database alias to read (default ``SAGAZ["DATABASE"]``). An id that
    no saga can have (not 1-128 characters of ``[A-Za-z0-9._:-]``) is None too. Raises
    :class:`~sagaz.core.StorageError` when the database cannot be read (e.g. before
    ``manage.py migrate``).
    """
    storage = _storage(using)
    if not is_valid_correlation_id(saga_id):  # the same safe-name rule as saga ids
        return None
    await storage.ensure_open()
    return await storage.load(saga_id)


def load_saga(saga_id: str, *, using: str | None = None) -> SagaRecord | None:
    """:func:`aload_saga` for sync code (views, commands, ``on_commit`` callbacks).

    Blocks until the record is read on the plugin's portal loop. Raises
    :class:`RuntimeError` when called on an event loop thread: use :func:`aload_saga`.
    """
    _sync_only("load_saga")
    return run_sync(_load, saga_id, using)


async def _load(saga_id: str, using: str | None) -> SagaRecord | None:
    return await aload_saga(saga_id, using=using)


async def asaga_diagram(
    saga: str | SagaRecord,
    *,
    using: str | None = None,
    direction: str = "TD",
    saga_registry: SagaRegistry | None = None,
) -> str:
    """The Mermaid flowchart of a recorded execution, its steps coloured by state.

    ``saga`` is a saga id (read with :func:`aload_saga` from ``using``) or a record you
    already loaded. The definition is the registered saga the record names (the one the
    plugin's ``status/<saga_id>/diagram`` URL draws). Raises
    :class:`~sagaz.core.SagaNotFoundError` for an unknown id,
    :class:`~sagaz.core.UnknownSagaError` when the record's saga is not registered in
    this process, :class:`ValueError` for a ``direction`` other than TD, TB, BT, LR, RL.
    """
    record = saga if isinstance(saga, SagaRecord) else await aload_saga(saga, using=using)
    if record is None:
        shown = saga if is_valid_correlation_id(saga) else "(invalid id)"
        raise SagaNotFoundError(f"no saga with id {shown!r} is recorded")
    definition = (saga_registry or registry).create(record.saga_name, get_config())
    return to_mermaid(definition, record, direction=direction)


def saga_diagram(
    saga: str | SagaRecord,
    *,
    using: str | None = None,
    direction: str = "TD",
    saga_registry: SagaRegistry | None = None,
) -> str:
    """:func:`asaga_diagram` for sync code (blocks; not on an event loop thread)."""
    _sync_only("saga_diagram")
    return run_sync(_diagram, saga, using, direction, saga_registry)


async def _diagram(
    saga: str | SagaRecord, using: str | None, direction: str, saga_registry: SagaRegistry | None
) -> str:
    return await asaga_diagram(saga, using=using, direction=direction, saga_registry=saga_registry)
