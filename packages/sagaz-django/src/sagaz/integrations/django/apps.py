"""The Django app: ``INSTALLED_APPS = [..., "sagaz.integrations.django"]`` (label ``sagaz``)."""

from __future__ import annotations

import importlib

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

__all__ = ["SagazConfig"]


class SagazConfig(AppConfig):
    """Sagaz in a Django project.

    When ready it imports every installed app's ``sagas.py`` (as the admin does for
    ``admin.py``) and the modules of ``SAGAZ["SAGA_MODULES"]``, so their sagas are
    registered in every process (web servers, ``sagaz_worker``), makes the
    Django-database-backed config the process-wide Sagaz config, and puts SQLite
    connections to the saga database in WAL mode with a busy timeout
    (:mod:`sagaz.integrations.django.sqlite`). With ``SAGAZ["RUN_IN_PROCESS"]`` on, the
    first request each process serves starts its recovery sweep
    (:func:`sagaz.integrations.django.runtime.start_recovery`; no database query
    happens in ``ready()``, and management commands start none).
    """

    name = "sagaz.integrations.django"
    label = "sagaz"
    verbose_name = "Sagaz"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the checks, discover saga modules, configure Sagaz."""
        from django.core.signals import request_started
        from django.db.backends.signals import connection_created

        from sagaz.integrations.django import checks, conf, runtime, sqlite

        # WAL + busy timeout on SQLite connections to SAGAZ["DATABASE"] (see sqlite.py).
        connection_created.connect(
            sqlite.configure_sqlite_connection, dispatch_uid="sagaz.sqlite.configure"
        )
        request_started.connect(
            runtime._start_recovery_on_request, dispatch_uid="sagaz.recovery.start"
        )
        conf.reset_settings()
        try:
            values = conf.get_settings()
        except Exception:
            return  # the system checks report every bad key
        autodiscover_modules("sagas")
        checks.import_errors.clear()
        for module in values.saga_modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name is None or not module.startswith(exc.name):
                    raise  # the module exists but imports something missing: show that
                checks.import_errors[module] = str(exc)
        runtime.get_config()
