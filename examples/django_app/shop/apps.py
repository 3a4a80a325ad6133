"""The example's Django app."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """The shop: its sagas are in ``shop/sagas.py``, found by the Sagaz app.

    Nothing to set up for SQLite: the Sagaz app puts ``db.sqlite3`` in WAL mode with a
    busy timeout, so ``runserver`` and ``manage.py sagaz_worker`` can share it.
    """

    name = "shop"
