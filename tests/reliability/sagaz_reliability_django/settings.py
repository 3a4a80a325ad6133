"""Settings of the reliability suite's Django project: PostgreSQL from the environment."""

from __future__ import annotations

import os

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("REL_DB_NAME", "sagaz"),
        "USER": os.environ.get("REL_DB_USER", "postgres"),
        "HOST": os.environ.get("REL_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("REL_DB_PORT", "5432"),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }
}
SECRET_KEY = "sagaz-reliability-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "sagaz_reliability_django.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "sagaz.integrations.django"]
MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware"]
SAGAZ = {"SAGA_MODULES": ["sagaz_reliability_sagas"], "LEASE_SECONDS": 2.0}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
