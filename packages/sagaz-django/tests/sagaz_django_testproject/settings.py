"""Settings of the test project, read by conftest.py (``settings.configure``) and by the
subprocesses (``DJANGO_SETTINGS_MODULE=sagaz_django_testproject.settings``).

``SAGAZ_TEST_DB`` picks the database: ``sqlite`` (default), ``postgres`` (the server on
127.0.0.1:5432, user postgres) or ``mysql`` (MariaDB/MySQL on 127.0.0.1:3306, user root
without a password; needs the ``mysqlclient`` driver). The test database's name comes from
``SAGAZ_TEST_DB_NAME`` in subprocesses (conftest sets it to the database the test runner
created), so servers and workers share the tests' database.
"""

from __future__ import annotations

import os
import sys
import tempfile

KIND = os.environ.get("SAGAZ_TEST_DB", "sqlite").strip().lower()
if KIND not in {"sqlite", "postgres", "mysql"}:
    raise RuntimeError(f"SAGAZ_TEST_DB must be sqlite, postgres or mysql, not {KIND!r}")

_SUFFIX = f"py{sys.version_info[0]}{sys.version_info[1]}"
try:
    import django

    _SUFFIX += f"_dj{django.VERSION[0]}{django.VERSION[1]}"
except ImportError:  # pragma: no cover
    pass

#: The database the tests' runner creates (and subprocesses use as it is).
TEST_DB_NAME = os.environ.get("SAGAZ_TEST_DB_NAME") or (
    os.path.join(tempfile.gettempdir(), f"sagaz_django_test_{_SUFFIX}_{os.getpid()}.sqlite3")
    if KIND == "sqlite"
    else f"test_sagaz_django_{_SUFFIX}_{os.getpid()}"  # concurrent runs do not clobber it
)
IN_SUBPROCESS = bool(os.environ.get("SAGAZ_TEST_DB_NAME"))

if KIND == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": TEST_DB_NAME if IN_SUBPROCESS else "test",
            "USER": os.environ.get("SAGAZ_TEST_PG_USER", "postgres"),
            "HOST": os.environ.get("SAGAZ_TEST_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("SAGAZ_TEST_PG_PORT", "5432"),
            "CONN_MAX_AGE": int(os.environ.get("SAGAZ_TEST_CONN_MAX_AGE", "0")),
            "TEST": {"NAME": TEST_DB_NAME},
        }
    }
elif KIND == "mysql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": TEST_DB_NAME if IN_SUBPROCESS else "sagaz_django",
            "USER": os.environ.get("SAGAZ_TEST_MYSQL_USER", "root"),
            "HOST": os.environ.get("SAGAZ_TEST_MYSQL_HOST", "127.0.0.1"),
            "PORT": os.environ.get("SAGAZ_TEST_MYSQL_PORT", "3306"),
            "CONN_MAX_AGE": int(os.environ.get("SAGAZ_TEST_CONN_MAX_AGE", "0")),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"NAME": TEST_DB_NAME, "CHARSET": "utf8mb4"},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": TEST_DB_NAME
            if IN_SUBPROCESS
            else os.path.join(tempfile.gettempdir(), "sagaz_django_base.sqlite3"),
            "OPTIONS": {"timeout": 30},
            "CONN_MAX_AGE": int(os.environ.get("SAGAZ_TEST_CONN_MAX_AGE", "0")),
            "TEST": {"NAME": TEST_DB_NAME},
        }
    }

SECRET_KEY = "sagaz-django-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "sagaz_django_testproject.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "sagaz.integrations.django",
    "sagaz_django_testproject.shop",
]
MIDDLEWARE = [
    "sagaz.integrations.django.middleware.SagaContextMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
SAGAZ = {
    "RUN_IN_PROCESS": os.environ.get("SAGAZ_TEST_RUN_IN_PROCESS", "1") == "1",
    "WEBHOOKS": {
        "SECRETS": {"signed_order": "s3cret"},
        "MAX_BODY_BYTES": 4096,
        "EXPOSE_CONTEXT": True,
    },
    "OUTBOX": True,
    "LEASE_SECONDS": 5.0,
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"sagaz": {"handlers": ["console"], "level": "WARNING"}},
}
WSGI_APPLICATION = "sagaz_django_testproject.wsgi.application"
ASGI_APPLICATION = "sagaz_django_testproject.asgi.application"
