"""The plugin's process-wide objects: the saga config, the webhook service, in-process runs.

The :class:`~sagaz.core.SagaConfig` built from ``settings.SAGAZ`` stores sagas in Django's
database (:class:`~sagaz.integrations.django.storage.DjangoSagaStorage`) and becomes the
process-wide config (:func:`sagaz.core.configure`) when the app is ready, so
``await OrderSaga().run(...)`` anywhere in the project is durable in that database.

Sync code (WSGI views, ``transaction.on_commit`` callbacks, the admin) reaches the async
engine through the core's per-process portal loop (:func:`sagaz.core.portal.run_sync`);
sagas submitted there keep running after the request that started them returns.

With ``SAGAZ["RUN_IN_PROCESS"]`` on (the default), :func:`start_recovery` runs a
:class:`~sagaz.core.RecoverySweep` on that loop: it resumes the project's unfinished
sagas, including those a crashed process left leased once their lease expires. The app
starts it on the first request each process serves (``request_started``); call it from
``wsgi.py``/``asgi.py`` to start it before any request.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING

from sagaz.core.config import SagaConfig, configure
from sagaz.core.portal import run_sync
from sagaz.core.recovery import RecoverySweep
from sagaz.core.registry import registry
from sagaz.core.runner import get_runner
from sagaz.core.web import WebhookService
from sagaz.integrations.django.conf import get_settings

if TYPE_CHECKING:
    from sagaz.integrations.django.storage import DjangoSagaStorage

__all__ = [
    "build_config",
    "get_config",
    "get_service",
    "get_storage",
    "recovery_sweep",
    "reset",
    "start_recovery",
    "stop_recovery",
    "submit_in_process",
]

_lock = threading.Lock()
_config: SagaConfig | None = None
_service: WebhookService | None = None
# The recovery sweep of this process (pid, sweep); a forked child starts its own.
_sweep: tuple[int, RecoverySweep] | None = None
_sweep_lock = threading.Lock()


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
    """Forget the config and service (rebuilt from the settings on next use) and stop
    the recovery sweep (restarted for the new settings by the next request)."""
    global _config, _service
    with _lock:
        _config = None
        _service = None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # The settings changed: the sweep of the old config must not go on claiming
        # (with RUN_IN_PROCESS now off its sagas belong to sagaz_worker). The next
        # request starts one for the new settings.
        stop_recovery()


async def _submit(saga_name: str, saga_id: str) -> None:
    get_runner().submit(registry.create(saga_name, get_config()), saga_id)


def submit_in_process(saga_name: str, saga_id: str) -> None:
    """Run the recorded saga ``saga_id`` on this process's portal loop (do not wait).

    The saga is leased first (``claim``), so a worker that already runs it is not
    disturbed. Call from sync code only (not from an event loop thread).
    """
    run_sync(_submit, saga_name, saga_id)


def recovery_sweep() -> RecoverySweep | None:
    """The recovery sweep running in this process, if :func:`start_recovery` started one."""
    current = _sweep
    if current is None or current[0] != os.getpid() or not current[1].running:
        return None
    return current[1]


async def _start_sweep(config: SagaConfig) -> RecoverySweep:
    sweep = RecoverySweep(config)
    await sweep.start()
    return sweep


def start_recovery() -> bool:
    """Start this process's recovery sweep on the portal loop unless one runs already.

    It claims, at once and then every half ``SAGAZ["LEASE_SECONDS"]``, the unfinished
    sagas whose modules are imported here (PENDING and unleased, or leased by a
    process whose lease expired: one that crashed) and runs them on the portal loop.
    Returns whether a sweep runs: False with ``SAGAZ["RUN_IN_PROCESS"]`` off, where
    ``manage.py sagaz_worker`` runs the sagas. Call from sync code only.
    """
    global _sweep
    if not get_settings().run_in_process:
        return False
    config = get_config()
    with _sweep_lock:
        current = _sweep
        if current is not None and current[0] == os.getpid():
            if current[1].config is config:
                return True
            run_sync(current[1].stop)  # the settings changed: sweep the new config
        sweep = run_sync(_start_sweep, config)
        _sweep = (os.getpid(), sweep)
    return True


def stop_recovery() -> None:
    """Stop this process's recovery sweep (sagas it started keep running)."""
    global _sweep
    with _sweep_lock:
        current, _sweep = _sweep, None
    if current is not None and current[0] == os.getpid():
        run_sync(current[1].stop)


def _start_recovery_on_request(**kwargs: object) -> None:
    """``request_started`` receiver: start the sweep on a process's first request."""
    current = _sweep
    if current is not None and current[0] == os.getpid() and current[1].config is _config:
        return
    start_recovery()
