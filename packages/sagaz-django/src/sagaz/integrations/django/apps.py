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
    registered in every process (web servers, ``sagaz_worker``), and makes the
    Django-database-backed config the process-wide Sagaz config.
    """

    name = "sagaz.integrations.django"
    label = "sagaz"
    verbose_name = "Sagaz"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register the checks, discover saga modules, configure Sagaz."""
        from sagaz.integrations.django import checks, conf, runtime

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
