"""The shop app (SQLite's WAL mode and busy timeout come from the Sagaz app itself)."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """Orders."""

    name = "sagaz_django_testproject.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"
