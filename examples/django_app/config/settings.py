"""Settings of the Sagaz Django example.

Sagas live in Django's database: the SQLite file ``db.sqlite3`` next to ``manage.py``,
or the PostgreSQL database that ``SAGAZ_STORAGE_URL`` names
(``postgresql://user:password@host:5432/dbname``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sagaz-example-not-for-production")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "sagaz.integrations.django",  # the Sagaz app (label "sagaz"): models, URLs, commands
    "shop",  # the example's app; its sagas.py is imported at start-up
]
MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware"]
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SAGAZ = {"WEBHOOKS": {"EXPOSE_CONTEXT": True}}  # demo: show the saga context in status answers


def _database(url: str | None) -> dict[str, Any]:
    """Django's DATABASES entry for SAGAZ_STORAGE_URL (PostgreSQL) or the SQLite file."""
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": BASE_DIR / "db.sqlite3",
            # WAL mode and a 30 s busy timeout come from the Sagaz app (see its README).
        }
    parts = urlsplit(url)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(
            f"SAGAZ_STORAGE_URL must be a postgresql://user@host/db URL for this example, not "
            f"{parts.scheme}://...; leave it unset for the SQLite file"
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("SAGAZ_STORAGE_URL"))}
