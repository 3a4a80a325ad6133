"""The example's Django app."""

from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _sqlite_wal(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite in WAL mode: the web threads and the saga threads read while one writes."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")


class ShopConfig(AppConfig):
    """The shop: its sagas are in ``shop/sagas.py``, found by the Sagaz app."""

    name = "shop"

    def ready(self) -> None:
        connection_created.connect(_sqlite_wal)
