"""The plugin's process-wide objects: the saga config, the webhook service, in-process runs.

The :class:`~sagaz.core.SagaConfig` built from ``settings.SAGAZ`` stores sagas in Django's
database (:class:`~sagaz.integrations.django.storage.DjangoSagaStorage`) and becomes the
process-wide config (:func:`sagaz.core.configure`) when the app is ready, so
``await OrderSaga().run(...)`` anywhere in the project is durable in that database.

Sync code (WSGI views, ``transaction.on_commit`` callbacks, the admin) reaches the async
engine through the core's per-process portal loop (:func:`sagaz.core.portal.run_sync`);
sagas submitted there keep running after the request that started them returns.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sagaz.core.config import SagaConfig, configure
from sagaz.core.portal import run_sync
from sagaz.core.registry import registry
from sagaz.core.runner import get_runner
from sagaz.core.web import WebhookService
from sagaz.integrations.django.conf import get_settings

if TYPE_CHECKING:
    from sagaz.integrations.django.storage import DjangoSagaStorage

__all__ = ["build_config", "get_config", "get_service", "get_storage", "reset", "submit_in_process"]

_lock = threading.Lock()
_config: SagaConfig | None = None
_service: WebhookService | None = None


def build_config() -> SagaConfig:
    """A new config from ``settings.SAGAZ`` with its own storage (not made process-wide).

    The management commands use one each, so their event loop never shares a storage
    with the portal loop.
    """
    from sagaz.integrations.django.storage import DjangoSagaStorage

    values = get_settings()
    return SagaConfig(
        storage=DjangoSagaStorage(values.database),
        outbox=values.outbox,
        lease_seconds=values.lease_seconds,
        max_recoveries=values.max_recoveries,
    )


def get_config() -> SagaConfig:
    """The Sagaz config of this Django project (built from ``settings.SAGAZ`` once).

    Building it also makes it the process-wide config of :mod:`sagaz.core`.
    """
    global _config
    config = _config
    if config is not None:
        return config
    with _lock:
        if _config is None:
            _config = configure(build_config())
        return _config


def get_storage() -> DjangoSagaStorage:
    """The storage of :func:`get_config` (Django's database, ``SAGAZ['DATABASE']``)."""
    from sagaz.integrations.django.storage import DjangoSagaStorage

    storage = get_config().storage
    assert isinstance(storage, DjangoSagaStorage)
    return storage


def get_service() -> WebhookService:
    """The :class:`~sagaz.core.web.WebhookService` behind the plugin's URLs."""
    global _service
    service = _service
    if service is not None:
        return service
    values = get_settings()
    service = _service = WebhookService(get_config(), values.webhook_settings())
    return service


def reset() -> None:
    """Forget the config and service (rebuilt from the settings on next use)."""
    global _config, _service
    with _lock:
        _config = None
        _service = None


async def _submit(saga_name: str, saga_id: str) -> None:
    get_runner().submit(registry.create(saga_name, get_config()), saga_id)


def submit_in_process(saga_name: str, saga_id: str) -> None:
    """Run the recorded saga ``saga_id`` on this process's portal loop (do not wait).

    The saga is leased first (``claim``), so a worker that already runs it is not
    disturbed. Call from sync code only (not from an event loop thread).
    """
    run_sync(_submit, saga_name, saga_id)
