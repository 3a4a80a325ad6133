"""Django system checks for ``settings.SAGAZ`` (run by ``manage.py check``, ``runserver``,
``migrate`` and the test runner).

Each problem is its own error naming the bad key (``sagaz.E001`` ... ``sagaz.E003``);
``sagaz.W001`` warns about a database engine Sagaz is not tested on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from sagaz.integrations.django.conf import DOCS, validate

__all__ = ["check_settings", "import_errors"]

#: Problems found importing ``SAGAZ["SAGA_MODULES"]`` when the app became ready.
import_errors: dict[str, str] = {}

_TESTED_VENDORS = ("postgresql", "sqlite", "mysql")


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Validate ``settings.SAGAZ``: one error per bad key, naming it."""
    raw = getattr(settings, "SAGAZ", None)
    databases = getattr(settings, "DATABASES", {})
    messages: list[CheckMessage] = []
    for key, problem in validate(raw, databases).items():
        if key == "":
            messages.append(Error(problem, id="sagaz.E001", obj="settings.SAGAZ"))
        elif key in DOCS:
            messages.append(
                Error(
                    problem,
                    hint=f"SAGAZ[{key!r}]: {DOCS[key]}",
                    id="sagaz.E002",
                    obj=f"SAGAZ[{key!r}]",
                )
            )
        else:
            messages.append(Error(problem, id="sagaz.E003", obj=f"SAGAZ[{key!r}]"))
    for module, problem in import_errors.items():
        messages.append(
            Error(
                f"SAGAZ['SAGA_MODULES'] names {module!r}, which cannot be imported: {problem}",
                id="sagaz.E004",
                obj="SAGAZ['SAGA_MODULES']",
            )
        )
    if isinstance(raw, dict | type(None)) and "DATABASE" not in validate(raw, databases):
        alias = (raw or {}).get("DATABASE", "default")
        engine = str(databases.get(alias, {}).get("ENGINE", ""))
        if engine and not any(vendor in engine for vendor in _TESTED_VENDORS):
            messages.append(
                Warning(
                    f"SAGAZ['DATABASE'] is {alias!r}, whose ENGINE {engine!r} Sagaz is not "
                    "tested on (PostgreSQL, SQLite and MariaDB/MySQL are)",
                    id="sagaz.W001",
                    obj="SAGAZ['DATABASE']",
                )
            )
    return messages
